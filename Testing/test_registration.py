"""register(): known affine across grids, known smooth deformations, SVF and inverse analytics."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.linalg import expm

from DiffusionRegistrationLib.engine.config import make_config
from DiffusionRegistrationLib.errors import Cancelled, RegistrationError
from DiffusionRegistrationLib.core.image import Grid, Image
from DiffusionRegistrationLib.engine.registration import level_plan, register
from DiffusionRegistrationLib.geometry.spatial import physical_points
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement
from DiffusionRegistrationLib.geometry.transforms import channels_first, channels_last, integrate_velocity, \
    invert_displacement, resize_field, sample_field


def _rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_known_affine_is_recovered_for_a_fixed_image_on_another_grid_and_orientation(t1_slice):
    moving = t1_slice
    linear = 1.05 * _rotation(7)
    center = moving.grid.center()
    translation = np.array([3.0, -2.5])
    true = sitk.AffineTransform(2)
    true.SetMatrix(linear.ravel().tolist())
    true.SetCenter(center.tolist())
    true.SetTranslation(translation.tolist())
    direction = _rotation(15).ravel()
    fixed_grid = Grid((48, 46), (4.6, 4.9), tuple(center - _rotation(15) @ (np.array([23.5, 22.5]) * [4.6, 4.9])),
                      tuple(direction))
    reference = fixed_grid.apply_to(sitk.Image(list(fixed_grid.size), sitk.sitkFloat32))
    fixed = Image.from_sitk(sitk.Resample(moving.to_sitk(), reference, true, sitk.sitkLinear, 0.0))
    config = make_config("default", {"similarity": "mse", "transform": "none", "affine_levels": (2, 1),
                                     "affine_iterations": (150, 150), "init": "centers"})
    result = register(fixed, moving, config)
    points = physical_points(fixed_grid).numpy()[0].reshape(-1, 2)
    inside = np.abs(points - center).max(axis=1) < 60
    expected = np.array([true.TransformPoint(tuple(float(v) for v in p)) for p in points[inside]])
    mapped = points[inside] + result.displacement.reshape(-1, 2)[inside]
    error = np.linalg.norm(mapped - expected, axis=1)
    assert error.mean() < 0.5, error.mean()  # pixels are 4 to 5 mm
    recovered = result.affine[:2, :2]
    assert np.allclose(recovered, linear, atol=0.02)


@pytest.mark.parametrize("kind", ["displacement", "svf"])
def test_known_smooth_deformation_is_recovered_in_2d(t1_slice, kind):
    truth = random_smooth_displacement(t1_slice.grid, max_mm=10.0, seed=3, smoothness_mm=25.0)
    fixed = warp_with_displacement(t1_slice, truth)
    config = make_config("default", {"transform": kind, "affine": False})
    result = register(fixed, t1_slice, config)
    tissue = fixed.array > 0.2 * fixed.array.max()
    before = np.linalg.norm(truth, axis=-1)[tissue].mean()
    after = np.linalg.norm(result.displacement - truth, axis=-1)[tissue].mean()
    assert after < 0.35 * before, (before, after)


def test_constant_velocity_integrates_to_the_same_translation():
    grid = Grid((12, 10, 8), (2.0, 1.5, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    velocity = torch.zeros(1, 3, *grid.shape)
    velocity[:, 0], velocity[:, 1], velocity[:, 2] = 1.5, -0.5, 0.25
    displacement = integrate_velocity(velocity, grid, steps=6)
    assert torch.allclose(displacement, velocity, atol=1e-5)


def test_rotational_velocity_integrates_to_the_matrix_exponential():
    grid = Grid((41, 41), (1.0, 1.0), (-20.0, -20.0), (1, 0, 0, 1))
    generator = np.array([[0.0, -0.2], [0.2, 0.0]])  # v(x) = W x, exp(W) a rotation by 0.2 rad
    points = physical_points(grid, dtype=torch.float32)
    velocity = channels_first(points @ torch.as_tensor(generator, dtype=torch.float32).T)
    displacement = channels_last(integrate_velocity(velocity, grid, steps=8))[0].numpy()
    expected = points[0].numpy() @ (expm(generator) - np.eye(2)).T
    centre = np.linalg.norm(points[0].numpy(), axis=-1) < 10
    assert np.abs(displacement - expected)[centre].max() < 0.02


def test_inverse_of_a_smooth_field_composes_to_identity():
    grid = Grid((32, 32), (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1))
    field = torch.as_tensor(random_smooth_displacement(grid, 3.0, seed=1, smoothness_mm=8.0), dtype=torch.float32)
    forward = channels_first(field[None])
    inverse = invert_displacement(forward, grid, iterations=40)
    points = physical_points(grid)
    composed = channels_last(inverse) + sample_field(forward, grid, points + channels_last(inverse))
    interior = (slice(None), slice(6, -6), slice(6, -6))
    assert composed[interior].abs().max() < 0.05


def test_cancel_from_the_progress_callback_stops_the_run(t1_slice):
    seen = []

    def cancel_after_a_few(event):
        seen.append(event)
        if len(seen) >= 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        register(t1_slice, t1_slice, make_config("fast", {"similarity": "mse"}), progress=cancel_after_a_few)
    assert len(seen) == 3


@pytest.mark.parametrize("problem, message", [
    ("dimension", "2D"), ("empty mask", "empty"), ("mask grid", "another voxel grid")])
def test_bad_pairs_and_masks_raise_a_clear_error(t1_slice, colin_small, problem, message):
    moving, mask = t1_slice, None
    if problem == "dimension":
        moving = colin_small
    elif problem == "empty mask":
        mask = t1_slice.with_array(np.zeros_like(t1_slice.array))
    else:
        mask = Image(np.ones((5, 5), np.float32), Grid((5, 5), (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1)))
    with pytest.raises(RegistrationError, match=message):
        register(t1_slice, moving, make_config("fast", {"similarity": "mse"}), fixed_mask=mask)


def test_cuda_without_a_gpu_is_an_error_not_a_silent_fallback(t1_slice):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RegistrationError, match="no CUDA GPU"):
        register(t1_slice, t1_slice, make_config("fast", {"device": "cuda"}))


def test_a_run_leaves_torch_threads_and_the_global_generator_as_it_found_them(t1_slice):
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    config = make_config("fast", {"similarity": "mi", "threads": 1 if threads > 1 else 2,
                                  "similarity_params": {"max_samples": 500}})
    first = register(t1_slice, t1_slice, config)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)
    again = register(t1_slice, t1_slice, config)  # the same seed draws the same MI samples
    assert np.array_equal(first.displacement, again.displacement)


def test_unset_threads_mean_one_for_a_2d_image_and_torchs_default_for_a_volume(t1_slice, colin_small):
    torch.set_num_threads(2)
    seen = {}
    for name, image in (("2d", t1_slice), ("3d", colin_small)):
        register(image, image, make_config("fast", {"iterations": [2, 2], "affine_iterations": [2, 2]}),
                 progress=lambda event, name=name: seen.setdefault(name, torch.get_num_threads()))
    assert seen == {"2d": 1, "3d": 2} and torch.get_num_threads() == 2
    register(t1_slice, t1_slice, make_config("fast", {"iterations": [2, 2], "threads": 2}),
             progress=lambda event: seen.__setitem__("given", torch.get_num_threads()))
    assert seen["given"] == 2


@pytest.mark.parametrize("spacing, expected", [(2.0, [4.0, 2.0, 1.0]), (1.0, [8.0, 4.0, 2.0]),
                                               (0.5, [16.0, 8.0, 4.0]), (3.0, [4.0, 2.0, 1.0])])
def test_levels_are_physical_sizes_whatever_the_voxel_size(spacing, expected):
    grid = Grid((400, 400, 400), (spacing,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel()))
    plan = level_plan(grid, (4.0, 2.0, 1.0), (30, 20, 10), level_spacing_mm=2.0)
    assert [factor for factor, _ in plan] == expected
    assert [count for _, count in plan] == [30, 20, 10]


def test_levels_too_small_for_the_image_are_dropped_but_one_is_kept():
    grid = Grid((40, 40), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    assert level_plan(grid, (4.0, 2.0, 1.0), (30, 20, 10), None) == [(2.0, 20), (1.0, 10)]
    assert level_plan(grid, (8.0, 4.0), (30, 20), None) == [(4.0, 20)]
    assert level_plan(grid, (4.0, 2.0, 1.0), (30, 20, 10), 2.0) == [(2.0, 20), (1.0, 10)]  # 2D: own spacing


def test_zero_iterations_skip_a_level_as_in_ants():
    grid = Grid((200, 200), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    assert level_plan(grid, (4.0, 2.0, 1.0), (100, 70, 0), None) == [(4.0, 100), (2.0, 70)]
    assert level_plan(grid, (4.0, 2.0, 1.0), (0, 70, 10), None) == [(2.0, 70), (1.0, 10)]
    assert level_plan(grid, (4.0, 2.0), (0, 0), None) == []


def test_a_deformable_stage_of_zero_iterations_is_the_affine_alone(t1_slice):
    moved = t1_slice.with_array(np.roll(t1_slice.array, 2, axis=1))
    skipped = register(t1_slice, moved, make_config("fast", {"iterations": [0, 0]}))
    affine_only = register(t1_slice, moved, make_config("fast", {"transform": "none"}))
    assert skipped.history and {h["stage"] for h in skipped.history} == {"affine"}
    np.testing.assert_array_equal(skipped.displacement, affine_only.displacement)


@pytest.mark.parametrize("shape, size", [((1, 3, 6, 7, 5), (21, 25, 9)), ((2, 2, 9, 4), (33, 4)), ((1, 2, 5, 8), (3, 17))])
def test_field_resizing_matches_torch_linear_interpolation(shape, size):
    field = torch.randn(*shape, dtype=torch.float64)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    expected = torch.nn.functional.interpolate(field, size=size, mode=mode, align_corners=True)
    assert torch.allclose(resize_field(field, size), expected, atol=1e-12)


def test_a_skull_stripped_moving_image_is_masked_by_default_onto_one_with_skull():
    """Colin27 skull-stripped (moving) onto Colin27 *with skull* under a known field, at 4 mm. Unmasked, local
    NCC matches the skull against the empty background and ends worse than no registration; `default` finds
    the moving image brain only and the fixed one a head (moving_foreground_mask="auto", engine.foreground),
    measures the similarity only where the moving image has data, and recovers the field inside the brain,
    as `stripped` does. Between two skull-stripped images it does not mask."""
    from DiffusionRegistrationLib.io.data import COLIN_BET, COLIN_T1, data_file, resample_isotropic
    from DiffusionRegistrationLib.io.images import read_image

    moving = resample_isotropic(read_image(data_file(COLIN_BET)), 4.0)
    skull = resample_isotropic(read_image(data_file(COLIN_T1)), 4.0)
    truth = random_smooth_displacement(moving.grid, 8.0, 0)
    fixed = warp_with_displacement(skull, truth)
    brain = warp_with_displacement(moving.with_array((moving.array > 0).astype(np.float32)), truth, "nearest").array > 0

    def error(result) -> float:
        return float(np.linalg.norm(result.displacement - truth, axis=-1)[brain].mean())

    before = float(np.linalg.norm(truth, axis=-1)[brain].mean())
    default = register(fixed, moving, make_config("default", {}))
    stripped = register(fixed, moving, make_config("stripped", {}))
    unmasked = register(fixed, moving, make_config("default", {"moving_foreground_mask": False}))
    assert default.config["moving_foreground_mask"] is True
    assert error(default) < 0.4 * before and error(stripped) < 0.4 * before
    assert error(unmasked) > 2 * error(default)
    both_stripped = register(warp_with_displacement(moving, truth), moving, make_config("default", {}))
    assert both_stripped.config["moving_foreground_mask"] is False
    assert error(both_stripped) < 0.4 * before


def test_the_regularization_is_stronger_only_where_a_moving_mask_limits_the_similarity(t1_slice):
    """masked_regularization_factor multiplies the regulariser's weight when a moving mask is used, and only
    then: with the factor 20 the masked run's field is far smoother; the unmasked one still recovers the field.
    The mask covers the whole image, so the similarity is the same in both runs and only the weight differs."""
    truth = random_smooth_displacement(t1_slice.grid, max_mm=10.0, seed=3, smoothness_mm=25.0)
    fixed = warp_with_displacement(t1_slice, truth)
    config = make_config("default", {"affine": False, "masked_regularization_factor": 20.0})
    everywhere = t1_slice.with_array(np.ones_like(t1_slice.array))
    tissue = fixed.array > 0.2 * fixed.array.max()

    def roughness(result) -> float:  # mean squared difference of neighbouring displacements
        return float(sum(np.mean(np.diff(result.displacement, axis=axis) ** 2) for axis in range(2)))

    plain, masked = register(fixed, t1_slice, config), register(fixed, t1_slice, config, moving_mask=everywhere)
    before = float(np.linalg.norm(truth, axis=-1)[tissue].mean())
    assert float(np.linalg.norm(plain.displacement - truth, axis=-1)[tissue].mean()) < 0.35 * before
    assert roughness(masked) < 0.5 * roughness(plain), (roughness(masked), roughness(plain))
