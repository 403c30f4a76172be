"""The measures of the diffusion-feature similarity, between a fixed and a warped moving feature map
[N, C, h, w], averaged over feature pixels with weights [N or 1, 1, h, w]: "lncc" (the paper's; the shared local
NCC kernel), "cosine" and "l1"."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .local_ncc import Moments, fixed_moments, gaussian_window, local_ncc


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values [N, C, h, w], weights [N, 1, h, w] -> mean over channels, weighted over pixels."""
    weights = weights.expand(values.shape[0], 1, *values.shape[2:])
    total = weights.sum() * values.shape[1]
    return (values * weights).sum() / total.clamp(min=1e-12)


def fixed_statistics(fixed: torch.Tensor, sigma: float) -> Moments:
    """The fixed side of LNCC, which does not change during a level (local_ncc.fixed_moments of the features)."""
    fixed = fixed.float()
    return fixed_moments(fixed, gaussian_window(sigma, fixed.dim() - 2, fixed))


def lncc_loss(fixed: torch.Tensor, moving: torch.Tensor, weights: torch.Tensor, sigma: float,
              eps: float = 1e-6, fixed_stats: Optional[Moments] = None) -> torch.Tensor:
    """-(weighted mean of the local NCC per channel), Gaussian window of `sigma` feature pixels (the shared
    kernel, similarity.local_ncc); `fixed_stats` (from fixed_statistics) saves recomputing the fixed side."""
    fixed, moving = fixed.float(), moving.float()
    local = local_ncc(fixed, moving, gaussian_window(sigma, fixed.dim() - 2, fixed), eps, moments=fixed_stats)
    return -_weighted_mean(local, weights)


def l1_loss(fixed: torch.Tensor, moving: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return _weighted_mean((fixed.float() - moving.float()).abs(), weights)


def cosine_loss(fixed: torch.Tensor, moving: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(fixed.float(), moving.float(), dim=1, eps=1e-8).unsqueeze(1)
    return -_weighted_mean(cos, weights)
