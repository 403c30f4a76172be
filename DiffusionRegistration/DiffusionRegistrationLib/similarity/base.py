"""The similarity interface every measure implements (similarity.registry builds them by name).

Images are tensors [B, 1, *spatial] scaled to [0, 1]; masks are [B, 1, *spatial] weights (0 or 1) in
fixed space. A similarity returns a scalar loss: lower means better aligned.

The engine calls `prepare` once per resolution level, then `mapped_loss` at every step with the
sampling grid that maps fixed voxels into the moving image. Intensity measures only implement
`forward(fixed, warped, mask)`; measures that must see the moving image itself (feature similarities
that warp cached feature maps, or re-extract features every step) override `mapped_loss`.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..geometry.spatial import sample
from ..core.image import Grid


class Similarity(torch.nn.Module):
    """Base class: a loss between the fixed image and the moving image mapped into fixed space.

    `stochastic`: the measure draws random samples at every call, so losses of different steps are not
    comparable (the engine then keeps the last parameters rather than those of the lowest loss)."""

    stochastic = False

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Restarts the measure's own random generator from its seed offset by a run's `seed`.

        Measures that draw samples override this; the engine calls it so that a run's randomness comes
        from `config.seed` through local generators, never from torch's global one.
        """

    def prepare(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_grid: Grid, moving_grid: Grid) -> None:
        """Called once per resolution level before optimisation; caches what does not change."""

    def mapped_loss(self, fixed: torch.Tensor, moving: torch.Tensor, sampling_grid: torch.Tensor,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss of the moving image sampled at `sampling_grid` (normalised moving coordinates)."""
        return self(fixed, sample(moving, sampling_grid), mask)
