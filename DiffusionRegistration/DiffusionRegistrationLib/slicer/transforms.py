"""Displacement fields and ITK transform files <-> vtkMRMLGridTransformNode.

Direction convention, checked with the MRML library (Testing/test_mrml.py): ITK transform files hold
resampling transforms, and Slicer reads them into a transform node's *transform from parent*. For a
registration result that maps fixed points to moving points (x_fixed -> x_moving, the backend's
transform.h5), the node's "from parent" transform is therefore that fixed->moving mapping (in RAS),
and its "to parent" transform (the inverse, computed by VTK on demand) maps moving to fixed. Setting
the node as the parent transform of the moving volume makes Slicer sample the moving volume at
FromParent(x) for every world point x, which overlays it on the fixed volume. So a field is always
stored with SetAndObserveTransformFromParent here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

from ..errors import RegistrationError
from ..core.image import Grid
from .geometry import LPS_TO_RAS, grid_from_ijk_to_ras, ijk_to_ras_from_grid

FIXED_ROLE = "Fixed"
MOVING_ROLE = "Moving"


def _oriented_grid_transform(displacement: np.ndarray, grid: Grid):
    """A vtkOrientedGridTransform whose displacements (RAS) equal the LPS field on `grid`."""
    from slicer import vtkOrientedGridTransform

    if tuple(displacement.shape) != grid.shape + (grid.dim,):
        raise ValueError(f"displacement shape {displacement.shape} does not match grid {grid.shape}+({grid.dim},)")
    field = np.zeros(grid.shape + (3,), dtype=np.float64)
    field[..., : grid.dim] = displacement
    if grid.dim == 2:
        field = field[None]
    field = field @ LPS_TO_RAS.T
    matrix = ijk_to_ras_from_grid(grid)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    direction = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            direction.SetElement(row, column, matrix[row, column] / spacing[column])
    data = vtk.vtkImageData()
    data.SetDimensions(*reversed(field.shape[:3]))
    data.SetOrigin(*matrix[:3, 3])
    data.SetSpacing(*spacing)
    vectors = numpy_support.numpy_to_vtk(np.ascontiguousarray(field).reshape(-1, 3), deep=True)
    vectors.SetNumberOfComponents(3)
    data.GetPointData().SetScalars(vectors)
    transform = vtkOrientedGridTransform()
    transform.SetDisplacementGridData(data)
    transform.SetGridDirectionMatrix(direction)
    transform.SetInterpolationModeToLinear()
    return transform


def grid_transform_from_displacement(displacement: np.ndarray, grid: Grid, scene=None, name: str = "Transform",
                                     node=None):
    """Stores a fixed->moving displacement field (LPS mm, [*grid.shape, D]) in a grid transform node.

    Fills `node`, or a new vtkMRMLGridTransformNode added to `scene`. 2D fields become one-slice grids
    with zero displacement along the third axis.
    """
    if node is None:
        if scene is None:
            raise ValueError("give a node to fill or a scene to add a new node to")
        node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(_oriented_grid_transform(displacement, grid))
    return node


def displacement_from_grid_transform(node) -> tuple[np.ndarray, Grid]:
    """The node's fixed->moving field as an LPS displacement [*shape, 3] on its 3D grid."""
    transform = node.GetTransformFromParentAs("vtkOrientedGridTransform")
    if transform is None:
        raise RegistrationError(f"transform '{node.GetName()}': holds no displacement grid from parent.")
    data = transform.GetDisplacementGrid()
    matrix = np.eye(4)
    direction = transform.GetGridDirectionMatrix()
    spacing = np.asarray(data.GetSpacing())
    for row in range(3):
        for column in range(3):
            matrix[row, column] = (direction.GetElement(row, column) if direction else float(row == column)) \
                * spacing[column]
    matrix[:3, 3] = data.GetOrigin()
    size = data.GetDimensions()
    ras = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(tuple(reversed(size)) + (3,))
    scale, shift = transform.GetDisplacementScale(), transform.GetDisplacementShift()
    lps = (ras.astype(np.float64) * scale + shift) @ LPS_TO_RAS.T
    return lps.astype(np.float32), grid_from_ijk_to_ras(matrix, size)


def matrix_from_world(transform_node) -> np.ndarray:
    """The 4x4 RAS matrix from world to the frame under `transform_node` (its linear chain of parents)."""
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformFromWorld(matrix)
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def end_in_frame(node, world_to_frame: np.ndarray) -> None:
    """Makes the node's fixed->moving field end in another frame: x -> world_to_frame(x + d(x)).

    A moving volume registered as seen through linear parent transforms (world coordinates) gets a field
    that ends in world coordinates; composed with the parents' world-to-volume matrix it ends in the
    volume's own frame, so the node alone, as the volume's parent, shows the volume where they did.
    """
    displacement, grid = displacement_from_grid_transform(node)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(grid.size)], indexing="ij"), -1)[..., ::-1]
    points = index @ grid.index_to_physical()[:3, :3].T + grid.index_to_physical()[:3, 3]
    mapped = points + displacement
    frame = LPS_TO_RAS @ world_to_frame[:3, :3] @ LPS_TO_RAS  # the same matrix in LPS coordinates
    shift = LPS_TO_RAS @ world_to_frame[:3, 3]
    grid_transform_from_displacement((mapped @ frame.T + shift - points).astype(np.float32), grid, node=node)


def load_transform(path: str | os.PathLike, scene, name: str = "Transform", node=None):
    """Loads an ITK transform file (the backend's transform.h5) into a grid transform node.

    Slicer's own reader does the work (2D fields from one-slice volumes included: it reads them as
    one-slice grids). Slicer's reader interpolates the grid cubically; the field is switched to linear
    interpolation, as ITK, SimpleITK and the backend use, so Slicer shows exactly the backend's mapping.
    The node keeps its vtkMRMLTransformStorageNode, so saving the scene writes it as .h5 again.
    """
    path = Path(path)
    if not path.is_file():
        raise RegistrationError(f"transform {path}: no such file. The registration produced no transform.")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    storage = node.GetStorageNode()
    if storage is None:
        storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RegistrationError(f"transform {path}: Slicer could not read it as an ITK transform.")
    grid = node.GetTransformFromParentAs("vtkOrientedGridTransform")
    if grid is not None:
        grid.SetInterpolationModeToLinear()
    return node


def set_registration_references(transform_node, fixed, moving) -> None:
    """Records which volumes a registration transform relates (node references 'Fixed' and 'Moving')."""
    transform_node.SetNodeReferenceID(FIXED_ROLE, fixed.GetID() if fixed is not None else None)
    transform_node.SetNodeReferenceID(MOVING_ROLE, moving.GetID() if moving is not None else None)
