"""The similarity interface every measure implements, and the registry that builds them by name.

Images are tensors [B, 1, *spatial] scaled to [0, 1]; masks are [B, 1, *spatial] weights (0 or 1) in
fixed space. A similarity returns a scalar loss: lower means better aligned.

The engine calls `prepare` once per resolution level, then `mapped_loss` at every step with the
sampling grid that maps fixed voxels into the moving image. Intensity measures only implement
`forward(fixed, warped, mask)`; measures that must see the moving image itself (feature similarities
that warp cached feature maps, or re-extract features every step) override `mapped_loss`.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch

from ..errors import RegistrationError
from ..images import Grid
from ..spatial import sample


class Similarity(torch.nn.Module):
    """Base class: a loss between the fixed image and the moving image mapped into fixed space."""

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_grid: Grid, moving_grid: Grid) -> None:
        """Called once per resolution level before optimisation; caches what does not change."""

    def mapped_loss(self, fixed: torch.Tensor, moving: torch.Tensor, sampling_grid: torch.Tensor,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss of the moving image sampled at `sampling_grid` (normalised moving coordinates)."""
        return self(fixed, sample(moving, sampling_grid), mask)


SimilarityFactory = Callable[..., Similarity]
_REGISTRY: dict[str, SimilarityFactory] = {}
# Modules that register further similarities when imported; loaded on first lookup.
PLUGIN_MODULES = ("DiffusionRegistrationLib.similarity.intensity",
                  "DiffusionRegistrationLib.features.similarity")
_plugins_loaded = False


def register_similarity(name: str) -> Callable[[SimilarityFactory], SimilarityFactory]:
    """Class or function decorator that makes a similarity buildable by `name`."""

    def decorate(factory: SimilarityFactory) -> SimilarityFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for module in PLUGIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                if error.name != module:
                    raise


def available_similarities() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def build_similarity(name: str, **params) -> Similarity:
    """Builds a registered similarity; unknown names or parameters give a RegistrationError."""
    _load_plugins()
    if name not in _REGISTRY:
        raise RegistrationError(f"unknown similarity '{name}'. Choose one of: {', '.join(sorted(_REGISTRY))}.")
    try:
        return _REGISTRY[name](**params)
    except TypeError as error:
        raise RegistrationError(f"similarity '{name}': bad parameters {params} ({error}).") from None
