"""The torch geometry's fast paths against independent references: separable filtering against scipy,
grid sampling cut into one piece per thread against a single torch grid_sample call."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from DiffusionRegistrationLib.geometry import spatial
from DiffusionRegistrationLib.geometry.spatial import gaussian_kernel1d, sample, separable_filter


@pytest.fixture
def threads():
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


@pytest.mark.parametrize("shape", [(2, 3, 9, 14, 11), (1, 2, 17, 12), (1, 1, 40, 5, 8)])
def test_separable_filter_is_scipy_zero_padded_correlation_forward_and_backward(shape):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(*shape, dtype=torch.float64, generator=generator).requires_grad_(True)
    weights = torch.rand(*shape, dtype=torch.float64, generator=generator)
    kernels = [gaussian_kernel1d(sigma, dtype=torch.float64) for sigma in (1.5, 0.7, 2.0)[:len(shape) - 2]]
    filtered = separable_filter(image, kernels)

    def scipy_filter(values: np.ndarray) -> np.ndarray:
        for axis, kernel in enumerate(kernels):
            values = ndimage.correlate1d(values, kernel.numpy(), axis=2 + axis, mode="constant", cval=0.0)
        return values

    np.testing.assert_allclose(filtered.detach().numpy(), scipy_filter(image.detach().numpy()), atol=1e-12)
    gradient, = torch.autograd.grad((filtered * weights).sum(), image)
    # the adjoint of a correlation with a symmetric kernel and zero padding is the same correlation
    np.testing.assert_allclose(gradient.numpy(), scipy_filter(weights.numpy()), atol=1e-12)


@pytest.mark.parametrize("image_shape, grid_shape", [((1, 2, 40, 50, 30), (1, 67, 45, 35, 3)),
                                                     ((1, 1, 300, 200), (1, 401, 250, 2)),
                                                     ((1, 1, 30, 30, 30), (1, 64, 40, 40, 3))])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("count", [2, 3])
def test_sampling_cut_per_thread_equals_one_grid_sample(image_shape, grid_shape, padding_mode, count, threads):
    threads(count)
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(*image_shape, generator=generator)
    grid = (torch.rand(*grid_shape, generator=generator) * 2.2 - 1.1).requires_grad_(True)
    assert spatial._chunks(image, grid) == count  # the fast path is the one under test
    expected = F.grid_sample(image, grid, padding_mode=padding_mode, align_corners=True)
    got = sample(image, grid, padding_mode=padding_mode)
    assert got.shape == expected.shape and torch.equal(got, expected)
    weights = torch.rand(expected.shape, generator=generator)
    expected_gradient, = torch.autograd.grad((expected * weights).sum(), grid)
    gradient, = torch.autograd.grad((sample(image, grid, padding_mode=padding_mode) * weights).sum(), grid)
    assert torch.equal(gradient, expected_gradient)


def test_small_or_batched_sampling_is_one_call(threads):
    threads(2)
    assert spatial._chunks(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 8, 8, 8, 3)) == 1
    assert spatial._chunks(torch.zeros(2, 1, 64, 64, 64), torch.zeros(2, 64, 64, 64, 3)) == 1


def test_nearest_warp_keeps_integer_labels_as_simpleitk_does():
    """Result.warp(..., "nearest") against SimpleITK's nearest-neighbour resampling of the same field, on labels
    that float32 cannot hold (int32 near 2^31; ITK resamples through double, exact for them) and a rotated,
    anisotropic grid."""
    from DiffusionRegistrationLib.core.image import Grid, Image
    from DiffusionRegistrationLib.engine.result import Result
    from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement

    grid = Grid((16, 20, 18), (1.5, 0.8, 1.1), (4.0, -3.0, 7.5), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    values = (2**31 - 1 - np.random.default_rng(3).integers(0, 50, grid.shape)).astype(np.int32)
    labels = Image(values, grid)
    field = random_smooth_displacement(grid, 4.0, seed=5, smoothness_mm=6.0)
    ours = Result(grid, grid, field.astype(np.float32)).warp(labels, "nearest").array
    peer = warp_with_displacement(labels, field, "nearest").array
    assert ours.dtype == np.int32 and set(np.unique(ours)) <= set(np.unique(values)) | {0}
    assert (ours != peer).mean() < 0.002  # points within float32 rounding of a voxel boundary may differ


def test_constants_first_built_in_inference_mode_still_serve_a_backward_pass():
    """The per-grid and per-kernel constants are cached: one first built inside inference mode (the agreement
    map runs there) must still work in a later differentiable step, and give the same numbers as a fresh one."""
    from DiffusionRegistrationLib.core.image import Grid

    grid = Grid((7, 5, 6), (1.5, 2.0, 1.0), (3.0, -4.0, 10.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    kernel = gaussian_kernel1d(1.3, dtype=torch.float32)
    spatial._matrix.cache_clear(), spatial._normalising.cache_clear(), spatial._cached_band_matrix.cache_clear()
    with torch.inference_mode():
        spatial.to_sampling_grid(spatial.physical_points(grid), grid)
        separable_filter(torch.rand(1, 1, 6, 5, 7), [kernel] * 3)
    points = spatial.physical_points(grid).requires_grad_(True)
    image = torch.rand(1, 1, 6, 5, 7, requires_grad=True)
    (spatial.to_sampling_grid(points, grid).sum() + separable_filter(image, [kernel] * 3).sum()).backward()
    # the identity map samples every voxel centre: corners at -1 and +1 exactly
    normalised = spatial.to_sampling_grid(spatial.physical_points(grid), grid)
    assert torch.allclose(normalised[0, 0, 0, 0], torch.tensor([-1.0, -1.0, -1.0]), atol=1e-5)
    assert torch.allclose(normalised[0, -1, -1, -1], torch.tensor([1.0, 1.0, 1.0]), atol=1e-5)
    assert points.grad is not None and image.grad is not None
    assert torch.allclose(image.grad, separable_filter(torch.ones(1, 1, 6, 5, 7), [kernel] * 3), atol=1e-5)
