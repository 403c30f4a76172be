"""Small 3D test volumes: three Gaussian blobs on a 24x24x20 grid of 3 mm, moved by a known number of voxels."""
from __future__ import annotations

import numpy as np

from DiffusionRegistrationLib.core.image import Grid

GRID = Grid((24, 24, 20), (3.0, 3.0, 3.0), (-36.0, -36.0, -30.0), tuple(np.eye(3).ravel()))


def blobs(shift_voxels=(0.0, 0.0, 0.0), grid: Grid = GRID) -> np.ndarray:
    """Three Gaussian blobs, moved by `shift_voxels` (x, y, z) voxels."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in grid.shape], indexing="ij")
    dx, dy, dz = shift_voxels
    value = np.zeros(grid.shape, np.float32)
    for cx, cy, cz, r in ((8, 10, 7, 3), (15, 13, 11, 4), (12, 17, 9, 2.5)):
        value += np.exp(-((x - cx - dx) ** 2 + (y - cy - dy) ** 2 + (z - cz - dz) ** 2) / (2 * r * r))
    return 100 * value
