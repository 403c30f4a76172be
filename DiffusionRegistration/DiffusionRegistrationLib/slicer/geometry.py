"""Geometry conversions between the backend's ITK convention (LPS) and Slicer's (RAS).

Slicer keeps volumes in RAS and ITK in LPS; the two differ by RAS = diag(-1, -1, 1) @ LPS. A volume
node's IJK-to-RAS matrix is therefore diag(-1, -1, 1, 1) @ the grid's index-to-LPS matrix. 2D grids
become one-slice volumes (the third axis along +S, spacing 1 mm) because Slicer volumes are 3D.
"""
from __future__ import annotations

import numpy as np

from ..core.image import Grid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _as_3d(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(direction 3x3, spacing 3, origin 3) in LPS, 2D grids padded with a unit third axis."""
    direction, spacing, origin = np.eye(3), np.ones(3), np.zeros(3)
    d = grid.dim
    direction[:d, :d] = grid.direction_matrix
    spacing[:d] = grid.spacing
    origin[:d] = grid.origin
    return direction, spacing, origin


def ijk_to_ras_from_grid(grid: Grid) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a (2D or 3D) backend grid."""
    direction, spacing, origin = _as_3d(grid)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    matrix[:3, 3] = LPS_TO_RAS @ origin
    return matrix


def grid_from_ijk_to_ras(matrix: np.ndarray, size: tuple[int, int, int]) -> Grid:
    """The 3D LPS grid of a volume of `size` (i, j, k) voxels with the given IJK-to-RAS matrix."""
    lps = LPS_TO_RAS @ np.asarray(matrix, dtype=np.float64)[:3, :4]
    columns = lps[:, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"IJK-to-RAS matrix has a zero column: {np.asarray(matrix).tolist()}")
    direction = columns / spacing
    return Grid(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                tuple(float(o) for o in lps[:, 3]), tuple(float(v) for v in direction.ravel()))
