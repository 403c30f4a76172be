"""The diffusion-feature similarity: a loss between feature maps of the fixed and the warped moving image.

Measures (per feature pixel, averaged over the fixed mask downsampled to feature resolution):
- "lncc" (the paper): local normalised cross-correlation per feature channel with a Gaussian window
  (sigma 4 feature pixels in 2D, 5 for slices of 3D volumes), cc = cov / sqrt((var_f + eps)(var_m + eps)),
  eps 1e-6; loss = -mean(cc), so identical feature maps give -1 wherever a channel varies.
- "cosine": cosine similarity of the feature vectors; loss = -mean(cos).
- "l1": mean absolute difference of the feature channels (the `mind` similarity's loss: with the `mind`
  known-answer backbone the diffusion path then computes what `--similarity mind` computes).

Modes, each an algorithm class (strategy) with its own typed per-level state, chosen once per level:
- "exact" (the paper; `Planar2D` without cached moving features, `RandomAxisExact3D`): the warped moving
  image's features are re-extracted at every step and the gradient flows through the frozen network.
  2D: the fixed features do not change and are extracted once per level. 3D, as the paper runs it:
  each call picks one random axis and `slices_per_step` (4) random slice indices (seeded generator)
  and extracts those 2D slices of the fixed image (cached per slice, no gradient) and of the warped
  moving image. Same numbers as one batch of both (the same noise is used for every image, and the
  network treats images independently), at about half the backward cost.
- "fast" (`Planar2D` with cached moving features, `TriplanarFast3D`): features of the fixed and of the moving image are extracted once per level (3D: tri-planar,
  every `slice_stride`-th slice along each axis), cached in memory and on disk, and the moving feature
  maps are warped with the sampling grid (3D: the moving tri-planar feature volumes are sampled with
  the 3D sampling grid at the fixed slices used). `refresh_every` K > 0 re-extracts, every K steps,
  the features of the currently warped moving image at the fixed slices and keeps their difference to
  the warped cached features as a constant correction until the next refresh (so the loss value is the
  exact one at each refresh, its gradient the warped features'). 3D: `step_slices` n > 0 makes each
  step use one random axis and n random slices among the cached ones (the paper's stochastic sampling
  applied to cached features: a step then costs n slices instead of all of them).
Features are cached in memory and on disk (similarity.feature_cache). The parts live in modules of their
own: feature_measures, feature_grids (feature-map coordinates), feature_strategies, feature_cache.
An optional intensity term (`intensity_weight` times the registry's "lncc") is added to the loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..core.image import Grid
from ..errors import RegistrationError
from ..features.base import FeatureExtractor
from ..features.loading import load_extractor
from ..geometry.spatial import sample
from .base import Similarity
from .feature_cache import FeatureCache
from .feature_measures import cosine_loss, fixed_statistics, l1_loss, lncc_loss
from .feature_strategies import Level, Planar2D, RandomAxisExact3D, Stats, Strategy, TriplanarFast3D
from .registry import SIMILARITIES, build_similarity


class DiffusionFeatureSimilarity(Similarity):
    """Diffusion-feature similarity (see the module docstring). `extractor`: a FeatureExtractor, a spec dict
    {"backbone": ..., options} or a backbone name (a catalog id, or a known-answer backbone: image, mind)."""

    stochastic = True  # random slices (3D) and noise draws per call

    def __init__(self, extractor: Any = None, measure: str = "lncc", mode: str = "fast",
                 sigma: Optional[float] = None, eps: float = 1e-6, slices_per_step: int = 4,
                 slice_seed: int = 0, slice_stride: int = 4, refresh_every: int = 0,
                 intensity_weight: float = 0.0, cache: bool = True, cache_dir: Optional[str] = None,
                 step_slices: Optional[int] = None):
        super().__init__()
        if measure not in ("lncc", "cosine", "l1"):
            raise RegistrationError(f"diffusion similarity: measure '{measure}' is not one of lncc, cosine, l1.")
        if mode not in SIMILARITIES["diffusion"].modes:
            raise RegistrationError(f"diffusion similarity: mode '{mode}' is not one of "
                                    f"{', '.join(SIMILARITIES['diffusion'].modes)}.")
        if isinstance(extractor, str):
            extractor = {"backbone": extractor}
        if extractor is None:
            raise RegistrationError("diffusion similarity: give an extractor (a spec like "
                                    "{'backbone': 'adm', 'checkpoint': path} or a FeatureExtractor).")
        self._spec = None if isinstance(extractor, FeatureExtractor) else dict(extractor)
        # kept in a plain dict, not as a submodule: the frozen network is not part of this loss's state
        self._extractors: dict[Any, FeatureExtractor] = {}
        if isinstance(extractor, FeatureExtractor):
            self._extractors["given"] = extractor
        self.measure, self.mode, self.sigma, self.eps = measure, mode, sigma, float(eps)
        self.slices_per_step, self.slice_stride = int(slices_per_step), max(1, int(slice_stride))
        self.refresh_every, self.intensity_weight = int(refresh_every), float(intensity_weight)
        self.step_slices = int(step_slices) if step_slices else None
        self.cache = FeatureCache(bool(cache), Path(cache_dir).expanduser() if cache_dir else None)
        self.slice_seed = int(slice_seed)
        self.generator = torch.Generator().manual_seed(self.slice_seed)
        self._intensity: Optional[Similarity] = None
        self.strategy: Optional[Strategy] = None  # mapped_loss's algorithm for the current level
        self._exact: Optional[Strategy] = None  # forward's (features of an already warped image)
        self.extraction_calls = 0  # images sent through the network (for reports and tests)

    # -- extractor and cache ------------------------------------------------------------------------
    def extractor_for(self, dim: int, device: torch.device) -> FeatureExtractor:
        if "given" in self._extractors:
            return self._extractors["given"]
        if dim not in self._extractors:
            self._extractors[dim] = build_extractor(self._spec, dim).to(device)
        return self._extractors[dim]

    def extract(self, extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
        """images [N, 1, H, W] on any device -> features on the images' device."""
        self.extraction_calls += images.shape[0]
        return extractor(images.to(extractor.device)).to(images.device)

    def extract_frozen(self, extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            features = self.extract(extractor, images.detach())
        return features.clone()  # a normal tensor again, usable in autograd

    def frozen_features(self, image: torch.Tensor, extractor: FeatureExtractor) -> torch.Tensor:
        """Features of one 2D image [1, 1, H, W], from the caches or extracted."""
        return self.cached_features(image, extractor, "2d", lambda: self.extract_frozen(extractor, image))

    def cached_features(self, image: torch.Tensor, extractor: FeatureExtractor, layout: str, compute) -> Any:
        """Features of one image from the memory or disk cache, or `compute()` (then cached)."""
        return self.cache.get(image, extractor, layout, compute)

    # -- measures -----------------------------------------------------------------------------------
    def stats(self, fixed_features: torch.Tensor, sigma: float) -> Stats:
        return fixed_statistics(fixed_features, sigma) if self.measure == "lncc" else None

    def feature_loss(self, fixed_features: torch.Tensor, moving_features: torch.Tensor, weights: torch.Tensor,
                     sigma: float, stats: Stats = None) -> torch.Tensor:
        if self.measure == "cosine":
            return cosine_loss(fixed_features, moving_features, weights)
        if self.measure == "l1":
            return l1_loss(fixed_features, moving_features, weights)
        return lncc_loss(fixed_features, moving_features, weights, sigma, self.eps, stats)

    # -- per level ----------------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(self.slice_seed + int(seed))

    def prepare(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_grid: Grid, moving_grid: Grid) -> None:
        dim = fixed.dim() - 2
        if dim not in (2, 3):
            raise RegistrationError(f"diffusion similarity: images must be 2D or 3D, got {tuple(fixed.shape)}.")
        sigma = self.sigma if self.sigma is not None else (4.0 if dim == 2 else 5.0)
        level = Level(self.extractor_for(dim, fixed.device), sigma)
        if dim == 2:
            self.strategy = Planar2D(self, level, warp_cached=self.mode == "fast")
            self._exact = self.strategy if self.mode == "exact" else Planar2D(self, level, warp_cached=False)
        else:
            self.strategy = TriplanarFast3D(self, level) if self.mode == "fast" else RandomAxisExact3D(self, level)
            self._exact = self.strategy if self.mode == "exact" else RandomAxisExact3D(self, level)
        self.strategy.prepare(fixed, moving)
        if self._exact is not self.strategy:
            self._exact.prepare(fixed, moving)
        if self.intensity_weight > 0 and self._intensity is None:
            self._intensity = build_similarity("lncc")

    def _ready(self, fixed: torch.Tensor) -> None:
        if self.strategy is None or (isinstance(self.strategy, Planar2D)) != (fixed.dim() == 4):
            raise RegistrationError("diffusion similarity: call prepare() before computing the loss.")

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss between a fixed image and an already warped moving image (features of both extracted)."""
        self._ready(fixed)
        identity = torch.eye(fixed.dim() - 1, fixed.dim(), device=fixed.device, dtype=fixed.dtype)
        grid = F.affine_grid(identity[None].expand(fixed.shape[0], -1, -1), list(fixed.shape), align_corners=True)
        return self._exact.loss(fixed, warped, grid, mask)

    def mapped_loss(self, fixed: torch.Tensor, moving: torch.Tensor, sampling_grid: torch.Tensor,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._ready(fixed)
        if sampling_grid.shape[0] != fixed.shape[0]:
            sampling_grid = sampling_grid.expand(fixed.shape[0], *sampling_grid.shape[1:])
        loss = self.strategy.loss(fixed, moving, sampling_grid, mask)
        self.strategy.level.step += 1
        if self.intensity_weight > 0:
            loss = loss + self.intensity_weight * self._intensity(fixed, sample(moving, sampling_grid), mask)
        return loss


def build_extractor(spec: dict[str, Any], dim: int) -> FeatureExtractor:
    """A known-answer backbone (image, mind; also as a catalog id of kind builtin) or load_extractor's."""
    from .known_features import KNOWN_ANSWER_BACKBONES, known_answer_extractor

    if spec.get("backbone") in KNOWN_ANSWER_BACKBONES:
        return known_answer_extractor(spec)
    return load_extractor(spec, dim=dim)
