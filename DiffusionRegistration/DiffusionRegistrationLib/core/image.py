"""The core data types: a regular grid in physical space and a scalar image on it. Every layer uses them;
io/ reads and writes them.

Conventions (ITK's): physical space is LPS in millimetres; `Grid.size`, `spacing` and `origin` are in
(x, y, z) order; `direction` has the axis directions as columns; arrays are numpy/torch order
(z, y, x). An index (i, j, k) maps to the physical point origin + direction @ (spacing * index).
SimpleITK is imported only by the conversions that need it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    """A regular sampling grid in physical space (2D or 3D)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major D x D, as SimpleITK stores it

    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape, (z, y, x) order."""
        return tuple(reversed(self.size))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(self.dim, self.dim)

    def index_to_physical(self) -> np.ndarray:
        """Homogeneous (D+1)x(D+1) matrix from continuous index (x, y, z order) to physical LPS mm."""
        matrix = np.eye(self.dim + 1)
        matrix[: self.dim, : self.dim] = self.direction_matrix @ np.diag(self.spacing)
        matrix[: self.dim, self.dim] = self.origin
        return matrix

    def physical_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_physical())

    def center(self) -> np.ndarray:
        """Physical position of the grid's centre."""
        index = (np.asarray(self.size, dtype=np.float64) - 1) / 2
        return self.index_to_physical()[: self.dim] @ np.append(index, 1.0)

    def scaled(self, factor: float) -> "Grid":
        """A coarser (factor > 1) grid covering the same physical extent, voxel centres re-aligned."""
        size = tuple(max(int(round(s / factor)), 2) for s in self.size)
        spacing = tuple(sp * (s - 1) / (n - 1) for sp, s, n in zip(self.spacing, self.size, size))
        return replace(self, size=size, spacing=spacing)

    @classmethod
    def from_sitk(cls, image: "sitk.Image") -> "Grid":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(image.GetSpacing()),
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply_to(self, image: "sitk.Image") -> "sitk.Image":
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def same_as(self, other: "Grid", tolerance: float = 1e-4) -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, atol=tolerance)
                and np.allclose(self.origin, other.origin, atol=tolerance)
                and np.allclose(self.direction, other.direction, atol=tolerance))


@dataclass
class Image:
    """A scalar image: array in (z, y, x) order plus its grid."""

    array: np.ndarray
    grid: Grid
    path: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != self.grid.shape:
            raise ValueError(f"array shape {self.array.shape} does not match grid shape {self.grid.shape}")

    @property
    def dim(self) -> int:
        return self.grid.dim

    @property
    def name(self) -> str:
        return self.path or "<in-memory image>"

    def with_array(self, array: np.ndarray) -> "Image":
        return Image(array, self.grid, self.path)

    def to_sitk(self) -> "sitk.Image":
        import SimpleITK as sitk

        return self.grid.apply_to(sitk.GetImageFromArray(self.array))

    @classmethod
    def from_sitk(cls, image: "sitk.Image", path: Optional[str] = None) -> "Image":
        import SimpleITK as sitk

        return cls(sitk.GetArrayFromImage(image), Grid.from_sitk(image), path)
