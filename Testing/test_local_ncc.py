"""The one local NCC kernel (similarity.local_ncc), behind the lncc similarity, the diffusion-feature similarity
and the agreement map, against the same quantity computed with scipy's Gaussian filter."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from DiffusionRegistrationLib.similarity.local_ncc import fixed_moments, gaussian_window, local_ncc


def _scipy_local_ncc(f: np.ndarray, w: np.ndarray, sigma: float, eps: float, mask: np.ndarray) -> np.ndarray:
    """Windowed moments renormalised by the filtered mask (zero padding outside the image), in float64."""
    def window(values):
        return ndimage.gaussian_filter(values, sigma, mode="constant", truncate=3.0)

    weight = np.maximum(window(mask), 1e-6)
    mean_f, mean_w = window(mask * f) / weight, window(mask * w) / weight
    var_f = np.maximum(window(mask * f * f) / weight - mean_f ** 2, 0)
    var_w = np.maximum(window(mask * w * w) / weight - mean_w ** 2, 0)
    cov = window(mask * f * w) / weight - mean_f * mean_w
    return cov / np.sqrt((var_f + eps) * (var_w + eps))


@pytest.mark.parametrize("shape, sigma, masked", [((24, 20, 18), 2.0, False), ((24, 20, 18), 1.5, True),
                                                  ((40, 36), 4.0, True)])
def test_local_ncc_matches_scipy(shape, sigma, masked):
    rng = np.random.default_rng(3)
    f = ndimage.gaussian_filter(rng.random(shape), 1.0)
    w = 0.6 * f + 0.4 * ndimage.gaussian_filter(rng.random(shape), 1.0)
    mask = np.ones(shape)
    if masked:
        mask[tuple(slice(n // 4, None) for n in shape)] = 0.0
    expected = _scipy_local_ncc(f, w, sigma, 1e-5, mask)
    ft, wt, mt = (torch.as_tensor(a, dtype=torch.float32)[None, None] for a in (f, w, mask))
    kernels = gaussian_window(sigma, len(shape), ft)
    got = local_ncc(ft, wt, kernels, 1e-5, mt if masked else None)[0, 0].double().numpy()
    inside = mask > 0
    assert np.abs(got - expected)[inside].max() < 2e-4
    again = local_ncc(ft, wt, kernels, 1e-5, mt if masked else None,
                      fixed_moments(ft, kernels, mt if masked else None))
    assert torch.equal(again[0, 0], torch.as_tensor(got, dtype=torch.float32))


def test_identical_images_correlate_to_one_where_they_vary():
    image = torch.as_tensor(ndimage.gaussian_filter(np.random.default_rng(0).random((32, 32)), 1.0),
                            dtype=torch.float32)[None, None]
    local = local_ncc(image, image, gaussian_window(2.0, 2, image), 1e-8)
    assert torch.allclose(local, torch.ones_like(local), atol=1e-3)
    assert torch.allclose(local_ncc(image, -image, gaussian_window(2.0, 2, image), 1e-8), -local, atol=1e-6)
