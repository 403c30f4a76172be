"""Pure MRML/VTK helpers for the Slicer module: no Qt and no running Slicer application needed.

They turn volume nodes into backend images and back, displacement fields and ITK transform files into
grid transform nodes, and build checkerboard volumes. Tested against the MRML library from PyPI
(`slicer-core`), which is the same C++ code Slicer runs.
"""
from .checkerboard import checkerboard_array, checkerboard_volume
from .geometry import LPS_TO_RAS, grid_from_ijk_to_ras, ijk_to_ras_from_grid
from .scene import load_scene, save_scene
from .transforms import (displacement_from_grid_transform, grid_transform_from_displacement, load_transform,
                         set_registration_references)
from .volumes import image_from_volume_node, volume_node_from_image

__all__ = [
    "LPS_TO_RAS", "checkerboard_array", "checkerboard_volume", "displacement_from_grid_transform",
    "grid_from_ijk_to_ras", "grid_transform_from_displacement", "ijk_to_ras_from_grid", "image_from_volume_node",
    "load_scene", "load_transform", "save_scene", "set_registration_references", "volume_node_from_image",
]
