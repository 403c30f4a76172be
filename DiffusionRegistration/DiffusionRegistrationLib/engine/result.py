"""The outcome of a registration: the fixed->moving mapping on the fixed grid, and what it does."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ..geometry.metrics import field_mapping
from ..geometry.spatial import physical_points, sample, to_sampling_grid
from ..core.image import Grid, Image


@dataclass
class Result:
    """A fixed->moving mapping x -> x + displacement(x), sampled on the fixed grid.

    `displacement` is [*fixed_grid.shape, D] float32 in LPS mm, (x, y, z) components; it already
    includes the affine part, whose homogeneous matrix is kept separately in `affine` (or None).
    `inverse` (moving->fixed, on the moving grid) is present when it was asked for.
    """

    fixed_grid: Grid
    moving_grid: Grid
    displacement: np.ndarray
    affine: Optional[np.ndarray] = None
    warped: Optional[Image] = None
    inverse: Optional[np.ndarray] = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the quality guard's findings (engine.quality)
    foreground: dict[str, str] = field(default_factory=dict)  # what each image is, and the masks decided from it

    @classmethod
    def identity(cls, fixed_grid: Grid, moving_grid: Grid) -> "Result":
        """The mapping x -> x: resamples a moving-space image onto the fixed grid as it lies (no registration)."""
        return cls(fixed_grid, moving_grid, np.zeros((*fixed_grid.shape, fixed_grid.dim), dtype=np.float32))

    def points(self, device=None) -> torch.Tensor:
        """Mapped physical points of every fixed voxel, [1, *shape, D]."""
        base = physical_points(self.fixed_grid, device)
        return base + torch.as_tensor(self.displacement, device=device)[None]

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Maps physical fixed points [N, D] to moving space (linear interpolation of the field)."""
        return field_mapping(self.displacement, self.fixed_grid)(points)

    def warp(self, image: Image, interpolation: str = "linear") -> Image:
        """Resamples `image` (on the moving grid or any grid in moving space) onto the fixed grid."""
        mode = {"linear": "bilinear", "nearest": "nearest"}[interpolation]
        tensor = torch.as_tensor(np.ascontiguousarray(image.array), dtype=torch.float32)[None, None]
        grid = to_sampling_grid(self.points(), image.grid)
        out = sample(tensor, grid, mode=mode, padding_mode="zeros")[0, 0].numpy()
        if interpolation == "nearest":
            out = out.astype(image.array.dtype)
        return Image(out, self.fixed_grid, None)
