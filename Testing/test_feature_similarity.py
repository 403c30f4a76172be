"""The diffusion-feature similarity with a small random-weight ADM (features meaningless, properties hold)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from DiffusionRegistrationLib.features.adm_extractor import AdmExtractor
from DiffusionRegistrationLib.similarity.diffusion import DiffusionFeatureSimilarity
from DiffusionRegistrationLib.similarity.feature_grids import feature_weights
from DiffusionRegistrationLib.similarity.feature_measures import lncc_loss
from DiffusionRegistrationLib.core.image import Grid
from DiffusionRegistrationLib.similarity import build_similarity


class CountingAdm(AdmExtractor):
    """Counts the images that go through the network."""

    calls = 0

    def extract(self, x, generator):
        self.calls += x.shape[0]
        return super().extract(x, generator)


def grid_of(shape) -> Grid:
    d = len(shape)
    return Grid(tuple(reversed(shape)), (1.0,) * d, (0.0,) * d, tuple(np.eye(d).ravel()))


def identity_grid(shape, shift_voxels=None) -> torch.Tensor:
    """Normalised identity sampling grid [1, *shape, D] (x, y, z order), optionally shifted by voxels."""
    d = len(shape)
    theta = torch.eye(d, d + 1)[None]
    if shift_voxels is not None:
        for axis, s in enumerate(shift_voxels):  # (z, y, x) order -> grid component d - 1 - axis
            theta[0, d - 1 - axis, d] = 2 * s / (shape[axis] - 1)
    return F.affine_grid(theta, [1, 1, *shape], align_corners=True)


@pytest.fixture(scope="module")
def adm2d() -> AdmExtractor:
    return AdmExtractor.random()


@pytest.fixture(scope="module")
def adm3d(adm2d) -> AdmExtractor:
    """The same random network with the 3D defaults (encoder block 11, t=50)."""
    return AdmExtractor(adm2d.model, dim=3, backbone_id="adm-small-random:seed=0")


def counting(extractor: AdmExtractor, **options) -> "CountingAdm":
    return CountingAdm(extractor.model, tap=extractor.tap, timestep=options.pop("timestep", extractor.timestep),
                       backbone_id="adm-small-random:seed=0", **options)


@pytest.fixture(scope="module")
def slice_tensor(t1_slice) -> torch.Tensor:
    array = torch.as_tensor(t1_slice.array, dtype=torch.float32)
    array = (array - array.min()) / (array.max() - array.min())
    return array[None, None]


@pytest.fixture(scope="module")
def volume_tensor(colin_small) -> torch.Tensor:
    array = torch.as_tensor(colin_small.array, dtype=torch.float32)
    return ((array - array.min()) / (array.max() - array.min()))[None, None]


def test_identity_gives_the_minimum_and_a_shift_does_not(slice_tensor, adm2d, tmp_path):
    shape = tuple(slice_tensor.shape[2:])
    shifted = torch.roll(slice_tensor, shifts=(3, -4), dims=(2, 3))
    for measure in ("lncc", "cosine"):
        similarity = DiffusionFeatureSimilarity(adm2d, measure=measure, mode="exact",
                                                cache_dir=str(tmp_path))
        similarity.prepare(slice_tensor, slice_tensor, grid_of(shape), grid_of(shape))
        with torch.no_grad():
            same = similarity.mapped_loss(slice_tensor, slice_tensor, identity_grid(shape))
        similarity.prepare(slice_tensor, shifted, grid_of(shape), grid_of(shape))
        with torch.no_grad():
            other = similarity.mapped_loss(slice_tensor, shifted, identity_grid(shape))
        assert same.item() == pytest.approx(-1.0, abs=1e-3)
        assert other.item() > same.item() + 0.05


def test_lncc_is_minus_one_for_identical_features_wherever_they_vary():
    features = torch.randn(2, 5, 12, 16)
    weights = feature_weights(None, (48, 64), 4, features)
    assert float(lncc_loss(features, features, weights, 4.0)) == pytest.approx(-1.0, abs=1e-4)
    assert float(lncc_loss(features, -features, weights, 4.0)) == pytest.approx(1.0, abs=1e-4)


def test_feature_weights_cover_the_image_and_the_mask():
    weights = feature_weights(None, (10, 13), 4, torch.zeros(1))
    assert weights.shape == (1, 1, 3, 4)
    assert weights[0, 0, 0, 0] == 1.0 and weights[0, 0, 2, 3] == pytest.approx((2 / 4) * (1 / 4))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    assert feature_weights(mask, (8, 8), 4, mask)[0, 0, :, 0].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_gradients_reach_the_sampling_grid_2d(slice_tensor, adm2d, tmp_path, mode):
    shape = tuple(slice_tensor.shape[2:])
    similarity = DiffusionFeatureSimilarity(adm2d, mode=mode, cache_dir=str(tmp_path))
    moving = torch.roll(slice_tensor, shifts=2, dims=3)
    similarity.prepare(slice_tensor, moving, grid_of(shape), grid_of(shape))
    grid = identity_grid(shape).requires_grad_(True)
    similarity.mapped_loss(slice_tensor, moving, grid).backward()
    assert grid.grad is not None and grid.grad.abs().sum() > 0
    assert all(p.grad is None for p in similarity.extractor_for(2, slice_tensor.device).parameters())


def _lncc_scipy(fixed: np.ndarray, warped: np.ndarray, sigma: float, eps: float = 1e-6) -> float:
    """-mean local NCC over the last two axes, written independently: scipy Gaussian window (truncated
    at 3 sigma, zero padding renormalised by the filtered ones) in float64."""
    from scipy import ndimage

    axes = (fixed.ndim - 2, fixed.ndim - 1)

    def smooth(a):
        sigmas = [0.0] * (a.ndim - 2) + [sigma, sigma]
        return ndimage.gaussian_filter(a, sigmas, mode="constant", truncate=3.0) / \
            ndimage.gaussian_filter(np.ones_like(a), sigmas, mode="constant", truncate=3.0)

    mu_f, mu_m = smooth(fixed), smooth(warped)
    var_f, var_m = smooth(fixed * fixed) - mu_f ** 2, smooth(warped * warped) - mu_m ** 2
    cc = (smooth(fixed * warped) - mu_f * mu_m) / np.sqrt((var_f.clip(0) + eps) * (var_m.clip(0) + eps))
    assert cc.shape[-2:] == tuple(fixed.shape[a] for a in axes)
    return -float(cc.mean())


def _shifted(image: np.ndarray, shift) -> np.ndarray:
    """image(x + shift) by linear interpolation, border values outside (scipy, not the code under test)."""
    from scipy import ndimage

    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in image.shape], indexing="ij")
    return ndimage.map_coordinates(image, [g + s for g, s in zip(grid, shift)], order=1, mode="nearest")


def _translation_grid(shape, shift) -> torch.Tensor:
    return identity_grid(shape, shift_voxels=shift).requires_grad_(True)


@pytest.mark.parametrize("shift", [(1.5, -2.25), (-0.4, 3.7)])
def test_2d_fast_mode_with_image_features_is_lncc_of_the_shifted_image(slice_tensor, tmp_path, shift):
    """Known answer: with `image` features (the image itself) the fast mode's warped cached features are
    the shifted image, so its loss is LNCC of the fixed and the shifted moving image, and its gradient
    along the shift is that LNCC's derivative (both computed here with scipy)."""
    fixed = slice_tensor
    moving = torch.roll(slice_tensor, shifts=(1, -2), dims=(2, 3)) * 0.8 + 0.1
    shape = tuple(fixed.shape[2:])
    similarity = DiffusionFeatureSimilarity("image", mode="fast", sigma=2.0, cache=False)
    similarity.prepare(fixed, moving, grid_of(shape), grid_of(shape))
    grid = _translation_grid(shape, shift)
    loss = similarity.mapped_loss(fixed, moving, grid)
    loss.backward()
    f, m = fixed[0, 0].double().numpy(), moving[0, 0].double().numpy()
    expected = _lncc_scipy(f, _shifted(m, shift), sigma=2.0)
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-4)
    h = 0.02  # inside one interpolation cell, where the loss is smooth
    for axis in range(2):
        plus, minus = list(shift), list(shift)
        plus[axis] += h
        minus[axis] -= h
        numeric = (_lncc_scipy(f, _shifted(m, plus), 2.0) - _lncc_scipy(f, _shifted(m, minus), 2.0)) / (2 * h)
        analytic = float(grid.grad[..., 1 - axis].sum()) * 2 / (shape[axis] - 1)  # d/d(voxel shift)
        assert analytic == pytest.approx(numeric, rel=0.02, abs=1e-4)
    assert similarity.extraction_calls == 2  # fixed and moving once each: the moving image is not re-extracted


def test_3d_fast_mode_with_image_features_is_triplanar_lncc_of_the_shifted_volume(volume_tensor):
    """Known answer in 3D: with `image` features and every slice cached (slice_stride 1), the tri-planar
    fast loss is the mean over the three axes of the slice-wise 2D LNCC of the fixed volume and the
    shifted moving volume (scipy)."""
    fixed = volume_tensor
    moving = torch.roll(volume_tensor, shifts=(1, 0, -1), dims=(2, 3, 4))
    shape = tuple(fixed.shape[2:])
    shift = (0.6, -1.3, 2.2)
    similarity = DiffusionFeatureSimilarity("image", mode="fast", sigma=2.0, slice_stride=1, cache=False)
    similarity.prepare(fixed, moving, grid_of(shape), grid_of(shape))
    with torch.no_grad():
        loss = float(similarity.mapped_loss(fixed, moving, identity_grid(shape, shift_voxels=shift)))
    f = fixed[0, 0].double().numpy()
    w = _shifted(moving[0, 0].double().numpy(), shift)
    expected = np.mean([_lncc_scipy(np.moveaxis(f, axis, 0), np.moveaxis(w, axis, 0), 2.0) for axis in range(3)])
    assert loss == pytest.approx(expected, abs=1e-4)


def test_3d_fast_mode_maps_identity_exactly_and_passes_gradients(volume_tensor, adm3d, tmp_path):
    shape = tuple(volume_tensor.shape[2:])
    extractor = adm3d
    similarity = DiffusionFeatureSimilarity(extractor, mode="fast", slice_stride=5, cache_dir=str(tmp_path))
    similarity.prepare(volume_tensor, volume_tensor, grid_of(shape), grid_of(shape))
    with torch.no_grad():
        assert float(similarity.mapped_loss(volume_tensor, volume_tensor, identity_grid(shape))) == pytest.approx(-1.0, abs=1e-3)
    moving = torch.roll(volume_tensor, shifts=2, dims=4)
    similarity.prepare(volume_tensor, moving, grid_of(shape), grid_of(shape))
    grid = identity_grid(shape).requires_grad_(True)
    loss = similarity.mapped_loss(volume_tensor, moving, grid)
    assert loss.item() > -0.99
    loss.backward()
    assert grid.grad.abs().sum() > 0


def test_3d_fast_mode_can_sample_cached_slices_per_step(volume_tensor, adm3d, tmp_path):
    shape = tuple(volume_tensor.shape[2:])
    moving = torch.roll(volume_tensor, shifts=2, dims=2)
    runs = []
    for _ in range(2):
        similarity = DiffusionFeatureSimilarity(adm3d, mode="fast", slice_stride=3, step_slices=2, slice_seed=5,
                                                cache_dir=str(tmp_path))
        similarity.prepare(volume_tensor, moving, grid_of(shape), grid_of(shape))
        grid = identity_grid(shape).requires_grad_(True)
        losses = []
        for _ in range(3):
            loss = similarity.mapped_loss(volume_tensor, moving, grid)
            axes, sel = similarity.strategy.state.last_slices
            assert len(axes) == 1 and len(sel) == 2
            losses.append((float(loss.detach()), axes[0], tuple(sel)))
        loss.backward()
        assert grid.grad.abs().sum() > 0
        runs.append(losses)
    assert runs[0] == runs[1]


def test_3d_exact_mode_uses_four_seeded_slices_along_one_axis(volume_tensor, adm3d, tmp_path):
    shape = tuple(volume_tensor.shape[2:])
    moving = torch.roll(volume_tensor, shifts=1, dims=3)
    runs = []
    for _ in range(2):
        extractor = counting(adm3d)
        similarity = DiffusionFeatureSimilarity(extractor, mode="exact", slice_seed=7, cache_dir=str(tmp_path))
        similarity.prepare(volume_tensor, moving, grid_of(shape), grid_of(shape))
        grid = identity_grid(shape).requires_grad_(True)
        losses, slices = [], []
        for _ in range(2):
            before = extractor.calls
            loss = similarity.mapped_loss(volume_tensor, moving, grid)
            axis, index = similarity.strategy.state.last_slices
            assert len(index) == 4 == len(set(index)) and 0 <= axis < 3
            assert all(0 <= i < shape[axis] for i in index)
            assert 4 <= extractor.calls - before <= 8  # 4 warped slices, plus fixed slices not seen before
            losses.append(float(loss.detach()))
            slices.append((axis, index))
        loss.backward()
        assert grid.grad.abs().sum() > 0
        runs.append((losses, slices))
    assert runs[0] == runs[1]


def test_on_disk_cache_is_hit_the_second_time(slice_tensor, volume_tensor, adm2d, adm3d, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFREG_FEATURE_CACHE", str(tmp_path / "cache"))
    for image, dim in ((slice_tensor, 2), (volume_tensor, 3)):
        shape = tuple(image.shape[2:])
        moving = torch.flip(image, dims=[-1])
        counts, losses = [], []
        for _ in range(2):
            extractor = counting(adm2d if dim == 2 else adm3d)
            similarity = DiffusionFeatureSimilarity(extractor, mode="fast", slice_stride=4)
            similarity.prepare(image, moving, grid_of(shape), grid_of(shape))
            with torch.no_grad():
                losses.append(float(similarity.mapped_loss(image, moving, identity_grid(shape))))
            counts.append(extractor.calls)
        assert counts[0] > 0 and counts[1] == 0
        assert losses[0] == losses[1]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4
    # another tap or timestep is another entry
    extractor = counting(adm2d, timestep=100)
    similarity = DiffusionFeatureSimilarity(extractor, mode="fast")
    similarity.prepare(slice_tensor, slice_tensor, grid_of(slice_tensor.shape[2:]), grid_of(slice_tensor.shape[2:]))
    assert extractor.calls == 1


def test_built_by_name_from_a_spec(slice_tensor, tmp_path):
    similarity = build_similarity("diffusion", extractor={"backbone": "adm-small-random", "seed": 1},
                                  mode="fast", measure="cosine", cache_dir=str(tmp_path))
    shape = tuple(slice_tensor.shape[2:])
    similarity.prepare(slice_tensor, slice_tensor, grid_of(shape), grid_of(shape))
    with torch.no_grad():
        assert float(similarity.mapped_loss(slice_tensor, slice_tensor, identity_grid(shape))) == pytest.approx(-1.0, abs=1e-5)
    assert similarity.extractor_for(2, slice_tensor.device).timestep == 60
    assert list(similarity.parameters()) == []  # the frozen network is not part of the loss's state
