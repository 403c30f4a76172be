"""Diffusion-model feature extractors (see base.py for the interface)."""
