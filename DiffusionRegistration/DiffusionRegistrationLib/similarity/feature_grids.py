"""Feature-map coordinates for the diffusion-feature similarity: which input pixels a feature pixel covers,
sampling grids moved to feature pixel centres, and slices of volumes (2D slices; sizes in (h, w) order)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


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


def to_feature_coords(g: torch.Tensor, image_size: int, feature_size: int, stride: int,
                       offset: float = None) -> torch.Tensor:
    """Normalised image coordinates (align_corners) -> normalised coordinates of a feature axis whose
    pixel j has its centre at image index j * stride + offset (offset default (stride - 1) / 2)."""
    offset = (stride - 1) / 2 if offset is None else offset
    index = (g + 1) * (max(image_size - 1, 1) / 2)
    feature_index = (index - offset) / stride
    return 2 * feature_index / max(feature_size - 1, 1) - 1


def slice_positions(length: int, slice_stride: int) -> torch.Tensor:
    """Every slice_stride-th index, centred in the volume."""
    offset = ((length - 1) % slice_stride) // 2
    return torch.arange(offset, length, slice_stride)


def slices(volume: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """volume [B, C, D, H, W], spatial axis 0..2, indices -> 2D slices [B * k, C, a, b] (batch-major)."""
    picked = volume.index_select(2 + axis, index.to(volume.device))
    moved = picked.movedim(2 + axis, 1)  # [B, k, C, a, b]
    return moved.reshape(-1, *moved.shape[2:])


def moving_feature_coords_2d(grid, moving_size, moving_feature_size, stride, fixed_feature_size):
    at_centres = grid_at_feature_centres(grid, stride, tuple(fixed_feature_size))
    gx = to_feature_coords(at_centres[..., 0], moving_size[1], moving_feature_size[1], stride)
    gy = to_feature_coords(at_centres[..., 1], moving_size[0], moving_feature_size[0], stride)
    return torch.stack([gx, gy], dim=-1)


def plane_weights(mask: Optional[torch.Tensor], fixed: torch.Tensor, axis: int, index: torch.Tensor,
                   stride: int) -> torch.Tensor:
    """Feature-pixel weights of the fixed slices `index` along `axis` (mask [B, 1, D, H, W] or None)."""
    plane_shape = tuple(s for i, s in enumerate(fixed.shape[2:]) if i != axis)
    plane_mask = None if mask is None else slices(mask, axis, index)
    return feature_weights(plane_mask, plane_shape, stride, fixed)
