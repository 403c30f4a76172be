"""Metrics against hand-made label maps and analytic displacement fields."""
import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.core.image import Grid
from DiffusionRegistrationLib.geometry.metrics import (dice_per_label, displacement_gradient, field_mapping,
                                                       field_tre, folding, jacobian_determinant, landmark_tre,
                                                       mask_dice, mean_dice)


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"z": (0, 1), "y": (2, 0), "x": (1, 2)}[axis]
    matrix = np.eye(3)
    matrix[i, i] = matrix[j, j] = c
    matrix[i, j], matrix[j, i] = -s, s
    return matrix


def physical_points(grid: Grid) -> np.ndarray:
    """Every voxel's physical point through SimpleITK (independent of the code under test), [*shape, D]."""
    image = grid.apply_to(sitk.Image(list(grid.size), sitk.sitkUInt8))
    indices = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)[..., ::-1]
    flat = [image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx])
            for idx in indices.reshape(-1, grid.dim)]
    return np.asarray(flat).reshape(*grid.shape, grid.dim)


OBLIQUE_3D = Grid((9, 7, 6), (1.5, 0.7, 2.5), (10.0, -20.0, 5.0),
                  tuple((rotation("z", 30) @ rotation("x", -20) @ np.diag([-1, -1, 1])).ravel()))
OBLIQUE_2D = Grid((8, 11), (0.6, 1.9), (-3.0, 4.0),
                  tuple((rotation("z", 40)[:2, :2] @ np.diag([1, -1])).ravel()))


def test_dice_per_label_matches_hand_counts():
    a = np.zeros((10, 10), np.int16)
    b = np.zeros((10, 10), np.int16)
    a[0:4], b[2:6] = 1, 1          # 40 and 40 voxels, 20 shared -> 0.5
    a[8:10, 0:5] = b[8:10, 0:5] = 2  # identical -> 1
    a[7, 0:5] = 3                   # only in a -> 0
    dice = dice_per_label(a, b)
    assert dice == pytest.approx({1: 0.5, 2: 1.0, 3: 0.0})
    assert mean_dice(dice) == pytest.approx(0.5)
    assert dice_per_label(a, b, labels=[2, 7]) == {2: 1.0}  # absent label left out
    assert mask_dice(a, b) == pytest.approx(2 * 30 / (55 + 50))


def test_dice_rejects_maps_of_different_shapes():
    with pytest.raises(RegistrationError, match="different shapes"):
        dice_per_label(np.zeros((3, 3)), np.zeros((3, 4)))


def test_field_tre_statistics_over_mask():
    true = np.zeros((10, 10, 2))
    estimated = np.zeros((10, 10, 2))
    estimated[..., 0] = np.arange(1, 101).reshape(10, 10)  # errors 1..100 mm
    stats = field_tre(true, estimated)
    assert stats == pytest.approx({"mean": 50.5, "median": 50.5, "p95": 95.05, "max": 100.0})
    mask = np.zeros((10, 10), bool)
    mask[0, :3] = True  # errors 1, 2, 3
    assert field_tre(true, estimated, mask)["mean"] == pytest.approx(2.0)


@pytest.mark.parametrize("grid", [OBLIQUE_3D, OBLIQUE_2D], ids=["3d", "2d"])
def test_jacobian_of_linear_field_is_det_identity_plus_matrix(grid):
    rng = np.random.default_rng(3)
    matrix = rng.uniform(-0.3, 0.3, (grid.dim, grid.dim))
    points = physical_points(grid)
    field = (points - 4.0) @ matrix.T  # u(x) = A (x - c)
    det = jacobian_determinant(field, grid)
    assert det.shape == grid.shape
    np.testing.assert_allclose(det, np.linalg.det(np.eye(grid.dim) + matrix), rtol=1e-9)


def test_jacobian_of_quadratic_field_and_folding():
    # u_x = c x^2 along physical x (x = -10 .. 9 mm): det = 1 + 2 c x, folding where x <= -1/(2c) = -5
    grid = Grid((20, 3, 3), (1.0, 1.0, 1.0), (-10.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    x = physical_points(grid)[..., 0]
    field = np.zeros((*grid.shape, 3))
    field[..., 0] = 0.1 * x ** 2
    det = jacobian_determinant(field, grid)
    interior = det[..., 1:-1]
    np.testing.assert_allclose(interior, 1 + 0.2 * x[..., 1:-1], atol=1e-9)
    stats = folding(det)
    assert stats["percent_folded"] == pytest.approx(30.0)  # columns x = -10 .. -5: 6 of 20
    assert stats["min_jacobian"] < -0.75
    mask = x > 0
    assert folding(det, mask)["percent_folded"] == 0.0


def test_jacobian_rejects_field_of_wrong_shape():
    with pytest.raises(RegistrationError, match="does not match the grid"):
        jacobian_determinant(np.zeros((6, 7, 9, 2)), OBLIQUE_3D)


def test_field_mapping_and_landmark_tre():
    grid = OBLIQUE_3D
    matrix = np.array([[0.1, 0.0, 0.05], [0.0, -0.1, 0.0], [0.02, 0.0, 0.0]])
    shift = np.array([1.0, -2.0, 3.0])
    field = physical_points(grid) @ matrix.T + shift
    centre = physical_points(grid)[3, 3, 4]
    fixed = centre + np.array([[0.0, 0, 0], [0.5, -0.3, 0.2], [-0.4, 0.6, -0.1]])
    truth = fixed + fixed @ matrix.T + shift
    # linear interpolation of a linear field is exact between voxels
    np.testing.assert_allclose(field_mapping(field, grid)(fixed), truth, atol=1e-9)
    moving = truth + np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -2.0]])
    result = landmark_tre(fixed, moving, field_mapping(field, grid))
    np.testing.assert_allclose(result["errors"], [5.0, 0.0, 2.0], atol=1e-9)
    assert result["mean"] == pytest.approx(7.0 / 3)
    assert result["max"] == pytest.approx(5.0)
    with pytest.raises(RegistrationError, match="matched pairs"):
        landmark_tre(fixed, moving[:2], field_mapping(field, grid))


@pytest.mark.parametrize("dim", [2, 3])
def test_jacobian_determinant_matches_numpy_det_on_an_oblique_anisotropic_grid(dim):
    angle = np.deg2rad(25)
    rotation = np.eye(dim)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    shape = (9, 11, 8)[:dim]
    grid = Grid(shape[::-1], (1.5, 2.0, 1.2)[:dim], (1.0, 2.0, 3.0)[:dim], tuple(rotation.ravel()))
    field = np.random.default_rng(dim).standard_normal((*shape, dim)) * 0.3
    expected = np.linalg.det(displacement_gradient(field, grid) + np.eye(dim))
    np.testing.assert_allclose(jacobian_determinant(field, grid), expected, atol=1e-12)
    single = jacobian_determinant(field.astype(np.float32), grid)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, expected, atol=1e-5)


def test_dice_per_label_matches_its_definition_for_large_and_many_labels():
    """Against 2|A∩B|/(|A|+|B|) counted label by label, on maps whose labels float32 cannot tell apart."""
    rng = np.random.default_rng(7)
    a = (2**40 + rng.integers(0, 300, (20, 20, 20))).astype(np.int64)
    b = np.where(rng.random(a.shape) < 0.8, a, 2**40 + rng.integers(0, 300, a.shape))
    b[:2] = 0
    expected = {}
    for label in (set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0}:
        expected[label] = 2 * np.sum((a == label) & (b == label)) / (np.sum(a == label) + np.sum(b == label))
    got = dice_per_label(a, b)
    assert got.keys() == expected.keys() and np.allclose([got[k] for k in expected], list(expected.values()))
    assert dice_per_label(a, b, labels=[2**40 + 5, 17]) == {2**40 + 5: expected[2**40 + 5]}
