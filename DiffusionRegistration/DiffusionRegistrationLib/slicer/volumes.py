"""Scalar volume nodes <-> backend images (arrays in (z, y, x) order plus an LPS grid)."""
from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

from ..errors import RegistrationError
from ..core.image import Grid, Image
from .geometry import grid_from_ijk_to_ras, ijk_to_ras_from_grid


def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def _numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_grid(node) -> Grid:
    """The node's own voxel grid (LPS), without its parent transforms and without copying voxels."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    data = node.GetImageData()
    return grid_from_ijk_to_ras(_numpy_matrix(ijk_to_ras), data.GetDimensions() if data is not None else (0, 0, 0))


def image_from_volume_node(node, role: str = "volume", include_parent_transform: bool = True) -> Image:
    """The node's voxels and geometry as a 3D backend Image (LPS), by default in world coordinates.

    With `include_parent_transform`, a linear parent transform is folded into the grid, and a volume under
    a non-linear transform (which no grid can describe) raises RegistrationError asking the user to harden
    it first. Without it, the node's own geometry is returned.
    """
    data = node.GetImageData() if node is not None else None
    if data is None or data.GetPointData().GetScalars() is None:
        raise RegistrationError(f"{role} '{node.GetName() if node else None}': the volume holds no voxels. "
                                "Load or select a volume with image data.")
    if data.GetNumberOfScalarComponents() != 1:
        raise RegistrationError(f"{role} '{node.GetName()}': has {data.GetNumberOfScalarComponents()} components "
                                "per voxel; registration needs a scalar volume (convert vector/RGB volumes to "
                                "scalar with the Vector to Scalar Volume module).")
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = _numpy_matrix(ijk_to_ras)
    parent = node.GetParentTransformNode()
    if parent is not None and include_parent_transform:
        if not parent.IsTransformToWorldLinear():
            raise RegistrationError(f"{role} '{node.GetName()}': lies under the non-linear transform "
                                    f"'{parent.GetName()}'. Harden the transform (Data module, right-click, "
                                    "Harden transform) or remove it before registering.")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = _numpy_matrix(to_world) @ matrix
    size = data.GetDimensions()
    array = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(tuple(reversed(size))).copy()
    return Image(array, grid_from_ijk_to_ras(matrix, size), None)


def _vtk_image(array: np.ndarray) -> vtk.vtkImageData:
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    array = np.ascontiguousarray(array)
    data = vtk.vtkImageData()
    data.SetDimensions(*reversed(array.shape))
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    data.GetPointData().SetScalars(scalars)
    return data


def volume_node_from_image(image: Image, scene=None, name: str = "Volume", node=None,
                           class_name: str = "vtkMRMLScalarVolumeNode"):
    """Fills `node` (or a new node of `class_name` added to `scene`) with the image's voxels and geometry.

    2D images become one-slice volumes. The node gets default display nodes when it is in a scene.
    """
    if node is None:
        if scene is None:
            raise ValueError("give a node to fill or a scene to add a new node to")
        node = scene.AddNewNodeByClass(class_name, name)
    array = image.array if image.dim == 3 else image.array[None]
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras_from_grid(image.grid)))
    node.SetAndObserveImageData(_vtk_image(array))
    if node.GetScene() is not None and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node
