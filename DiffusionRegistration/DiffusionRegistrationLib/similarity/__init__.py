"""Similarity measures behind one interface (base.py), named in one torch-free table (registry.py)."""
from .registry import SIMILARITIES, build_similarity, check_similarity_name, similarity_names

__all__ = ["SIMILARITIES", "build_similarity", "check_similarity_name", "similarity_names"]
