"""The diffusion-feature similarity's algorithms, one class each with its own typed per-level state (see the
similarity.diffusion module docstring for what each computes): Planar2D (2D, exact or with cached moving
features), RandomAxisExact3D (the paper's 3D sampling), TriplanarFast3D (cached tri-planar features)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from ..features.base import FeatureExtractor
from ..geometry.spatial import sample
from .feature_grids import (feature_weights, grid_at_feature_centres, moving_feature_coords_2d, plane_weights,
                            slice_positions, slices, to_feature_coords)
from .local_ncc import Moments

if TYPE_CHECKING:
    from .diffusion import DiffusionFeatureSimilarity


Stats = Optional[Moments]


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
        coords = moving_feature_coords_2d(sampling_grid, moving.shape[-2:], state.moving.shape[-2:],
                                           extractor.stride, state.fixed.shape[-2:])
        warped = F.grid_sample(state.moving, coords.to(state.moving.dtype), mode="bilinear",
                               padding_mode="border", align_corners=True)
        if owner.refresh_every > 0:
            if self.refresh_due(state.offset is not None):
                exact = owner.extract_frozen(extractor, sample(moving, sampling_grid))
                state.offset = exact - warped.detach()
            warped = warped + state.offset
        return owner.feature_loss(state.fixed, warped, weights, self.level.sigma, state.fixed_stats)


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
            features = owner.extract_frozen(extractor, slices(fixed, axis, torch.tensor(missing)))
            features = features.reshape(fixed.shape[0], len(missing), *features.shape[1:])
            for j, i in enumerate(missing):
                cache[(axis, i)] = features[:, j]
        fixed_features = torch.stack([cache[(axis, int(i))] for i in index], dim=1)
        fixed_features = fixed_features.reshape(-1, *fixed_features.shape[2:])
        grid = sampling_grid.index_select(1 + axis, index.to(sampling_grid.device))
        warped = sample(moving, grid)  # [B, 1, *sliced shape]
        warped_features = owner.extract(extractor, slices(warped, axis, torch.arange(index.numel())))
        weights = plane_weights(mask, fixed, axis, index, extractor.stride)
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
        return slice_positions(length, self.owner.slice_stride)

    def _triplanar(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        """volume [1, 1, D, H, W] -> {"axis0": [n0, C, h, w], "axis1": [n1, C, d, w], "axis2": [n2, C, d, h]}."""
        owner, extractor = self.owner, self.level.extractor

        def compute() -> dict[str, torch.Tensor]:
            return {f"axis{axis}": owner.extract_frozen(extractor, slices(volume, axis,
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
        grid = slices(sampling_grid[b:b + 1].movedim(-1, 1), axis, index).movedim(1, -1)
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
                coords.append(to_feature_coords(centres[..., component], size, volume.shape[0], slice_stride, offset))
            else:
                feature_size = volume.shape[2 + in_plane.index(spatial_axis)]
                coords.append(to_feature_coords(centres[..., component], size, feature_size, stride))
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
                    exact = self.owner.extract_frozen(self.level.extractor, slices(warped_image, axis, index))
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
                    stats = None if stats is None else stats.select(sel)
                    offset = None if offset is None else offset[sel]
                warped = self._warp_plane(b, axis, index, moving, sampling_grid)
                if offset is not None:
                    warped = warped + offset
                weights = plane_weights(None if mask is None else mask[b:b + 1], fixed, axis, index,
                                         self.level.extractor.stride)
                losses.append(owner.feature_loss(fixed_features, warped, weights, self.level.sigma, stats))
        state.last_slices = (axes, None if sel is None else sel.tolist())
        return torch.stack(losses).mean()
