"""Checkerboard preview: squares alternating between the fixed and the registered moving volume."""
from __future__ import annotations

from ..errors import RegistrationError
from ..core.image import Image
from ..io.pictures import checkerboard_array
from .volumes import image_from_volume_node, volume_node_from_image


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
