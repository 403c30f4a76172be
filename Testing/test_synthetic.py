"""Known deformations: size, smoothness, invertibility and the direction of the warp."""
import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.io.data import COLIN_AAL, COLIN_BET, data_file, resample_isotropic
from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.core.image import Grid, Image
from DiffusionRegistrationLib.io.images import read_image
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement

LPS_FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # how a NIfTI in RAS reads in ITK
GRID = Grid((36, 40, 30), (2.5, 2.0, 3.0), (40.0, 30.0, -40.0), LPS_FLIPPED)


def sitk_points(grid: Grid) -> np.ndarray:
    """Physical point of every voxel, computed by SimpleITK, [*shape, D]."""
    image = grid.apply_to(sitk.Image(list(grid.size), sitk.sitkUInt8))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)[..., ::-1]
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return index @ matrix.T + np.asarray(image.GetOrigin())


def sitk_jacobian(field: np.ndarray, grid: Grid) -> np.ndarray:
    """SimpleITK's Jacobian determinant (identity-direction grids only: the filter ignores direction)."""
    image = grid.apply_to(sitk.GetImageFromArray(field, isVector=True))
    return sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(image, True))


def test_field_has_requested_maximum_and_no_folding():
    grid = Grid(GRID.size, GRID.spacing, GRID.origin, tuple(np.eye(3).ravel()))
    field = random_smooth_displacement(grid, max_mm=8.0, seed=1)
    assert field.shape == (*grid.shape, 3)
    assert np.linalg.norm(field, axis=-1).max() == pytest.approx(8.0)
    det = sitk_jacobian(field, grid)
    assert det.min() > 0.0
    assert det.std() > 0.01  # a real deformation, not a translation
    np.testing.assert_array_equal(field, random_smooth_displacement(grid, 8.0, seed=1))
    assert not np.allclose(field, random_smooth_displacement(grid, 8.0, seed=2))


def test_large_field_is_made_smoother_rather_than_folding():
    grid = Grid((30, 30, 30), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    field = random_smooth_displacement(grid, max_mm=15.0, seed=0, smoothness_mm=5.0)
    assert np.linalg.norm(field, axis=-1).max() == pytest.approx(15.0)
    assert sitk_jacobian(field, grid).min() > 0.0


def test_warp_moves_a_bright_point_by_minus_the_shift():
    """output(x) = image(x + u): a point at p shows up at p - u."""
    grid = GRID
    points = sitk_points(grid)
    peak = points[15, 20, 18]
    image = Image(np.exp(-np.sum((points - peak) ** 2, -1) / (2 * 3.0 ** 2)).astype(np.float32), grid)
    shift = np.array([5.0, -4.0, 6.0])
    field = np.broadcast_to(shift, (*grid.shape, 3)).copy()
    warped = warp_with_displacement(image, field)
    weights = warped.array.astype(np.float64)
    centroid = (points * weights[..., None]).sum((0, 1, 2)) / weights.sum()
    np.testing.assert_allclose(centroid, peak - shift, atol=0.05)
    # SimpleITK's own translation transform (which maps output points to input points) agrees
    reference = sitk.Resample(sitk.Cast(image.to_sitk(), sitk.sitkFloat32), image.to_sitk(),
                              sitk.TranslationTransform(3, shift.tolist()), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(warped.array, sitk.GetArrayFromImage(reference), atol=1e-6)


def test_warp_of_coordinate_ramps_recovers_the_field_in_lps():
    """Warping images equal to the physical x, y, z coordinate gives x + u(x): components are LPS mm."""
    grid = GRID
    field = random_smooth_displacement(grid, max_mm=6.0, seed=4, smoothness_mm=15.0)
    points = sitk_points(grid)
    inside = np.zeros(grid.shape, bool)
    inside[4:-4, 4:-4, 4:-4] = True  # x + u(x) stays inside the image (6 mm < 4 voxels)
    for axis in range(3):
        ramp = Image(points[..., axis].astype(np.float32), grid)
        warped = warp_with_displacement(ramp, field).array
        np.testing.assert_allclose(warped[inside], (points[..., axis] + field[..., axis])[inside], atol=2e-3)


def test_nearest_keeps_labels_and_bad_interpolator_is_refused():
    labels = Image(np.random.default_rng(0).integers(0, 5, GRID.shape).astype(np.uint8), GRID)
    field = random_smooth_displacement(GRID, 4.0, seed=0)
    warped = warp_with_displacement(labels, field, "nearest")
    assert warped.array.dtype == np.uint8
    assert set(np.unique(warped.array)) <= set(range(5))
    with pytest.raises(RegistrationError, match="interpolator"):
        warp_with_displacement(labels, field, "cubic")
    with pytest.raises(RegistrationError, match="does not match the grid"):
        warp_with_displacement(labels, field[1:])


def test_colin_at_2mm_pair_is_consistent():
    """The benchmark's recipe on the real data: 2 mm grids, and labels warped the way the field says."""
    try:
        bet = read_image(data_file(COLIN_BET))
        aal = read_image(data_file(COLIN_AAL), dtype=np.uint8)
    except RegistrationError as error:
        pytest.skip(str(error))
    bet2 = resample_isotropic(bet, 2.0)
    aal2 = resample_isotropic(aal, 2.0, labels=True)
    assert bet2.grid.size == (91, 109, 91) and bet2.grid.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(bet2.grid.center(), bet.grid.center())
    assert aal2.array.dtype == np.uint8 and set(np.unique(aal2.array)) <= set(np.unique(aal.array))
    field = random_smooth_displacement(bet2.grid, 8.0, seed=0)
    fixed = warp_with_displacement(bet2, field)
    assert not np.allclose(fixed.array, bet2.array)
    warped = warp_with_displacement(aal2, field, "nearest").array
    # a voxel x of a warped label came from x + u(x) in the original label: centroids agree that way
    points = sitk_points(bet2.grid)
    moved, kept = [], []
    for label in np.unique(aal2.array)[1:]:
        original = points[aal2.array == label].mean(0)
        inside = warped == label
        moved.append(np.linalg.norm((points + field)[inside].mean(0) - original))
        kept.append(np.linalg.norm(points[inside].mean(0) - original))
    assert np.median(moved) < 1.0 and np.median(kept) > 1.5  # measured: 0.58 and 2.2 mm


def test_2d_field_and_warp_on_an_oblique_grid():
    angle = np.radians(25)
    grid = Grid((40, 30), (1.5, 2.0), (5.0, -10.0),
                (np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)))
    field = random_smooth_displacement(grid, max_mm=5.0, seed=7, smoothness_mm=12.0)
    assert field.shape == (30, 40, 2)
    assert np.linalg.norm(field, axis=-1).max() == pytest.approx(5.0)
    image = grid.apply_to(sitk.Image([40, 30], sitk.sitkUInt8))
    index = np.stack(np.meshgrid(np.arange(30), np.arange(40), indexing="ij"), -1)[..., ::-1]
    points = np.array([image.TransformContinuousIndexToPhysicalPoint([float(i), float(j)])
                       for i, j in index.reshape(-1, 2)]).reshape(30, 40, 2)
    inside = np.zeros(grid.shape, bool)
    inside[4:-4, 4:-4] = True
    for axis in range(2):
        warped = warp_with_displacement(Image(points[..., axis].astype(np.float32), grid), field).array
        np.testing.assert_allclose(warped[inside], (points[..., axis] + field[..., axis])[inside], atol=2e-3)
