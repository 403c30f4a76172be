"""The outcome of a registration: the fixed->moving mapping on the fixed grid, and what it does."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ..geometry.metrics import field_mapping
from ..geometry.spatial import physical_points, sample, to_index, to_sampling_grid
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
        """Resamples `image` (on the moving grid or any grid in moving space) onto the fixed grid.

        "nearest" (label maps) copies each voxel's value in the image's own type: no value is rounded through
        float32, which holds integers exactly only up to 2^24. Points outside the image get 0."""
        if interpolation == "nearest":
            return Image(self._nearest(image), self.fixed_grid, None)
        if interpolation != "linear":
            raise ValueError(f"interpolation must be 'linear' or 'nearest', not {interpolation!r}")
        tensor = torch.as_tensor(np.ascontiguousarray(image.array), dtype=torch.float32)[None, None]
        grid = to_sampling_grid(self.points(), image.grid)
        return Image(sample(tensor, grid, mode="bilinear", padding_mode="zeros")[0, 0].numpy(), self.fixed_grid, None)

    def _nearest(self, image: Image) -> np.ndarray:
        """The value of the voxel nearest each mapped point (ties to even, as grid_sample's nearest mode)."""
        index = np.rint(to_index(self.points(), image.grid)[0].numpy()).astype(np.int64)[..., ::-1]  # (z, y, x)
        inside = np.all((index >= 0) & (index < np.array(image.array.shape)), axis=-1)
        out = np.zeros(self.fixed_grid.shape, dtype=image.array.dtype)
        out[inside] = image.array[tuple(index[inside].T)]
        return out
