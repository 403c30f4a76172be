"""Checkerboard preview: squares alternating between the fixed and the registered moving volume."""
from __future__ import annotations

import numpy as np

from ..errors import RegistrationError
from ..images import Grid, Image
from .volumes import image_from_volume_node, volume_node_from_image


def checkerboard_array(first: np.ndarray, second: np.ndarray, grid: Grid, square_mm: float) -> np.ndarray:
    """Voxels of `first` where the square parity is even and of `second` where it is odd.

    Squares are `square_mm` wide along each grid axis, counted from voxel 0 (index * spacing), so they
    stay aligned with the volume even when it is oblique.
    """
    if first.shape != second.shape or first.shape != grid.shape:
        raise RegistrationError(f"checkerboard: volumes of shape {first.shape} and {second.shape} differ; "
                                "both must lie on the fixed volume's grid.")
    if not square_mm > 0:
        raise RegistrationError(f"checkerboard square size {square_mm} mm: must be positive (e.g. 10 mm).")
    parity = np.zeros(grid.shape, dtype=np.int64)
    for axis, spacing in enumerate(reversed(grid.spacing)):  # array axes are (z, y, x)
        index = np.floor(np.arange(grid.shape[axis]) * spacing / square_mm + 1e-9).astype(np.int64)
        shape = [1] * len(grid.shape)
        shape[axis] = -1
        parity = parity + index.reshape(shape)
    return np.where(parity % 2 == 0, first, second.astype(first.dtype, copy=False))


def checkerboard_volume(fixed, warped, square_mm: float, scene=None, name: str = "Checkerboard", node=None):
    """A volume node alternating squares of the fixed volume node and the warped moving volume.

    `warped` is a volume node or a backend Image on the fixed volume's grid (the backend's warped output).
    """
    fixed_image = image_from_volume_node(fixed, "fixed volume")
    warped_image = warped if isinstance(warped, Image) else image_from_volume_node(warped, "warped volume")
    if warped_image.dim == 2:
        warped_image = Image(warped_image.array[None], fixed_image.grid)
    if not warped_image.grid.same_as(fixed_image.grid, tolerance=1e-3):
        raise RegistrationError("checkerboard: the warped volume does not lie on the fixed volume's grid "
                                f"({warped_image.grid.size} vs {fixed_image.grid.size} voxels or another "
                                "origin/spacing/direction). Resample it onto the fixed volume first.")
    array = checkerboard_array(fixed_image.array, warped_image.array.reshape(fixed_image.array.shape),
                               fixed_image.grid, square_mm)
    return volume_node_from_image(Image(array, fixed_image.grid), scene=scene, name=name, node=node)
