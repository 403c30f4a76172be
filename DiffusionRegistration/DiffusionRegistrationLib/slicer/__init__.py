"""Pure MRML/VTK helpers for the Slicer module: no Qt and no running Slicer application needed.

They turn volume nodes into backend images and back, displacement fields and ITK transform files into
grid transform nodes, and build checkerboard volumes. Tested against the MRML library from PyPI
(`slicer-core`), which is the same C++ code Slicer runs.
"""
from importlib import import_module

# name -> submodule; imported on first use, so that the MRML-free parts (options, process_runner) import
# without VTK
_EXPORTS = {
    "checkerboard_array": "checkerboard", "checkerboard_volume": "checkerboard", "LPS_TO_RAS": "geometry",
    "grid_from_ijk_to_ras": "geometry", "ijk_to_ras_from_grid": "geometry", "load_scene": "scene",
    "save_scene": "scene", "displacement_from_grid_transform": "transforms",
    "grid_transform_from_displacement": "transforms", "load_transform": "transforms",
    "set_registration_references": "transforms", "image_from_volume_node": "volumes",
    "volume_node_from_image": "volumes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
