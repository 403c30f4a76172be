"""The Slicer module's MRML helpers against the real MRML library (slicer-core from PyPI)."""
from __future__ import annotations

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML library from PyPI) is not installed")

from DiffusionRegistrationLib.core.image import Grid, Image  # noqa: E402
from DiffusionRegistrationLib.slicer import (  # noqa: E402
    checkerboard_array, checkerboard_volume, displacement_from_grid_transform, grid_transform_from_displacement,
    image_from_volume_node, load_scene, load_transform, save_scene, set_registration_references,
    volume_node_from_image)
from DiffusionRegistrationLib.slicer.transforms import FIXED_ROLE, MOVING_ROLE  # noqa: E402

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def oblique_direction() -> np.ndarray:
    """A proper rotation about a non-axis direction (not a flip, not axis-aligned)."""
    a, b = 0.4, -0.25
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def oblique_sitk_image() -> sitk.Image:
    rng = np.random.default_rng(0)
    array = rng.normal(size=(7, 9, 11)).astype(np.float32)  # z, y, x
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.3, 2.5))
    image.SetOrigin((-12.5, 30.0, 7.25))
    image.SetDirection(oblique_direction().ravel().tolist())
    return image


def ras_of_voxel(node, ijk) -> np.ndarray:
    """RAS position of a voxel from the node's own IJK-to-RAS matrix (MRML's arithmetic)."""
    import vtk
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint([*ijk, 1.0])[:3])


def test_sitk_image_to_volume_node_and_back_is_identical():
    reference = oblique_sitk_image()
    scene = slicer.vtkMRMLScene()
    node = volume_node_from_image(Image.from_sitk(reference), scene=scene, name="oblique")
    # every voxel centre where SimpleITK says it is (LPS), seen through MRML's IJK-to-RAS
    for ijk in [(0, 0, 0), (10, 0, 0), (0, 8, 0), (0, 0, 6), (10, 8, 6), (3, 5, 2)]:
        lps = np.array(reference.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(ras_of_voxel(node, ijk), RAS_FROM_LPS @ lps, atol=1e-9)
    np.testing.assert_allclose(node.GetSpacing(), reference.GetSpacing(), rtol=1e-12)
    # node -> image gives back the same voxels and geometry
    back = image_from_volume_node(node).to_sitk()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(back.GetOrigin(), reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), reference.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), reference.GetDirection(), atol=1e-9)


def test_volume_node_to_image_and_back_keeps_node_geometry(tmp_path):
    """The reverse: a node Slicer wrote (NRRD through MRML's storage node) read by SimpleITK."""
    import vtk
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "from_slicer")
    data = vtk.vtkImageData()
    data.SetDimensions(6, 5, 4)
    data.AllocateScalars(vtk.VTK_SHORT, 1)
    values = np.arange(6 * 5 * 4, dtype=np.int16).reshape(4, 5, 6) * 3 - 50
    from vtk.util import numpy_support
    numpy_support.vtk_to_numpy(data.GetPointData().GetScalars())[:] = values.ravel()
    node.SetAndObserveImageData(data)
    node.SetOrigin(4.0, -2.0, 11.0)
    node.SetSpacing(1.5, 0.7, 3.0)
    directions = vtk.vtkMatrix4x4()
    ras_directions = RAS_FROM_LPS @ oblique_direction()
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, ras_directions[r, c])
    node.SetIJKToRASDirectionMatrix(directions)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(tmp_path / "node.nrrd"))
    assert storage.WriteData(node)
    written = sitk.ReadImage(str(tmp_path / "node.nrrd"))

    image = image_from_volume_node(node)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(written))
    assert image.array.dtype == np.int16
    np.testing.assert_allclose(image.grid.origin, written.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.grid.spacing, written.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.grid.direction, written.GetDirection(), atol=1e-6)

    again = volume_node_from_image(image, scene=scene, name="again")
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        np.testing.assert_allclose(ras_of_voxel(again, ijk), ras_of_voxel(node, ijk), atol=1e-9)


def test_volume_under_linear_transform_is_read_in_world_coordinates():
    import vtk
    scene = slicer.vtkMRMLScene()
    reference = oblique_sitk_image()
    node = volume_node_from_image(Image.from_sitk(reference), scene=scene, name="moved")
    to_world = np.eye(4)
    to_world[:3, :3] = oblique_direction().T
    to_world[:3, 3] = (10.0, -4.0, 7.0)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, to_world[r, c])
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rigid")
    linear.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(linear.GetID())
    image = image_from_volume_node(node)
    for ijk in [(0, 0, 0), (10, 8, 6), (4, 2, 5)]:
        world_ras = to_world @ np.append(ras_of_voxel(node, ijk), 1.0)
        lps = np.array(image.to_sitk().TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(RAS_FROM_LPS @ lps, world_ras[:3], atol=1e-9)
    own = image_from_volume_node(node, include_parent_transform=False)
    np.testing.assert_allclose(own.grid.origin, reference.GetOrigin(), atol=1e-9)


def test_volume_under_nonlinear_transform_is_refused():
    scene = slicer.vtkMRMLScene()
    node = volume_node_from_image(Image.from_sitk(oblique_sitk_image()), scene=scene, name="moving")
    grid = Grid((4, 4, 4), (5.0, 5.0, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    transform = grid_transform_from_displacement(np.ones((4, 4, 4, 3), np.float32), grid, scene=scene)
    node.SetAndObserveTransformNodeID(transform.GetID())
    from DiffusionRegistrationLib.errors import RegistrationError
    with pytest.raises(RegistrationError, match="Harden"):
        image_from_volume_node(node, "moving volume")


def analytic_field(grid_image: sitk.Image) -> np.ndarray:
    """A smooth non-linear LPS displacement field (mm) evaluated at every voxel of `grid_image`."""
    size = grid_image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(size)], indexing="ij"), -1)[..., ::-1]
    direction = np.asarray(grid_image.GetDirection()).reshape(3, 3)
    points = (index * np.asarray(grid_image.GetSpacing())) @ direction.T + np.asarray(grid_image.GetOrigin())
    return analytic_displacement(points)


def analytic_displacement(points: np.ndarray) -> np.ndarray:
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([3.0 + 0.05 * y, -2.0 + 0.4 * np.sin(x / 15.0), 1.5 + 0.02 * x - 0.03 * z], -1)


def write_sitk_field(path) -> sitk.DisplacementFieldTransform:
    reference = oblique_sitk_image()
    field = sitk.GetImageFromArray(analytic_field(reference).astype(np.float64), isVector=True)
    field.CopyInformation(reference)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))
    sitk.WriteTransform(transform, str(path))
    return sitk.DisplacementFieldTransform(field)


def interior_lps_points(count: int = 25) -> np.ndarray:
    """Physical points well inside the oblique field's grid."""
    reference = oblique_sitk_image()
    rng = np.random.default_rng(3)
    index = rng.uniform([1.5, 1.5, 1.5], [8.5, 6.5, 4.5], (count, 3))  # (i, j, k) of an 11x9x7 grid
    return np.array([reference.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index])


def test_backend_h5_loads_into_grid_transform_mapping_ras_as_lps(tmp_path):
    transform = write_sitk_field(tmp_path / "transform.h5")
    scene = slicer.vtkMRMLScene()
    node = load_transform(tmp_path / "transform.h5", scene, name="registration")
    assert node.IsA("vtkMRMLGridTransformNode")
    assert node.GetStorageNode() is not None and node.GetStorageNode().IsA("vtkMRMLTransformStorageNode")
    from_parent = node.GetTransformFromParent()
    for lps in interior_lps_points():
        expected_lps = np.array(transform.TransformPoint(lps.tolist()))
        ras = np.array(from_parent.TransformPoint((RAS_FROM_LPS @ lps).tolist()))
        np.testing.assert_allclose(ras, RAS_FROM_LPS @ expected_lps, atol=1e-3)


def test_field_to_grid_transform_node_and_back(tmp_path):
    """Our own writer agrees with Slicer's reader of the ITK file, point by point, and reads back exactly."""
    transform = write_sitk_field(tmp_path / "transform.h5")
    reference = oblique_sitk_image()
    field = analytic_field(reference).astype(np.float32)
    grid = Grid.from_sitk(reference)
    scene = slicer.vtkMRMLScene()
    ours = grid_transform_from_displacement(field, grid, scene=scene, name="ours")
    for lps in interior_lps_points():
        expected = RAS_FROM_LPS @ np.array(transform.TransformPoint(lps.tolist()))
        got = np.array(ours.GetTransformFromParent().TransformPoint((RAS_FROM_LPS @ lps).tolist()))
        np.testing.assert_allclose(got, expected, atol=1e-3)
    back, back_grid = displacement_from_grid_transform(ours)
    np.testing.assert_allclose(back, field, atol=1e-5)
    assert back_grid.same_as(grid, tolerance=1e-6)


def test_grid_transform_on_moving_volume_samples_it_at_the_fixed_to_moving_points():
    """Slicer's own resampling (hardening the transform) shows, at world point x, the moving voxel at x + u(x)."""
    import vtk
    scene = slicer.vtkMRMLScene()
    grid = Grid((24, 20, 16), (2.0, 2.0, 2.0), (-20.0, -18.0, -14.0), tuple(np.eye(3).ravel()))
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in grid.shape], indexing="ij")
    moving_array = (x * 1.0 + y * 10.0 + z * 100.0).astype(np.float32)  # linear in the index: exact interpolation
    moving = volume_node_from_image(Image(moving_array, grid), scene=scene, name="moving")
    original = vtk.vtkMatrix4x4()
    moving.GetRASToIJKMatrix(original)
    ras_to_ijk = np.array([[original.GetElement(r, c) for c in range(4)] for r in range(4)])
    shift_lps = np.array([4.0, -2.0, 2.0])  # fixed -> moving: x_moving = x_fixed + shift
    field = np.broadcast_to(shift_lps, grid.shape + (3,)).astype(np.float32)
    transform = grid_transform_from_displacement(field, grid, scene=scene, name="registration")
    moving.SetAndObserveTransformNodeID(transform.GetID())
    assert slicer.vtkSlicerTransformLogic().hardenTransform(moving)
    hardened = image_from_volume_node(moving)
    for ijk in [(5, 5, 5), (10, 8, 6), (15, 12, 9), (7, 11, 4)]:
        world_ras = ras_of_voxel(moving, ijk)
        source_ras = world_ras + RAS_FROM_LPS @ shift_lps
        i, j, k = (ras_to_ijk @ np.append(source_ras, 1.0))[:3]
        assert hardened.array[ijk[2], ijk[1], ijk[0]] == pytest.approx(i + 10 * j + 100 * k, abs=1e-3)


def test_checkerboard_alternates_at_the_square_size():
    grid = Grid((20, 12, 6), (0.5, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(oblique_direction().ravel()))
    first = np.zeros(grid.shape, np.float32)
    second = np.ones(grid.shape, np.float32)
    board = checkerboard_array(first, second, grid, square_mm=4.0)
    # x: 0.5 mm voxels -> 8 voxels per square; y: 2 mm -> 2 voxels; z: 3 mm -> squares at 0,3 | 6,9 | ...
    for k in range(6):
        for j in range(12):
            for i in range(20):
                parity = (i // 8) + (j // 2) + int(np.floor(k * 3.0 / 4.0))
                assert board[k, j, i] == parity % 2, (i, j, k)

    scene = slicer.vtkMRMLScene()
    fixed = volume_node_from_image(Image(first + 5.0, grid), scene=scene, name="fixed")
    warped = Image(second * 7.0, grid)
    node = checkerboard_volume(fixed, warped, 4.0, scene=scene, name="checker")
    values = image_from_volume_node(node).array
    np.testing.assert_array_equal(values, np.where(board == 0, 5.0, 7.0))
    assert image_from_volume_node(node).grid.same_as(grid, tolerance=1e-9)


def build_registration_scene():
    scene = slicer.vtkMRMLScene()
    reference = oblique_sitk_image()
    grid = Grid.from_sitk(reference)
    fixed = volume_node_from_image(Image.from_sitk(reference), scene=scene, name="fixed")
    moving_array = sitk.GetArrayFromImage(reference)[::-1].copy()
    moving = volume_node_from_image(Image(moving_array, grid), scene=scene, name="moving")
    field = analytic_field(reference).astype(np.float32)
    transform = grid_transform_from_displacement(field, grid, scene=scene, name="registration")
    transform.AddDefaultStorageNode()
    set_registration_references(transform, fixed, moving)
    moving.SetAndObserveTransformNodeID(transform.GetID())
    checkerboard_volume(fixed, Image(moving_array, grid), 5.0, scene=scene, name="checkerboard")
    return scene, field


@pytest.mark.parametrize("suffix", [".mrml", ".mrb"])
def test_scene_saved_and_reloaded_keeps_nodes_references_and_transform(tmp_path, suffix):
    scene, field = build_registration_scene()
    originals = {name: image_from_volume_node(scene.GetFirstNodeByName(name), include_parent_transform=False)
                 for name in ("fixed", "moving", "checkerboard")}
    path = save_scene(scene, tmp_path / f"scene{suffix}")
    assert path.is_file()
    if suffix == ".mrml":
        assert (tmp_path / "registration.h5").is_file()

    loaded = load_scene(path)
    nodes = {name: loaded.GetFirstNodeByName(name) for name in ("fixed", "moving", "checkerboard", "registration")}
    assert all(node is not None for node in nodes.values()), nodes
    for name, image in originals.items():
        again = image_from_volume_node(nodes[name], include_parent_transform=False)
        np.testing.assert_allclose(again.array, image.array, atol=1e-6)
        assert again.grid.same_as(image.grid, tolerance=1e-4)
    transform = nodes["registration"]
    assert transform.IsA("vtkMRMLGridTransformNode")
    assert transform.GetNodeReference(FIXED_ROLE).GetID() == nodes["fixed"].GetID()
    assert transform.GetNodeReference(MOVING_ROLE).GetID() == nodes["moving"].GetID()
    assert nodes["moving"].GetTransformNodeID() == transform.GetID()
    assert transform.GetStorageNode().GetFileName().endswith(".h5")
    back, _ = displacement_from_grid_transform(transform)
    np.testing.assert_allclose(back, field, atol=1e-4)


def test_2d_backend_field_loads_as_a_one_slice_grid_transform(tmp_path):
    """A 2D registration (one-slice volumes) gives a 2D ITK field; Slicer gets it as a one-slice grid."""
    size, spacing, origin = (30, 24), (1.5, 2.0), (-10.0, 5.0)
    angle = 0.3
    direction = (np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle))
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetOrigin(origin)
    reference.SetDirection(direction)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(size)], indexing="ij"), -1)[..., ::-1]
    points = (index * np.asarray(spacing)) @ np.asarray(direction).reshape(2, 2).T + np.asarray(origin)
    field = np.stack([2.0 + 0.05 * points[..., 1], -1.0 + 0.5 * np.sin(points[..., 0] / 10.0)], -1)
    image = sitk.GetImageFromArray(field, isVector=True)
    image.CopyInformation(reference)
    transform = sitk.DisplacementFieldTransform(sitk.Image(image))
    sitk.WriteTransform(sitk.DisplacementFieldTransform(image), str(tmp_path / "transform2d.h5"))

    scene = slicer.vtkMRMLScene()
    node = load_transform(tmp_path / "transform2d.h5", scene, name="registration2d")
    assert node.GetStorageNode() is not None
    rng = np.random.default_rng(5)
    for ij in rng.uniform([1.5, 1.5], [27.5, 21.5], (20, 2)):
        lps = np.array(reference.TransformContinuousIndexToPhysicalPoint(ij.tolist()))
        expected = np.array(transform.TransformPoint(lps.tolist()))
        ras = np.array(node.GetTransformFromParent().TransformPoint([-lps[0], -lps[1], 0.0]))
        np.testing.assert_allclose(ras, [-expected[0], -expected[1], 0.0], atol=1e-3)
