"""Local normalised cross-correlation in a separable window: the one kernel behind the `lncc` similarity, the
diffusion-feature similarity and the agreement map.

Local moments come from separable convolutions (zero padding). Windows cut by the image border or by a mask
are renormalised by the filtered mask (or ones), so a window uses only the voxels inside both. Per channel,
local NCC = cov / sqrt((var_f + eps) (var_w + eps)): 1 for identical images wherever var >> eps, 0 in flat
regions. The fixed image's moments do not change during an optimisation; `fixed_moments` computes them once.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry.spatial import gaussian_kernel1d, separable_filter


def gaussian_window(sigma: Union[float, Sequence[float]], dim: int, like: Tensor) -> list[Tensor]:
    """1D Gaussian kernels, one per spatial axis ((z,) y, x order), of `sigma` voxels (one value or one per axis)."""
    sigmas = [float(sigma)] * dim if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    return [gaussian_kernel1d(s, like.device, like.dtype) for s in sigmas]


def box_window(radius: int, dim: int, like: Tensor) -> list[Tensor]:
    """1D box kernels of 2 * radius + 1 voxels, one per spatial axis."""
    size = 2 * radius + 1
    return [torch.full((size,), 1.0 / size, device=like.device, dtype=like.dtype)] * dim


def filtered_ones(shape: Sequence[int], kernels: Sequence[Tensor]) -> Tensor:
    """`separable_filter` applied to an image of ones, [1, 1, *shape], built as an outer product of 1D passes."""
    out = None
    for axis, (length, kernel) in enumerate(zip(shape, kernels)):
        ones = torch.ones(1, 1, length, device=kernel.device, dtype=kernel.dtype)
        line = F.conv1d(ones, kernel.reshape(1, 1, -1), padding=kernel.numel() // 2).reshape(-1)
        view = [1] * len(shape)
        view[axis] = length
        line = line.reshape(view)
        out = line if out is None else out * line
    return out.reshape(1, 1, *shape)


class Moments(NamedTuple):
    """The fixed side of local NCC: 1 / window weight, local mean and local variance, [B or 1, C, *spatial]."""

    inverse: Tensor
    mean: Tensor
    variance: Tensor

    def select(self, index: Tensor) -> "Moments":
        """The moments of the batch entries `index` (a window weight shared by the batch stays shared)."""
        inverse = self.inverse if self.inverse.shape[0] == 1 else self.inverse[index]
        return Moments(inverse, self.mean[index], self.variance[index])


def fixed_moments(fixed: Tensor, kernels: Sequence[Tensor], mask: Optional[Tensor] = None) -> Moments:
    """The local moments of [B, C, *spatial] `fixed` in the window `kernels`, inside `mask` [B or 1, 1, ...]."""
    c = fixed.shape[1]
    if mask is None:
        inverse = filtered_ones(fixed.shape[2:], kernels).reciprocal()
        moments = separable_filter(torch.cat([fixed, fixed * fixed], 1), kernels) * inverse
    else:
        filtered = separable_filter(torch.cat([mask.expand(fixed.shape[0], 1, *fixed.shape[2:]), mask * fixed,
                                               mask * fixed * fixed], 1), kernels)
        inverse = filtered[:, :1].clamp_min(1e-6).reciprocal()
        moments = filtered[:, 1:] * inverse
    mean, square = moments[:, :c], moments[:, c:]
    return Moments(inverse, mean, (square - mean * mean).clamp_min(0.0))


def local_ncc(fixed: Tensor, warped: Tensor, kernels: Sequence[Tensor], eps: float, mask: Optional[Tensor] = None,
              moments: Optional[Moments] = None, eps_in_covariance: bool = False) -> Tensor:
    """The local NCC map per channel of [B, C, *spatial] `fixed` and `warped` (`moments`: fixed_moments of
    `fixed` with the same window and mask, to skip recomputing them).

    `eps_in_covariance`: (cov + eps) / sqrt((var_f + eps) (var_w + eps)), the cosine of the centred values
    with one more component sqrt(eps) on both sides: at most 1, and 1 exactly where warped equals fixed (up
    to an offset), so an image registered to itself stays put; flat regions of both score 1. Without it,
    raising the warped image's local variance pays wherever the variance is near eps (smooth images), and
    an image registered to itself moved (2.7 mm on smooth 3D blobs)."""
    c = fixed.shape[1]
    inverse, mean_f, var_f = moments if moments is not None else fixed_moments(fixed, kernels, mask)
    weighted = warped if mask is None else warped * mask
    filtered = separable_filter(torch.cat([weighted, weighted * warped, weighted * fixed], 1), kernels) * inverse
    mean_w, square_w, cross = filtered.split(c, 1)  # one backward for the three (slices: three zero-filled copies)
    var_w = (square_w - mean_w * mean_w).clamp_min(0.0)
    cov = cross - mean_f * mean_w
    return (cov + eps if eps_in_covariance else cov) * torch.rsqrt((var_f + eps) * (var_w + eps))
