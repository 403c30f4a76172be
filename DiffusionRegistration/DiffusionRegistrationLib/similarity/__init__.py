"""Similarity measures behind one interface (see base.py)."""
from .base import Similarity, available_similarities, build_similarity, register_similarity

__all__ = ["Similarity", "available_similarities", "build_similarity", "register_similarity"]
