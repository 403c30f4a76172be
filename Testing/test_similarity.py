"""Intensity similarities on real image patches: analytic values at identity, independent numpy/scipy
references, finite-difference gradients, masks, multi-modal preference and parameter errors.

Images: BrainT1Slice.png / BrainProtonDensitySlice.png (aligned BrainWeb T1 and PD slices) and a crop of
Colin27 (ch2.nii.gz). Gradient checks run in float64 (the measures follow the input dtype).
"""
import functools
import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from DiffusionRegistrationLib.io.data import COLIN_T1, ITK_PD_SLICE, ITK_T1_SLICE, data_file
from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.similarity import build_similarity, similarity_names
from DiffusionRegistrationLib.similarity.intensity import MINDSSC
from DiffusionRegistrationLib.geometry.spatial import sample

MEASURES = ["mse", "ncc", "lncc", "mi", "ngf", "mind"]
DIMS = [2, 3]
CENTRE = {2: (112, 90), 3: (90, 108, 90)}  # inside the brain, (z,) y, x


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one thread avoids thread start-up waits on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _load(relative: str) -> np.ndarray:
    try:
        path = data_file(relative)
    except RegistrationError as error:
        pytest.skip(str(error))
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)
    return (array[..., 0] if relative.endswith(".png") else array) / 255.0


@functools.lru_cache(maxsize=None)
def _rotated(relative: str, degrees: float) -> np.ndarray:
    return ndimage.rotate(_load(relative), degrees, axes=(-2, -1), reshape=False, order=1)


def patch(dim: int, size: int, shift: tuple[int, int] = (0, 0), degrees: float = 0.0,
          modality: str = "t1") -> np.ndarray:
    """A size^dim crop around CENTRE; `shift` moves the window in (y, x), `degrees` rotates in-plane first."""
    source = COLIN_T1 if dim == 3 else {"t1": ITK_T1_SLICE, "pd": ITK_PD_SLICE}[modality]
    image = _rotated(source, degrees) if degrees else _load(source)
    offsets = (0,) * (dim - 2) + tuple(shift)
    return image[tuple(slice(c - size // 2 + o, c - size // 2 + o + size)
                       for c, o in zip(CENTRE[dim], offsets))].copy()


def tensor(array: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(array, dtype=dtype)[None, None]


def loss(sim, fixed: np.ndarray, warped: np.ndarray, mask=None, dtype=torch.float64) -> float:
    return float(sim(tensor(fixed, dtype), tensor(warped, dtype), None if mask is None else tensor(mask, dtype)))


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def quantised(image: np.ndarray, bins: int = 32) -> np.ndarray:
    return np.round(image * (bins - 1)) / (bins - 1)


def histogram_entropy(image: np.ndarray, bins: int = 32) -> float:
    _, counts = np.unique(np.round(image * (bins - 1)).astype(int), return_counts=True)
    return entropy(counts / counts.sum())


def ngf_identity(image: np.ndarray, eps: float = 0.01) -> float:
    squared = sum(g ** 2 for g in np.gradient(image))
    return float(np.mean(1.0 - (squared / (squared + eps ** 2)) ** 2))


# name -> (parameters, image preparation, analytic loss of an image against itself)
IDENTITY = {
    "mse": ({}, lambda a: a, lambda a: 0.0),
    "ncc": ({}, lambda a: a, lambda a: -1.0),
    "lncc": ({"eps": 1e-9}, lambda a: a, lambda a: -1.0),
    # a narrow kernel on an image quantised to bin centres makes the joint histogram diagonal
    "mi": ({"kernel": "gaussian", "sigma": 0.05, "max_samples": 0}, quantised, lambda a: -histogram_entropy(a)),
    "ngf": ({"eps": 0.01}, lambda a: a, ngf_identity),
    "mind": ({}, lambda a: a, lambda a: 0.0),
}


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", MEASURES)
def test_identity_is_analytic_extremum(name, dim):
    params, prepare, expected = IDENTITY[name]
    sim = build_similarity(name, **params)
    size = 40 if dim == 2 else 20
    image = prepare(patch(dim, size))
    at_identity = sim(tensor(image), tensor(image))
    assert at_identity.dtype == torch.float32 and at_identity.dim() == 0
    assert float(at_identity) == pytest.approx(expected(image), abs=2e-4)
    for moved in (patch(dim, size, shift=(2, -3)), patch(dim, size, degrees=10.0)):
        assert loss(sim, image, prepare(moved), dtype=torch.float32) > float(at_identity) + 1e-3


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("normalized", [False, True])
def test_mi_bspline_matches_numpy_parzen_histogram(dim, normalized):
    """Cubic B-spline Parzen weights at bin centres are 1/6, 2/3, 1/6: the joint histogram is known exactly."""
    bins = 32
    index = 2 + np.round(patch(dim, 40 if dim == 2 else 16) * (bins - 5)).astype(int)  # interior bins only
    image = index / (bins - 1)
    spread = np.zeros((bins, bins))
    for k in range(1, bins - 1):
        spread[k, k - 1:k + 2] = [1 / 6, 2 / 3, 1 / 6]
    h = np.bincount(index.ravel(), minlength=bins) / index.size
    joint = spread.T @ np.diag(h) @ spread
    h_marginal, h_joint = entropy(joint.sum(0)), entropy(joint)
    expected = -2 * h_marginal / h_joint if normalized else -(2 * h_marginal - h_joint)
    sim = build_similarity("mi", kernel="bspline", bins=bins, normalized=normalized)
    assert loss(sim, image, image) == pytest.approx(expected, abs=1e-9)


def _lncc_reference(fixed, warped, mask, window, size):
    """Local NCC with scipy filters: zero padding renormalised by the filtered mask, as documented."""
    if window == "gaussian":
        smooth = functools.partial(ndimage.gaussian_filter, sigma=size, mode="constant", truncate=3.0)
    else:
        smooth = functools.partial(ndimage.uniform_filter, size=2 * size + 1, mode="constant")
    m = np.ones_like(fixed) if mask is None else (mask > 0).astype(float)
    norm = np.maximum(smooth(m), 1e-12)  # 0 only far outside the mask, where nothing is averaged
    mean = {k: smooth(m * v) / norm for k, v in
            {"f": fixed, "w": warped, "ff": fixed ** 2, "ww": warped ** 2, "fw": fixed * warped}.items()}
    var_f = np.maximum(mean["ff"] - mean["f"] ** 2, 0.0)
    var_w = np.maximum(mean["ww"] - mean["w"] ** 2, 0.0)
    local = (mean["fw"] - mean["f"] * mean["w"] + 1e-5) / np.sqrt((var_f + 1e-5) * (var_w + 1e-5))
    return -float(local[m > 0].mean())


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("window,size", [("gaussian", 1.5), ("box", 2)])
def test_lncc_matches_scipy_reference(window, size, dim, masked):
    n = 32 if dim == 2 else 16
    fixed, warped = patch(dim, n), patch(dim, n, shift=(1, 2), modality="pd")
    mask = None
    if masked:
        mask = np.zeros_like(fixed)
        mask[(slice(2, -5),) * dim] = 1
    params = {"sigma": size} if window == "gaussian" else {"radius": size}
    sim = build_similarity("lncc", window=window, eps=1e-5, **params)
    assert loss(sim, fixed, warped, mask) == pytest.approx(_lncc_reference(fixed, warped, mask, window, size),
                                                          abs=1e-10)


@pytest.mark.parametrize("dim", DIMS)
def test_ngf_matches_numpy_gradients(dim):
    fixed, warped = patch(dim, 24), patch(dim, 24, shift=(2, 1), modality="pd")
    eps = 0.02
    gf, gw = np.gradient(fixed), np.gradient(warped)
    dot = sum(a * b for a, b in zip(gf, gw))
    norm = np.sqrt((sum(a * a for a in gf) + eps ** 2) * (sum(b * b for b in gw) + eps ** 2))
    assert loss(build_similarity("ngf", eps=eps), fixed, warped) == pytest.approx(
        float(np.mean(1 - (dot / norm) ** 2)), abs=1e-12)


def _mind_reference(image: np.ndarray, radius: int, dilation: int):
    """Direct MIND-SSC (one patch distance per neighbour pair), valid away from the border."""
    dim = image.ndim
    axes = tuple(range(dim))
    neighbours = [np.eye(dim, dtype=int)[a] * s for a in range(dim) for s in (-1, 1)]
    pairs = [(p, q) for p, q in itertools.combinations(neighbours, 2) if p @ q == 0]
    distances = []
    for p, q in pairs:
        squared = (np.roll(image, tuple(-dilation * p), axes) - np.roll(image, tuple(-dilation * q), axes)) ** 2
        box = sum(np.roll(squared, tuple(-np.array(o)), axes)
                  for o in itertools.product(range(-radius, radius + 1), repeat=dim))
        distances.append(box / (2 * radius + 1) ** dim)
    inner = (slice(None),) + (slice(2 * dilation + radius, -(2 * dilation + radius)),) * dim
    distance = np.stack(distances)[inner]
    distance = distance - distance.min(0)
    return np.exp(-distance / distance.mean(0)), inner


@pytest.mark.parametrize("dim", DIMS)
def test_mind_descriptor_matches_direct_computation(dim):
    """In the interior (where the variance is not clamped) the descriptor equals the textbook formula."""
    image = np.random.default_rng(dim).random((30, 34) if dim == 2 else (18, 20, 22))
    expected, inner = _mind_reference(image, radius=2, dilation=2)
    ours = MINDSSC(radius=2, dilation=2).descriptor(tensor(image, torch.float64))[0].numpy()
    assert ours.shape[0] == (4 if dim == 2 else 12)
    np.testing.assert_allclose(ours[inner], expected, atol=1e-12)


FD_PARAMS = {"lncc": {"sigma": 1.5}, "mi": {"bins": 16}, "mind": {"radius": 1, "dilation": 1}}


def _fd_pair(dim: int):
    n = 20 if dim == 2 else 10
    rng = np.random.default_rng(7)
    fixed = patch(dim, n)
    moving = patch(dim, n, shift=(1, 2), modality="pd" if dim == 2 else "t1") + 0.02 * rng.random((n,) * dim)
    mask = np.zeros_like(fixed)
    mask[(slice(1, -3),) * dim] = 1
    return tensor(fixed, torch.float64), tensor(moving, torch.float64), tensor(mask, torch.float64), rng


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", MEASURES)
def test_gradient_wrt_warped_matches_finite_differences(name, dim, masked):
    fixed, warped, mask, rng = _fd_pair(dim)
    mask = mask if masked else None
    sim = build_similarity(name, **FD_PARAMS.get(name, {}))
    warped.requires_grad_(True)
    (gradient,) = torch.autograd.grad(sim(fixed, warped, mask), warped)
    direction = torch.tensor(rng.standard_normal(warped.shape))
    h = 1e-7  # small: MIND's min over pairs switches where two patch distances nearly tie
    with torch.no_grad():
        numeric = (sim(fixed, warped + h * direction, mask) - sim(fixed, warped - h * direction, mask)) / (2 * h)
    assert float((gradient * direction).sum()) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)


def identity_grid(shape) -> torch.Tensor:
    axes = [torch.linspace(-1, 1, n, dtype=torch.float64) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1)[None]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", MEASURES)
def test_gradient_wrt_translation_matches_finite_differences(name, dim):
    fixed, moving, mask, _ = _fd_pair(dim)
    sim = build_similarity(name, **FD_PARAMS.get(name, {}))
    grid = identity_grid(fixed.shape[2:])
    shift = torch.tensor([0.031, -0.047, 0.023][:dim], dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(sim.mapped_loss(fixed, moving, grid + shift, mask), shift)
    h = 1e-7
    for axis in range(dim):
        step = torch.zeros(dim, dtype=torch.float64)
        step[axis] = h
        with torch.no_grad():
            numeric = (sim.mapped_loss(fixed, moving, grid + shift.detach() + step, mask)
                       - sim.mapped_loss(fixed, moving, grid + shift.detach() - step, mask)) / (2 * h)
        assert float(gradient[axis]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-7)


CROP_EXACT = [("mse", {}), ("ncc", {}), ("lncc", {}), ("lncc", {"window": "box", "radius": 3}),
              ("mi", {"max_samples": 0})]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name,params", CROP_EXACT)
def test_masked_loss_equals_loss_on_cropped_region(name, params, dim):
    n = 36 if dim == 2 else 18
    fixed, warped = patch(dim, n), patch(dim, n, shift=(2, 1))
    region = (slice(4, n - 9),) * (dim - 1) + (slice(6, n - 3),)
    mask = np.zeros_like(fixed)
    mask[region] = 1
    sim = build_similarity(name, **params)
    assert loss(sim, fixed, warped, mask) == pytest.approx(loss(sim, fixed[region], warped[region]), abs=1e-10)


# How far outside the mask a measure looks: stencils of NGF (1 voxel) and MIND (dilation + radius).
REACH = {"mse": 0, "ncc": 0, "lncc": 0, "mi": 0, "ngf": 1, "mind": 4}


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", MEASURES)
def test_mask_makes_loss_insensitive_outside(name, dim):
    n = 40 if dim == 2 else 20
    fixed, warped = patch(dim, n), patch(dim, n, shift=(1, -2))
    region = (slice(n // 4, 3 * n // 4),) * dim
    mask = np.zeros_like(fixed)
    mask[region] = 1
    reach = REACH[name]
    outside = np.ones_like(fixed, dtype=bool)
    outside[tuple(slice(s.start - reach, s.stop + reach) for s in region)] = False
    changed = warped.copy()
    changed[outside] = np.random.default_rng(3).random(int(outside.sum()))
    sim = build_similarity(name)
    assert loss(sim, fixed, changed, mask) == pytest.approx(loss(sim, fixed, warped, mask), abs=1e-12)
    assert abs(loss(sim, fixed, changed) - loss(sim, fixed, warped)) > 1e-4  # the change itself matters


@pytest.mark.parametrize("shift", [(3, 0), (-3, 0), (0, 3), (0, -3)])
@pytest.mark.parametrize("name", ["mi", "ngf", "mind"])
def test_multimodal_measures_prefer_aligned_t1_pd(name, shift):
    sim = build_similarity(name)
    t1, pd = patch(2, 140), patch(2, 140, modality="pd")
    assert loss(sim, t1, pd) < loss(sim, t1, patch(2, 140, shift=shift, modality="pd"))


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", MEASURES)
def test_batch_loss_is_mean_of_pairs(name, dim):
    n = 24 if dim == 2 else 12
    fixed = [patch(dim, n), patch(dim, n, shift=(3, 3))]
    warped = [patch(dim, n, shift=(1, 0)), patch(dim, n, shift=(2, 4))]
    masks = [np.ones_like(fixed[0]), np.zeros_like(fixed[0])]
    masks[1][(slice(2, -2),) * dim] = 1
    params = {"max_samples": 0} if name == "mi" else {}
    sim = build_similarity(name, **params)
    batch = sim(*(torch.tensor(np.stack(x)[:, None]) for x in (fixed, warped, masks)))
    single = [loss(sim, f, w, m) for f, w, m in zip(fixed, warped, masks)]
    assert float(batch) == pytest.approx(np.mean(single), abs=1e-12)


def test_mi_subsampling_is_seeded_and_mapped_loss_matches_forward():
    fixed, moving = tensor(patch(2, 40)), tensor(patch(2, 40, shift=(1, 1), modality="pd"))
    grid = identity_grid((40, 40)).float() + 0.02
    mask = torch.zeros_like(fixed)
    mask[..., 5:35, 3:30] = 1
    for m in (None, mask):
        first, second, other = (build_similarity("mi", max_samples=300, seed=s) for s in (1, 1, 2))
        mapped = first.mapped_loss(fixed, moving, grid, m)
        assert float(second(fixed, sample(moving, grid), m)) == pytest.approx(float(mapped), abs=1e-6)
        assert float(other.mapped_loss(fixed, moving, grid, m)) != pytest.approx(float(mapped), abs=1e-6)


@pytest.mark.parametrize("name", ["lncc", "ngf", "mind"])
def test_cached_fixed_quantities_follow_in_place_changes(name):
    fixed, warped = tensor(patch(2, 24)), tensor(patch(2, 24, shift=(1, 1)))
    sim = build_similarity(name)
    sim(fixed, warped)
    fixed.mul_(0.5).add_(torch.linspace(0, 0.3, 24))
    assert float(sim(fixed, warped)) == pytest.approx(float(build_similarity(name)(fixed, warped)), abs=1e-7)


def test_all_measures_registered():
    assert set(MEASURES) <= set(similarity_names())


@pytest.mark.parametrize("name,params,word", [
    *[(name, {"no_such_option": 1}, "no_such_option") for name in MEASURES],
    ("ncc", {"eps": 0}, "eps"), ("lncc", {"sigma": -1}, "sigma"), ("lncc", {"window": "disc"}, "window"),
    ("lncc", {"radius": 0}, "radius"), ("mi", {"bins": 2}, "bins"), ("mi", {"kernel": "box"}, "kernel"),
    ("mi", {"max_samples": -5}, "max_samples"), ("ngf", {"eps": -0.1}, "eps"), ("mind", {"norm": "l3"}, "norm"),
    ("mind", {"dilation": 0}, "dilation")])
def test_bad_parameters_raise_registration_error(name, params, word):
    with pytest.raises(RegistrationError, match=word):
        build_similarity(name, **params)


@pytest.mark.parametrize("name", MEASURES)
def test_mismatched_shapes_raise_registration_error(name):
    sim = build_similarity(name)
    with pytest.raises(RegistrationError, match="shape"):
        sim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(RegistrationError, match="mask"):
        sim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 4, 4))


@pytest.mark.parametrize("masked", [False, True])
def test_lncc_gradient_for_batches_and_channels_matches_finite_differences(masked):
    rng = np.random.default_rng(3)
    fixed = torch.tensor(rng.random((2, 2, 9, 11)))
    warped = (0.7 * fixed + 0.3 * torch.tensor(rng.random((2, 2, 9, 11)))).requires_grad_(True)
    mask = torch.tensor((rng.random((2, 1, 9, 11)) > 0.3).astype(np.float64)) if masked else None
    sim = build_similarity("lncc", sigma=1.5)
    (gradient,) = torch.autograd.grad(sim(fixed, warped, mask), warped)
    direction = torch.tensor(rng.standard_normal(warped.shape))
    h = 1e-7
    with torch.no_grad():
        numeric = (sim(fixed, warped + h * direction, mask) - sim(fixed, warped - h * direction, mask)) / (2 * h)
    assert float((gradient * direction).sum()) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)


def test_mi_reuses_the_fixed_weights_only_while_the_fixed_image_is_unchanged():
    """Mutual information keeps the fixed image's Parzen weights between steps when every voxel enters the
    histogram; a step with another moving image, or after the fixed image changed in place, must give what a
    fresh measure (nothing kept) gives."""
    generator = torch.Generator().manual_seed(3)
    fixed, first, second = (torch.rand(1, 1, 12, 10, generator=generator) for _ in range(3))
    identity = F.affine_grid(torch.eye(2, 3)[None], [1, 1, 12, 10], align_corners=True)
    kept = build_similarity("mi", max_samples=0)

    def fresh(moving):
        return build_similarity("mi", max_samples=0).mapped_loss(fixed, moving, identity)

    assert kept.mapped_loss(fixed, first, identity) == pytest.approx(float(fresh(first)), abs=1e-7)
    assert kept.mapped_loss(fixed, second, identity) == pytest.approx(float(fresh(second)), abs=1e-7)
    fixed.mul_(0.5).add_(0.25)
    assert kept.mapped_loss(fixed, second, identity) == pytest.approx(float(fresh(second)), abs=1e-7)
    assert float(fresh(second)) != pytest.approx(float(fresh(first)), abs=1e-4)
