"""Torch geometry: physical point grids, mapping physical points into an image, resampling.

A mapping is represented by the physical (LPS mm) points it sends each fixed voxel to, as a tensor
[B, *spatial, D] with the last axis in (x, y, z) order. `to_sampling_grid` turns such points into the
normalised coordinates torch's grid_sample expects (align_corners=True), for a given moving grid.
"""
from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.image import Grid, Image


# Constants built once per grid or kernel and kept (lru_cache): every optimisation step maps points and filters
# with them, and building them each time was a tenth of a 2D registration. They are built outside inference
# mode, so that a tensor first made inside it (engine/agreement.py) can still be saved for a backward pass.

@lru_cache(maxsize=256)
def _matrix(grid: Grid, inverse: bool, device, dtype) -> torch.Tensor:
    """The grid's (D+1)x(D+1) index->physical matrix (or its inverse) as a tensor."""
    matrix = grid.physical_to_index() if inverse else grid.index_to_physical()
    with torch.inference_mode(False):
        return torch.as_tensor(matrix, device=device, dtype=torch.float64).to(dtype)


@lru_cache(maxsize=256)
def _normalising(grid: Grid, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear part [D, D] (transposed) and offset [D] mapping physical points to grid_sample's coordinates
    of `grid`: 2 * index / (size - 1) - 1 with index = M p + t."""
    d = grid.dim
    matrix = grid.physical_to_index()
    scale = 2.0 / np.maximum(np.asarray(grid.size, dtype=np.float64) - 1, 1)
    with torch.inference_mode(False):
        return (torch.as_tensor((scale[:, None] * matrix[:d, :d]).T, device=device).to(dtype),
                torch.as_tensor(scale * matrix[:d, d] - 1.0, device=device).to(dtype))


def strided_grid(grid: Grid, step: int) -> Grid:
    """The voxels of `grid` at every `step`-th index along each axis, as a grid of their own."""
    return replace(grid, size=tuple(-(-n // step) for n in grid.size), spacing=tuple(s * step for s in grid.spacing))


def strided(image: Image, step: int) -> Image:
    """`image` at every `step`-th voxel along each axis (no smoothing: a constant background stays exact)."""
    array = np.ascontiguousarray(image.array[(slice(None, None, step),) * image.dim])
    return Image(array, strided_grid(image.grid, step), image.path)


def index_points(grid: Grid, device=None, dtype=torch.float32) -> torch.Tensor:
    """Continuous indices of every voxel, [1, *shape, D] in (x, y, z) order."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in grid.shape]
    mesh = torch.meshgrid(*axes, indexing="ij")  # (z, y, x)
    return torch.stack(mesh[::-1], dim=-1).unsqueeze(0)


def physical_points(grid: Grid, device=None, dtype=torch.float32) -> torch.Tensor:
    """Physical LPS position of every voxel centre, [1, *shape, D]."""
    matrix = _matrix(grid, False, device, dtype)
    d = grid.dim
    return index_points(grid, device, dtype) @ matrix[:d, :d].T + matrix[:d, d]


def to_index(points: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Physical points [B, *spatial, D] -> continuous voxel indices of `grid`, (x, y, z) order."""
    d = grid.dim
    matrix = _matrix(grid, True, points.device, points.dtype)
    return points @ matrix[:d, :d].T + matrix[:d, d]


def to_sampling_grid(points: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Physical points [B, *spatial, D] -> normalised coordinates of `grid` for grid_sample."""
    linear, offset = _normalising(grid, points.device, points.dtype)
    return points @ linear + offset


# Below this many sampled points one grid_sample call is cheaper than splitting it.
CHUNK_MIN_POINTS = 1 << 15


def _chunks(image: torch.Tensor, sampling_grid: torch.Tensor) -> int:
    """How many pieces to cut a grid_sample into: torch's CPU kernel runs one thread per batch entry."""
    if image.device.type != "cpu" or image.shape[0] != 1 or sampling_grid.shape[1] < 2:
        return 1
    points = math.prod(sampling_grid.shape[1:-1])
    return max(1, min(torch.get_num_threads(), sampling_grid.shape[1], points // CHUNK_MIN_POINTS))


def sample(image: torch.Tensor, sampling_grid: torch.Tensor, mode: str = "bilinear",
           padding_mode: str = "border") -> torch.Tensor:
    """Samples image [B, C, *spatial] at normalised coordinates [B, *out_spatial, D].

    On the CPU one image's grid is cut along its first axis into one piece per thread, sampled as a
    batch (the image expanded, not copied): the same numbers, up to twice as fast on two cores.
    """
    if sampling_grid.shape[0] != image.shape[0]:
        sampling_grid = sampling_grid.expand(image.shape[0], *sampling_grid.shape[1:])
    sampling_grid = sampling_grid.to(image.dtype)
    pieces = _chunks(image, sampling_grid)
    if pieces == 1:
        return F.grid_sample(image, sampling_grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    rows, rest = sampling_grid.shape[1], sampling_grid.shape[2:]
    size = -(-rows // pieces)
    padded = sampling_grid
    if size * pieces > rows:
        filler = sampling_grid[:, -1:].detach().expand(1, size * pieces - rows, *rest)  # sampled, then dropped
        padded = torch.cat([sampling_grid, filler], 1)
    out = F.grid_sample(image.expand(pieces, *image.shape[1:]), padded.reshape(pieces, size, *rest), mode=mode,
                        padding_mode=padding_mode, align_corners=True)
    out = out.transpose(0, 1).reshape(1, image.shape[1], size * pieces, *out.shape[3:])
    return out[:, :, :rows]


def resample_to(image: torch.Tensor, source: Grid, target: Grid, mode: str = "bilinear",
                padding_mode: str = "border") -> torch.Tensor:
    """Resamples image [B, C, *source.shape] onto `target` through physical space (identity mapping)."""
    points = physical_points(target, image.device, image.dtype)
    return sample(image, to_sampling_grid(points, source), mode, padding_mode)


def gaussian_kernel1d(sigma: float, device=None, dtype=torch.float32, truncate: float = 3.0) -> torch.Tensor:
    radius = max(int(truncate * sigma + 0.5), 1)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _band_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """[size, size] matrix M with (M @ v) = the zero-padded 'same' convolution of v with `kernel`; built once
    per kernel, size and type for a CPU kernel (the cache key reads the kernel's values, which on a GPU would
    wait for the device at every filter), and not kept for a kernel that is itself being optimised."""
    if kernel.requires_grad or kernel.device.type != "cpu":
        return _build_band_matrix(kernel, size)
    return _cached_band_matrix(tuple(kernel.tolist()), size, kernel.dtype)


@lru_cache(maxsize=256)
def _cached_band_matrix(values: tuple[float, ...], size: int, dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        return _build_band_matrix(torch.tensor(values, dtype=dtype), size)


def _build_band_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    radius = kernel.numel() // 2
    offsets = torch.arange(size, device=kernel.device)[None, :] - torch.arange(size, device=kernel.device)[:, None]
    inside = offsets.abs() <= radius
    return torch.where(inside, kernel[(offsets + radius).clamp(0, kernel.numel() - 1)], kernel.new_zeros(()))


def separable_apply(image: torch.Tensor, matrices: list[Optional[torch.Tensor]]) -> torch.Tensor:
    """Applies one matrix per spatial axis ((z,) y, x order; None skips an axis) to [B, C, *spatial].

    Along an axis, out = M @ values with M [out, in]: a convolution (banded M) or a resampling. One
    matrix product per axis is far faster on CPUs than a depthwise convolution or F.interpolate,
    forward and backward, and it is differentiable and device-agnostic. The tensor is viewed as
    [before, axis, after] so that no axis is ever moved: no copies, forward or backward (2-3x faster
    than moving each axis last).
    """
    out = image
    for axis, matrix in enumerate(matrices):
        if matrix is None:
            continue
        dim = 2 + axis
        shape = list(out.shape)
        before, after = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
        matrix = matrix.to(out.dtype)
        if after == 1:
            flat = out.reshape(before, shape[dim]) @ matrix.T
        else:
            flat = matrix @ out.reshape(before, shape[dim], after)
        shape[dim] = matrix.shape[0]
        out = flat.reshape(shape)
    return out


def separable_filter(image: torch.Tensor, kernels: list[torch.Tensor]) -> torch.Tensor:
    """Applies one 1D kernel per spatial axis ((z,) y, x order) to [B, C, *spatial], zero padding."""
    out = separable_apply(image, [None if kernel.numel() == 1 else
                                  _band_matrix(kernel.to(image.dtype), image.shape[2 + axis])
                                  for axis, kernel in enumerate(kernels)])
    for kernel in kernels:
        if kernel.numel() == 1:
            out = out * kernel.to(out.dtype)
    return out


def linear_resize_matrix(size_in: int, size_out: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[size_out, size_in] linear interpolation matrix, corners aligned (as align_corners=True)."""
    position = torch.linspace(0.0, size_in - 1.0, size_out, device=device, dtype=torch.float64)
    low = position.floor().clamp(max=max(size_in - 2, 0)).long()
    weight = position - low
    matrix = torch.zeros(size_out, size_in, device=device, dtype=torch.float64)
    rows = torch.arange(size_out, device=device)
    matrix[rows, low] = 1.0 - weight
    if size_in > 1:
        matrix[rows, low + 1] += weight
    return matrix.to(dtype)


def gaussian_smooth(image: torch.Tensor, sigma_voxels: float | list[float]) -> torch.Tensor:
    """Gaussian smoothing of [B, C, *spatial]; sigma per axis in voxels ((z,) y, x order), 0 skips an axis.

    Border voxels are renormalised by the smoothed ones-image so the edges do not darken.
    """
    d = image.dim() - 2
    sigmas = [sigma_voxels] * d if isinstance(sigma_voxels, (int, float)) else list(sigma_voxels)
    kernels = [gaussian_kernel1d(s, image.device, image.dtype) if s > 0
               else torch.ones(1, device=image.device, dtype=image.dtype) for s in sigmas]
    ones = torch.ones(1, 1, *image.shape[2:], device=image.device, dtype=image.dtype)
    return separable_filter(image, kernels) / separable_filter(ones, kernels)
