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
The on-disk cache (folder from DIFFREG_FEATURE_CACHE, default ~/.cache/diffusionregistration/features)
is keyed by a hash of the image's bytes, the extractor's identity (weights, tap, timestep, noise,
ensemble) and the slicing.
An optional intensity term (`intensity_weight` times the registry's "lncc") is added to the loss.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..errors import RegistrationError
from ..features.base import FeatureExtractor
from ..features.loading import load_extractor
from ..geometry.spatial import gaussian_smooth, sample
from ..io.atomic import atomic_path
from ..core.image import Grid
from .base import Similarity
from .registry import build_similarity

CACHE_VERSION = 1
_MEMORY_CACHE_ENTRIES = 8


def feature_cache_dir() -> Path:
    folder = os.environ.get("DIFFREG_FEATURE_CACHE")
    return Path(folder).expanduser() if folder else Path.home() / ".cache" / "diffusionregistration" / "features"


# ------------------------------------------------------------------------------------------------------
# measures
def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values [N, C, h, w], weights [N, 1, h, w] -> mean over channels, weighted over pixels."""
    weights = weights.expand(values.shape[0], 1, *values.shape[2:])
    total = weights.sum() * values.shape[1]
    return (values * weights).sum() / total.clamp(min=1e-12)


def fixed_statistics(fixed: torch.Tensor, sigma: float, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed side of LNCC, which does not change during a level: local mean and 1/sqrt(var + eps)."""
    fixed = fixed.float()
    mu_f, ff = gaussian_smooth(torch.cat([fixed, fixed * fixed]), sigma).split(fixed.shape[0])
    return mu_f, torch.rsqrt((ff - mu_f * mu_f).clamp(min=0) + eps)


def lncc_loss(fixed: torch.Tensor, moving: torch.Tensor, weights: torch.Tensor, sigma: float,
              eps: float = 1e-6, fixed_stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """-(weighted mean of the local NCC per channel), Gaussian window of `sigma` feature pixels.

    cc = cov / sqrt((var_f + eps)(var_m + eps)) with local (windowed) means, variances and covariance;
    `fixed_stats` (from fixed_statistics) saves recomputing the fixed side at every step.
    """
    fixed, moving = fixed.float(), moving.float()
    mu_f, inv_sd_f = fixed_stats if fixed_stats is not None else fixed_statistics(fixed, sigma, eps)
    n = fixed.shape[0]
    mu_m, mm, fm = gaussian_smooth(torch.cat([moving, moving * moving, fixed * moving]), sigma).split(n)
    inv_sd_m = torch.rsqrt((mm - mu_m * mu_m).clamp(min=0) + eps)
    cc = (fm - mu_f * mu_m) * inv_sd_f * inv_sd_m
    return -_weighted_mean(cc, weights)


def l1_loss(fixed: torch.Tensor, moving: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return _weighted_mean((fixed.float() - moving.float()).abs(), weights)


def cosine_loss(fixed: torch.Tensor, moving: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(fixed.float(), moving.float(), dim=1, eps=1e-8).unsqueeze(1)
    return -_weighted_mean(cos, weights)


# ------------------------------------------------------------------------------------------------------
# geometry helpers (2D slices; sizes in (h, w) order)
def feature_weights(mask: Optional[torch.Tensor], size: tuple[int, int], stride: int,
                    like: torch.Tensor) -> torch.Tensor:
    """Fraction of each feature pixel's s x s input block that lies inside the image (and the mask).

    mask [N, 1, H, W] or None -> [N or 1, 1, ceil(H/s), ceil(W/s)].
    """
    if mask is None:
        mask = torch.ones(1, 1, *size, device=like.device, dtype=torch.float32)
    mask = mask.float()
    pad_h, pad_w = (-size[0]) % stride, (-size[1]) % stride
    if pad_h or pad_w:
        mask = F.pad(mask, (0, pad_w, 0, pad_h))
    return F.avg_pool2d(mask, stride) if stride > 1 else mask


def _extrapolating_pad(image: torch.Tensor, pad: int) -> torch.Tensor:
    """Pads [N, C, H, W] by linear extrapolation (2 * edge - mirror), so a linear field stays linear."""
    pad_h, pad_w = min(pad, image.shape[-2] - 1), min(pad, image.shape[-1] - 1)
    if pad_h <= 0 and pad_w <= 0:
        return F.pad(image, (pad, pad, pad, pad), mode="replicate")
    padding = (pad_w, pad_w, pad_h, pad_h)
    extrapolated = 2 * F.pad(image, padding, mode="replicate") - F.pad(image, padding, mode="reflect")
    rest = (pad - pad_w, pad - pad_w, pad - pad_h, pad - pad_h)
    return F.pad(extrapolated, rest, mode="replicate") if any(rest) else extrapolated


def grid_at_feature_centres(grid: torch.Tensor, stride: int, feature_size: tuple[int, int]) -> torch.Tensor:
    """The sampling grid [N, H, W, K] (at input pixels) interpolated at the feature pixel centres
    (input coordinate j * s + (s - 1) / 2) -> [N, h, w, K]; linear extrapolation past the border."""
    if stride == 1 and tuple(grid.shape[1:3]) == tuple(feature_size):
        return grid
    image = grid.permute(0, 3, 1, 2)
    height, width = image.shape[-2:]
    pad = stride
    padded = _extrapolating_pad(image, pad)
    coords = []
    for count, size in ((feature_size[1], width), (feature_size[0], height)):  # x then y
        centre = torch.arange(count, device=grid.device, dtype=grid.dtype) * stride + (stride - 1) / 2
        coords.append(2 * (centre + pad) / (size + 2 * pad - 1) - 1)
    gy, gx = torch.meshgrid(coords[1], coords[0], indexing="ij")
    where = torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(image.shape[0], -1, -1, -1)
    out = F.grid_sample(padded, where.to(padded.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return out.permute(0, 2, 3, 1)


def _to_feature_coords(g: torch.Tensor, image_size: int, feature_size: int, stride: int,
                       offset: float = None) -> torch.Tensor:
    """Normalised image coordinates (align_corners) -> normalised coordinates of a feature axis whose
    pixel j has its centre at image index j * stride + offset (offset default (stride - 1) / 2)."""
    offset = (stride - 1) / 2 if offset is None else offset
    index = (g + 1) * (max(image_size - 1, 1) / 2)
    feature_index = (index - offset) / stride
    return 2 * feature_index / max(feature_size - 1, 1) - 1


def _slice_positions(length: int, slice_stride: int) -> torch.Tensor:
    """Every slice_stride-th index, centred in the volume."""
    offset = ((length - 1) % slice_stride) // 2
    return torch.arange(offset, length, slice_stride)


def _slices(volume: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """volume [B, C, D, H, W], spatial axis 0..2, indices -> 2D slices [B * k, C, a, b] (batch-major)."""
    picked = volume.index_select(2 + axis, index.to(volume.device))
    moved = picked.movedim(2 + axis, 1)  # [B, k, C, a, b]
    return moved.reshape(-1, *moved.shape[2:])


# ------------------------------------------------------------------------------------------------------
# strategies: one class per algorithm, each with its own typed per-level state
Stats = Optional[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Level:
    """What every strategy shares during one resolution level."""
    extractor: FeatureExtractor
    sigma: float
    step: int = 0


class Strategy:
    """One way to compute the feature loss of the moving image mapped by a sampling grid."""

    def __init__(self, owner: "DiffusionFeatureSimilarity", level: Level):
        self.owner, self.level = owner, level

    def prepare(self, fixed: torch.Tensor, moving: torch.Tensor) -> None:
        """Extracts what stays fixed during the level."""

    def loss(self, fixed: torch.Tensor, moving: torch.Tensor, sampling_grid: torch.Tensor,
             mask: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def refresh_due(self, has_offset: bool) -> bool:
        every = self.owner.refresh_every
        return every > 0 and (not has_offset or self.level.step % every == 0)


@dataclass
class PlanarState:
    """2D: fixed features and their LNCC statistics; fast mode adds the moving features and the offset
    (exact minus warped cached features) kept since the last refresh."""
    fixed: torch.Tensor
    fixed_stats: Stats
    moving: Optional[torch.Tensor] = None
    offset: Optional[torch.Tensor] = None


class Planar2D(Strategy):
    """2D images. Exact: features of the warped moving image at every step, gradients through the network.
    Fast (`warp_cached`): the moving image's features extracted once and warped with the sampling grid."""

    def __init__(self, owner: "DiffusionFeatureSimilarity", level: Level, warp_cached: bool):
        super().__init__(owner, level)
        self.warp_cached = warp_cached
        self.state: Optional[PlanarState] = None

    def prepare(self, fixed: torch.Tensor, moving: torch.Tensor) -> None:
        owner, extractor = self.owner, self.level.extractor
        fixed_features = torch.cat([owner.frozen_features(f[None], extractor) for f in fixed])
        moving_features = torch.cat([owner.frozen_features(m[None], extractor) for m in moving]) \
            if self.warp_cached else None
        self.state = PlanarState(fixed_features, owner.stats(fixed_features, self.level.sigma), moving_features)

    def loss(self, fixed, moving, sampling_grid, mask) -> torch.Tensor:
        state, extractor, owner = self.state, self.level.extractor, self.owner
        weights = feature_weights(mask, tuple(fixed.shape[-2:]), extractor.stride, fixed)
        if not self.warp_cached:
            warped = owner.extract(extractor, sample(moving, sampling_grid))
            return owner.feature_loss(state.fixed, warped, weights, self.level.sigma, state.fixed_stats)
        coords = _moving_feature_coords_2d(sampling_grid, moving.shape[-2:], state.moving.shape[-2:],
                                           extractor.stride, state.fixed.shape[-2:])
        warped = F.grid_sample(state.moving, coords.to(state.moving.dtype), mode="bilinear",
                               padding_mode="border", align_corners=True)
        if owner.refresh_every > 0:
            if self.refresh_due(state.offset is not None):
                exact = owner.extract_frozen(extractor, sample(moving, sampling_grid))
                state.offset = exact - warped.detach()
            warped = warped + state.offset
        return owner.feature_loss(state.fixed, warped, weights, self.level.sigma, state.fixed_stats)


def _moving_feature_coords_2d(grid, moving_size, moving_feature_size, stride, fixed_feature_size):
    at_centres = grid_at_feature_centres(grid, stride, tuple(fixed_feature_size))
    gx = _to_feature_coords(at_centres[..., 0], moving_size[1], moving_feature_size[1], stride)
    gy = _to_feature_coords(at_centres[..., 1], moving_size[0], moving_feature_size[0], stride)
    return torch.stack([gx, gy], dim=-1)


def _plane_weights(mask: Optional[torch.Tensor], fixed: torch.Tensor, axis: int, index: torch.Tensor,
                   stride: int) -> torch.Tensor:
    """Feature-pixel weights of the fixed slices `index` along `axis` (mask [B, 1, D, H, W] or None)."""
    plane_shape = tuple(s for i, s in enumerate(fixed.shape[2:]) if i != axis)
    plane_mask = None if mask is None else _slices(mask, axis, index)
    return feature_weights(plane_mask, plane_shape, stride, fixed)


@dataclass
class RandomAxisState:
    """The paper's 3D mode: fixed slice features met so far, per (axis, index), and the last draw."""
    fixed_slices: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    last_slices: tuple[int, list[int]] = (0, [])


class RandomAxisExact3D(Strategy):
    """The paper's 3D mode: each step one random axis and `slices_per_step` random slice indices (seeded);
    those slices of the fixed image (cached, no gradient) and of the warped moving image go through the
    network, gradients flow through it to the sampling grid."""

    def __init__(self, owner: "DiffusionFeatureSimilarity", level: Level):
        super().__init__(owner, level)
        self.state = RandomAxisState()

    def loss(self, fixed, moving, sampling_grid, mask) -> torch.Tensor:
        owner, extractor, cache = self.owner, self.level.extractor, self.state.fixed_slices
        axis = int(torch.randint(3, (1,), generator=owner.generator))
        index = torch.randperm(fixed.shape[2 + axis], generator=owner.generator)[: owner.slices_per_step].sort().values
        missing = [int(i) for i in index if (axis, int(i)) not in cache]
        if missing:
            features = owner.extract_frozen(extractor, _slices(fixed, axis, torch.tensor(missing)))
            features = features.reshape(fixed.shape[0], len(missing), *features.shape[1:])
            for j, i in enumerate(missing):
                cache[(axis, i)] = features[:, j]
        fixed_features = torch.stack([cache[(axis, int(i))] for i in index], dim=1)
        fixed_features = fixed_features.reshape(-1, *fixed_features.shape[2:])
        grid = sampling_grid.index_select(1 + axis, index.to(sampling_grid.device))
        warped = sample(moving, grid)  # [B, 1, *sliced shape]
        warped_features = owner.extract(extractor, _slices(warped, axis, torch.arange(index.numel())))
        weights = _plane_weights(mask, fixed, axis, index, extractor.stride)
        self.state.last_slices = (axis, index.tolist())
        return owner.feature_loss(fixed_features, warped_features, weights, self.level.sigma)


@dataclass
class TriplanarState:
    """Per batch item: the fixed and moving tri-planar feature stacks ({"axis0": [n0, C, h, w], ...}), the
    fixed LNCC statistics, the refresh offsets and the last (axes, slice selection) used."""
    fixed: list[dict[str, torch.Tensor]]
    fixed_stats: list[dict[str, Stats]]
    moving: list[dict[str, torch.Tensor]]
    offsets: Optional[dict[tuple[int, int], torch.Tensor]] = None
    last_slices: tuple[list[int], Optional[list[int]]] = ([0, 1, 2], None)


class TriplanarFast3D(Strategy):
    """Fast 3D mode: features of every `slice_stride`-th slice along each axis of both images, extracted once
    (cached); the moving stacks are sampled with the 3D sampling grid at the fixed slices. `step_slices` n:
    each step one random axis and n random cached slices; `refresh_every` K: see the module docstring."""

    def __init__(self, owner: "DiffusionFeatureSimilarity", level: Level):
        super().__init__(owner, level)
        self.state: Optional[TriplanarState] = None

    def positions(self, length: int) -> torch.Tensor:
        return _slice_positions(length, self.owner.slice_stride)

    def _triplanar(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        """volume [1, 1, D, H, W] -> {"axis0": [n0, C, h, w], "axis1": [n1, C, d, w], "axis2": [n2, C, d, h]}."""
        owner, extractor = self.owner, self.level.extractor

        def compute() -> dict[str, torch.Tensor]:
            return {f"axis{axis}": owner.extract_frozen(extractor, _slices(volume, axis,
                                                                           self.positions(volume.shape[2 + axis])))
                    for axis in range(3)}

        return owner.cached_features(volume, extractor, f"triplanar|stride={owner.slice_stride}", compute)

    def prepare(self, fixed: torch.Tensor, moving: torch.Tensor) -> None:
        planes = [self._triplanar(f[None]) for f in fixed]
        stats = [{axis: self.owner.stats(p[axis], self.level.sigma) for axis in p} for p in planes]
        self.state = TriplanarState(planes, stats, [self._triplanar(m[None]) for m in moving])

    def _warp_plane(self, b: int, axis: int, index: torch.Tensor, moving: torch.Tensor,
                    sampling_grid: torch.Tensor) -> torch.Tensor:
        """The moving image's cached features along `axis`, sampled at the fixed slices `index` with the 3D
        sampling grid -> [k, C, h, w]."""
        stride, slice_stride = self.level.extractor.stride, self.owner.slice_stride
        fixed_features = self.state.fixed[b][f"axis{axis}"]
        # the sampling grid at those fixed slices, [k, a, b, 3], then at the feature centres in-plane
        grid = _slices(sampling_grid[b:b + 1].movedim(-1, 1), axis, index).movedim(1, -1)
        centres = grid_at_feature_centres(grid, stride, tuple(fixed_features.shape[-2:]))
        volume = self.state.moving[b][f"axis{axis}"]  # [n, C, p, q]: moving slices along `axis`
        volume3d = volume.permute(1, 0, 2, 3).unsqueeze(0).movedim(2, 2 + axis)  # [1, C, *3D]
        in_plane = [i for i in range(3) if i != axis]
        coords = []
        for component in range(3):  # the grid's x, y, z components
            spatial_axis = 2 - component  # its (z, y, x) index
            size = moving.shape[2 + spatial_axis]
            if spatial_axis == axis:
                offset = float(((size - 1) % slice_stride) // 2)
                coords.append(_to_feature_coords(centres[..., component], size, volume.shape[0], slice_stride, offset))
            else:
                feature_size = volume.shape[2 + in_plane.index(spatial_axis)]
                coords.append(_to_feature_coords(centres[..., component], size, feature_size, stride))
        where = torch.stack(coords, dim=-1).unsqueeze(0)  # [1, k, h, w, 3]
        warped = F.grid_sample(volume3d, where.to(volume3d.dtype), mode="bilinear", padding_mode="border",
                               align_corners=True)  # [1, C, k, h, w]
        return warped[0].transpose(0, 1)

    def _refresh(self, fixed: torch.Tensor, moving: torch.Tensor, sampling_grid: torch.Tensor) -> None:
        """Offsets = features of the currently warped moving image at the fixed slices - warped cached ones."""
        offsets = {}
        with torch.no_grad():
            for b in range(fixed.shape[0]):
                warped_image = sample(moving[b:b + 1], sampling_grid[b:b + 1])
                for axis in range(3):
                    index = self.positions(fixed.shape[2 + axis])
                    exact = self.owner.extract_frozen(self.level.extractor, _slices(warped_image, axis, index))
                    offsets[(b, axis)] = exact - self._warp_plane(b, axis, index, moving, sampling_grid)
        self.state.offsets = offsets

    def loss(self, fixed, moving, sampling_grid, mask) -> torch.Tensor:
        owner, state = self.owner, self.state
        if owner.refresh_every > 0 and self.refresh_due(state.offsets is not None):
            self._refresh(fixed, moving, sampling_grid)
        if owner.step_slices:  # the paper's stochastic sampling, applied to the cached slices
            axes = [int(torch.randint(3, (1,), generator=owner.generator))]
            count = len(self.positions(fixed.shape[2 + axes[0]]))
            sel = torch.randperm(count, generator=owner.generator)[: owner.step_slices].sort().values
        else:
            axes, sel = [0, 1, 2], None
        losses = []
        for b in range(fixed.shape[0]):
            for axis in axes:
                index = self.positions(fixed.shape[2 + axis])
                fixed_features, stats = state.fixed[b][f"axis{axis}"], state.fixed_stats[b][f"axis{axis}"]
                offset = state.offsets[(b, axis)] if state.offsets is not None else None
                if sel is not None:
                    index, fixed_features = index[sel], fixed_features[sel]
                    stats = None if stats is None else tuple(t[sel] for t in stats)
                    offset = None if offset is None else offset[sel]
                warped = self._warp_plane(b, axis, index, moving, sampling_grid)
                if offset is not None:
                    warped = warped + offset
                weights = _plane_weights(None if mask is None else mask[b:b + 1], fixed, axis, index,
                                         self.level.extractor.stride)
                losses.append(owner.feature_loss(fixed_features, warped, weights, self.level.sigma, stats))
        state.last_slices = (axes, None if sel is None else sel.tolist())
        return torch.stack(losses).mean()


# ------------------------------------------------------------------------------------------------------
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
        if mode not in ("exact", "fast"):
            raise RegistrationError(f"diffusion similarity: mode '{mode}' is not one of exact, fast.")
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
        self.use_disk_cache = bool(cache)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.slice_seed = int(slice_seed)
        self.generator = torch.Generator().manual_seed(self.slice_seed)
        self._memory: "OrderedDict[str, Any]" = OrderedDict()
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

    def _cache_key(self, image: torch.Tensor, extractor: FeatureExtractor, layout: str) -> str:
        digest = hashlib.sha256()
        array = image.detach().float().cpu().contiguous()
        digest.update(f"v{CACHE_VERSION}|{tuple(array.shape)}|{layout}|".encode())
        digest.update(extractor.cache_key().encode())
        digest.update(array.numpy().tobytes())
        return digest.hexdigest()[:40]

    def cached_features(self, image: torch.Tensor, extractor: FeatureExtractor, layout: str, compute) -> Any:
        """Features of one image from memory, disk, or `compute()` (then stored in both)."""
        key = self._cache_key(image, extractor, layout)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        value = None
        folder = self.cache_dir or feature_cache_dir()
        path = folder / f"{key}.pt"
        if self.use_disk_cache and path.is_file():
            try:
                value = torch.load(path, map_location=image.device, weights_only=True)
            except Exception:  # a damaged cache entry is recomputed
                value = None
        if value is None:
            value = compute()
            if self.use_disk_cache:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    with atomic_path(path) as temporary:
                        torch.save(value, temporary)
                except OSError:
                    pass  # a read-only cache folder only costs the re-extraction next time
        self._memory[key] = value
        while len(self._memory) > _MEMORY_CACHE_ENTRIES:
            self._memory.popitem(last=False)
        return value

    # -- measures -----------------------------------------------------------------------------------
    def stats(self, fixed_features: torch.Tensor, sigma: float) -> Stats:
        return fixed_statistics(fixed_features, sigma, self.eps) if self.measure == "lncc" else None

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
