"""The diffusion-feature similarity: a loss between feature maps of the fixed and the warped moving image.

Measures (per feature pixel, averaged over the fixed mask downsampled to feature resolution):
- "lncc" (the paper): local normalised cross-correlation per feature channel with a Gaussian window
  (sigma 4 feature pixels in 2D, 5 for slices of 3D volumes), cc = cov / sqrt((var_f + eps)(var_m + eps)),
  eps 1e-6; loss = -mean(cc), so identical feature maps give -1 wherever a channel varies.
- "cosine": cosine similarity of the feature vectors; loss = -mean(cos).

Modes:
- "exact" (the paper): the warped moving image's features are re-extracted at every step and the
  gradient flows through the frozen network. 2D: the fixed features do not change and are extracted
  once per level. 3D: each call picks one random axis and `slices_per_step` (4) random slice indices
  (seeded generator) and extracts those 2D slices of the fixed image (cached per slice, no gradient)
  and of the warped moving image. Same numbers as one batch of both (the same noise is used for every
  image, and the network treats images independently), at about half the backward cost.
- "fast": features of the fixed and of the moving image are extracted once per level (3D: tri-planar,
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
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..io.atomic import atomic_path
from ..errors import RegistrationError
from ..io.images import Grid
from .base import Similarity
from .registry import build_similarity
from ..geometry.spatial import gaussian_smooth, sample
from ..features.base import FeatureExtractor
from ..features.loading import load_extractor

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
class DiffusionFeatureSimilarity(Similarity):
    """Diffusion-feature similarity (see the module docstring)."""

    def __init__(self, extractor: Any = None, measure: str = "lncc", mode: str = "fast",
                 sigma: Optional[float] = None, eps: float = 1e-6, slices_per_step: int = 4,
                 slice_seed: int = 0, slice_stride: int = 4, refresh_every: int = 0,
                 intensity_weight: float = 0.0, cache: bool = True, cache_dir: Optional[str] = None,
                 step_slices: Optional[int] = None):
        super().__init__()
        if measure not in ("lncc", "cosine"):
            raise RegistrationError(f"diffusion similarity: measure '{measure}' is not one of lncc, cosine.")
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
        self._state: dict[str, Any] = {}
        self.extraction_calls = 0  # images sent through the network (for reports and tests)

    # -- extractor and cache ------------------------------------------------------------------------
    def extractor_for(self, dim: int, device: torch.device) -> FeatureExtractor:
        if "given" in self._extractors:
            return self._extractors["given"]
        if dim not in self._extractors:
            self._extractors[dim] = load_extractor(self._spec, dim=dim).to(device)
        return self._extractors[dim]

    def _extract(self, extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
        """images [N, 1, H, W] on any device -> features on the images' device."""
        self.extraction_calls += images.shape[0]
        features = extractor(images.to(extractor.device))
        return features.to(images.device)

    def _extract_frozen(self, extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            features = self._extract(extractor, images.detach())
        return features.clone()  # a normal tensor again, usable in autograd

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

    # -- per level ----------------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(self.slice_seed + int(seed))

    def prepare(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_grid: Grid, moving_grid: Grid) -> None:
        dim = fixed.dim() - 2
        if dim not in (2, 3):
            raise RegistrationError(f"diffusion similarity: images must be 2D or 3D, got {tuple(fixed.shape)}.")
        extractor = self.extractor_for(dim, fixed.device)
        self._state = {"dim": dim, "extractor": extractor, "step": 0, "offset": None,
                       "sigma": self.sigma if self.sigma is not None else (4.0 if dim == 2 else 5.0)}
        if self.intensity_weight > 0 and self._intensity is None:
            self._intensity = build_similarity("lncc")
        if dim == 2:
            self._state["fixed"] = torch.cat([self.cached_features(f[None], extractor, "2d",
                                                                   lambda f=f: self._extract_frozen(extractor, f[None]))
                                              for f in fixed])
            if self.mode == "fast":
                self._state["moving"] = torch.cat([self.cached_features(
                    m[None], extractor, "2d", lambda m=m: self._extract_frozen(extractor, m[None]))
                    for m in moving])
            self._state["fixed_stats"] = self._stats(self._state["fixed"])
        elif self.mode == "fast":
            self._state["fixed"] = [self._triplanar(f[None], extractor) for f in fixed]
            self._state["fixed_stats"] = [{axis: self._stats(planes[axis]) for axis in planes}
                                          for planes in self._state["fixed"]]
            self._state["moving"] = [self._triplanar(m[None], extractor) for m in moving]
        else:
            self._state["fixed_slices"] = {}

    def _triplanar(self, volume: torch.Tensor, extractor: FeatureExtractor) -> dict[str, torch.Tensor]:
        """volume [1, 1, D, H, W] -> {"axis0": [n0, C, h, w], "axis1": [n1, C, d, w], "axis2": [n2, C, d, h]}."""
        layout = f"triplanar|stride={self.slice_stride}"

        def compute() -> dict[str, torch.Tensor]:
            planes = {}
            for axis in range(3):
                index = _slice_positions(volume.shape[2 + axis], self.slice_stride)
                planes[f"axis{axis}"] = self._extract_frozen(extractor, _slices(volume, axis, index))
            return planes

        return self.cached_features(volume, extractor, layout, compute)

    # -- loss ---------------------------------------------------------------------------------------
    def _feature_loss(self, fixed_features: torch.Tensor, moving_features: torch.Tensor,
                      weights: torch.Tensor, stats=None) -> torch.Tensor:
        if self.measure == "cosine":
            return cosine_loss(fixed_features, moving_features, weights)
        return lncc_loss(fixed_features, moving_features, weights, self._state["sigma"], self.eps, stats)

    def _stats(self, fixed_features: torch.Tensor):
        return fixed_statistics(fixed_features, self._state["sigma"], self.eps) if self.measure == "lncc" else None

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss between a fixed image and an already warped moving image (features of both extracted)."""
        identity = torch.eye(fixed.dim() - 1, fixed.dim(), device=fixed.device, dtype=fixed.dtype)
        grid = F.affine_grid(identity[None].expand(fixed.shape[0], -1, -1), list(fixed.shape), align_corners=True)
        if not self._state or self._state.get("dim") != fixed.dim() - 2:
            raise RegistrationError("diffusion similarity: call prepare() before computing the loss.")
        self._state.setdefault("fixed_slices", {})
        saved_mode = self.mode
        self.mode = "exact"
        try:
            return self.mapped_loss(fixed, warped, grid, mask)
        finally:
            self.mode = saved_mode

    def mapped_loss(self, fixed: torch.Tensor, moving: torch.Tensor, sampling_grid: torch.Tensor,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self._state:
            raise RegistrationError("diffusion similarity: call prepare() before computing the loss.")
        dim = self._state["dim"]
        if sampling_grid.shape[0] != fixed.shape[0]:
            sampling_grid = sampling_grid.expand(fixed.shape[0], *sampling_grid.shape[1:])
        if dim == 2:
            loss = self._loss_2d(fixed, moving, sampling_grid, mask)
        elif self.mode == "fast":
            loss = self._loss_3d_fast(fixed, moving, sampling_grid, mask)
        else:
            loss = self._loss_3d_exact(fixed, moving, sampling_grid, mask)
        self._state["step"] += 1
        if self.intensity_weight > 0:
            loss = loss + self.intensity_weight * self._intensity(fixed, sample(moving, sampling_grid), mask)
        return loss

    def _refresh_due(self) -> bool:
        step = self._state["step"]
        return self.refresh_every > 0 and (self._state["offset"] is None or step % self.refresh_every == 0)

    def _loss_2d(self, fixed, moving, sampling_grid, mask) -> torch.Tensor:
        extractor: FeatureExtractor = self._state["extractor"]
        fixed_features = self._state["fixed"]
        size = tuple(fixed.shape[-2:])
        weights = feature_weights(mask, size, extractor.stride, fixed)
        if self.mode == "exact":
            warped = sample(moving, sampling_grid)
            return self._feature_loss(fixed_features, self._extract(extractor, warped), weights,
                                      self._state["fixed_stats"])
        moving_features = self._state["moving"]
        coords = self._moving_feature_coords_2d(sampling_grid, moving.shape[-2:], moving_features.shape[-2:],
                                                extractor.stride, fixed_features.shape[-2:])
        warped_features = F.grid_sample(moving_features, coords.to(moving_features.dtype), mode="bilinear",
                                        padding_mode="border", align_corners=True)
        if self.refresh_every > 0:
            if self._refresh_due():
                exact = self._extract_frozen(extractor, sample(moving, sampling_grid))
                self._state["offset"] = exact - warped_features.detach()
            warped_features = warped_features + self._state["offset"]
        return self._feature_loss(fixed_features, warped_features, weights, self._state["fixed_stats"])

    @staticmethod
    def _moving_feature_coords_2d(grid, moving_size, moving_feature_size, stride, fixed_feature_size):
        at_centres = grid_at_feature_centres(grid, stride, tuple(fixed_feature_size))
        gx = _to_feature_coords(at_centres[..., 0], moving_size[1], moving_feature_size[1], stride)
        gy = _to_feature_coords(at_centres[..., 1], moving_size[0], moving_feature_size[0], stride)
        return torch.stack([gx, gy], dim=-1)

    def _warp_plane(self, b: int, axis: int, sel: Optional[torch.Tensor], fixed: torch.Tensor,
                    moving: torch.Tensor, sampling_grid: torch.Tensor) -> torch.Tensor:
        """The moving image's cached features along `axis`, sampled at the fixed slices (all, or the
        positions `sel` among them) with the 3D sampling grid -> [k, C, h, w]."""
        stride = self._state["extractor"].stride
        fixed_features = self._state["fixed"][b][f"axis{axis}"]
        index = _slice_positions(fixed.shape[2 + axis], self.slice_stride)
        if sel is not None:
            index = index[sel]
        # the sampling grid at those fixed slices, [k, a, b, 3], then at the feature centres in-plane
        grid = _slices(sampling_grid[b:b + 1].movedim(-1, 1), axis, index).movedim(1, -1)
        centres = grid_at_feature_centres(grid, stride, tuple(fixed_features.shape[-2:]))
        volume = self._state["moving"][b][f"axis{axis}"]  # [n, C, p, q]: moving slices along `axis`
        # -> [1, C, *3D] with the slice axis at its place among (z, y, x)
        volume3d = volume.permute(1, 0, 2, 3).unsqueeze(0).movedim(2, 2 + axis)
        in_plane = [i for i in range(3) if i != axis]
        coords = []
        for component in range(3):  # the grid's x, y, z components
            spatial_axis = 2 - component  # its (z, y, x) index
            size = moving.shape[2 + spatial_axis]
            if spatial_axis == axis:
                offset = float(((size - 1) % self.slice_stride) // 2)
                coords.append(_to_feature_coords(centres[..., component], size, volume.shape[0],
                                                 self.slice_stride, offset))
            else:
                feature_size = volume.shape[2 + in_plane.index(spatial_axis)]
                coords.append(_to_feature_coords(centres[..., component], size, feature_size, stride))
        where = torch.stack(coords, dim=-1).unsqueeze(0)  # [1, k, h, w, 3]
        warped = F.grid_sample(volume3d, where.to(volume3d.dtype), mode="bilinear", padding_mode="border",
                               align_corners=True)  # [1, C, k, h, w]
        return warped[0].transpose(0, 1)

    def _loss_3d_fast(self, fixed, moving, sampling_grid, mask) -> torch.Tensor:
        extractor: FeatureExtractor = self._state["extractor"]
        if self.refresh_every > 0 and self._refresh_due():
            offsets = {}
            with torch.no_grad():
                for b in range(fixed.shape[0]):
                    warped_image = sample(moving[b:b + 1], sampling_grid[b:b + 1])
                    for axis in range(3):
                        index = _slice_positions(fixed.shape[2 + axis], self.slice_stride)
                        exact = self._extract_frozen(extractor, _slices(warped_image, axis, index))
                        offsets[(b, axis)] = exact - self._warp_plane(b, axis, None, fixed, moving, sampling_grid)
            self._state["offset"] = offsets
        if self.step_slices:  # the paper's stochastic sampling, applied to the cached slices
            axes = [int(torch.randint(3, (1,), generator=self.generator))]
            count = len(_slice_positions(fixed.shape[2 + axes[0]], self.slice_stride))
            sel = torch.randperm(count, generator=self.generator)[: self.step_slices].sort().values
        else:
            axes, sel = [0, 1, 2], None
        losses = []
        for b in range(fixed.shape[0]):
            for axis in axes:
                fixed_features = self._state["fixed"][b][f"axis{axis}"]
                stats = self._state["fixed_stats"][b][f"axis{axis}"]
                warped = self._warp_plane(b, axis, sel, fixed, moving, sampling_grid)
                if self.refresh_every > 0:
                    offset = self._state["offset"][(b, axis)]
                    warped = warped + (offset if sel is None else offset[sel])
                index = _slice_positions(fixed.shape[2 + axis], self.slice_stride)
                if sel is not None:
                    fixed_features, index = fixed_features[sel], index[sel]
                    stats = None if stats is None else tuple(t[sel] for t in stats)
                plane_shape = [s for i, s in enumerate(fixed.shape[2:]) if i != axis]
                plane_mask = None if mask is None else _slices(mask[b:b + 1], axis, index)
                weights = feature_weights(plane_mask, tuple(plane_shape), extractor.stride, fixed)
                losses.append(self._feature_loss(fixed_features, warped, weights, stats))
        self._state["last_slices"] = (axes, None if sel is None else sel.tolist())
        return torch.stack(losses).mean()

    def _loss_3d_exact(self, fixed, moving, sampling_grid, mask) -> torch.Tensor:
        extractor: FeatureExtractor = self._state["extractor"]
        axis = int(torch.randint(3, (1,), generator=self.generator))
        length = fixed.shape[2 + axis]
        index = torch.randperm(length, generator=self.generator)[: self.slices_per_step].sort().values
        cache = self._state["fixed_slices"]
        missing = [int(i) for i in index if (axis, int(i)) not in cache]
        if missing:
            features = self._extract_frozen(extractor, _slices(fixed, axis, torch.tensor(missing)))
            batch = fixed.shape[0]
            features = features.reshape(batch, len(missing), *features.shape[1:])
            for j, i in enumerate(missing):
                cache[(axis, i)] = features[:, j]
        fixed_features = torch.stack([cache[(axis, int(i))] for i in index], dim=1)
        fixed_features = fixed_features.reshape(-1, *fixed_features.shape[2:])
        grid = sampling_grid.index_select(1 + axis, index.to(sampling_grid.device))
        warped = sample(moving, grid)  # [B, 1, *sliced shape]
        warped_features = self._extract(extractor, _slices(warped, axis, torch.arange(index.numel())))
        plane_shape = [s for i, s in enumerate(fixed.shape[2:]) if i != axis]
        plane_mask = None if mask is None else _slices(mask, axis, index)
        weights = feature_weights(plane_mask, tuple(plane_shape), extractor.stride, fixed)
        self._state["last_slices"] = (axis, index.tolist())
        return self._feature_loss(fixed_features, warped_features, weights)
