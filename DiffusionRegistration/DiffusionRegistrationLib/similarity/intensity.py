"""Intensity similarities: MSE, NCC, LNCC, mutual information, NGF and MIND-SSC.

All take images [B, C, *spatial] (2D or 3D, any batch, device and floating dtype; C is usually 1) and an
optional mask [B or 1, 1, *spatial] in fixed space: only voxels where mask > 0 count. They return a
scalar loss, lower is better, averaged over the batch (each pair weighs the same).

The registration engine calls a measure hundreds of times with the same fixed image (and mask), so
what depends on the fixed image alone (local moments, gradients, descriptors) is computed once and
reused while the same, unchanged, non-differentiable tensors come back (`_FixedCache`).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import RegistrationError
from ..geometry.spatial import sample, separable_filter
from .base import Similarity
from .local_ncc import box_window, filtered_ones, fixed_moments, gaussian_window, local_ncc

Tensor = torch.Tensor


def _mask_weights(name: str, fixed: Tensor, warped: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    """Validates shapes; returns the mask as 0/1 weights [B, 1, *spatial] in the images' dtype (or None)."""
    if fixed.dim() not in (4, 5):
        raise RegistrationError(f"similarity '{name}': images must be [B, C, H, W] or [B, C, D, H, W], "
                                f"got shape {tuple(fixed.shape)}.")
    if fixed.shape != warped.shape:
        raise RegistrationError(f"similarity '{name}': fixed {tuple(fixed.shape)} and warped "
                                f"{tuple(warped.shape)} images differ in shape; resample onto the fixed grid.")
    if mask is None:
        return None
    spatial = fixed.shape[2:]
    if mask.dim() != fixed.dim() or mask.shape[1] != 1 or mask.shape[2:] != spatial \
            or mask.shape[0] not in (1, fixed.shape[0]):
        raise RegistrationError(f"similarity '{name}': mask shape {tuple(mask.shape)} does not fit images "
                                f"{tuple(fixed.shape)}; give a mask [B or 1, 1, *spatial] on the fixed grid.")
    return (mask > 0).to(fixed.dtype).expand(fixed.shape[0], 1, *spatial)


def _masked_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of values [B, C, *spatial] over channels and voxels with mask > 0, per pair, then over the batch."""
    dims = tuple(range(1, values.dim()))
    if mask is None:
        return values.mean(dims).mean()
    total = (values * mask).sum(dims)
    count = mask.sum(dims).clamp_min(1.0) * values.shape[1]
    return (total / count).mean()


def _positive(name: str, parameter: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise RegistrationError(f"similarity '{name}': {parameter} must be a positive number, not {value!r}.")
    return float(value)


def _positive_int(name: str, parameter: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RegistrationError(f"similarity '{name}': {parameter} must be an integer >= {minimum}, "
                                f"not {value!r}.")
    return value


def _choice(name: str, parameter: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise RegistrationError(f"similarity '{name}': {parameter} must be one of {', '.join(allowed)}, "
                                f"not {value!r}.")
    return value


class _FixedCache:
    """Holds one value derived from some tensors; reused while the very same unchanged tensors come back.

    Only tensors that do not require gradients are cached (their derived values are constants), and the
    tensors are kept referenced, so identity plus the in-place version counter identify them safely.
    """

    def __init__(self) -> None:
        self._tensors: tuple = ()
        self._versions: tuple = ()
        self._value = None

    def get(self, compute: Callable[[], object], *tensors: Optional[Tensor]):
        if torch.is_inference_mode_enabled() or any(t is not None and t.requires_grad for t in tensors):
            return compute()
        versions = tuple(None if t is None else t._version for t in tensors)
        same = len(tensors) == len(self._tensors) and all(a is b for a, b in zip(tensors, self._tensors))
        if not (same and versions == self._versions):
            self._tensors, self._versions, self._value = tensors, versions, compute()
        return self._value


class MeanSquaredError(Similarity):
    """Mean squared intensity difference; for images of the same contrast."""

    def forward(self, fixed: Tensor, warped: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = _mask_weights("mse", fixed, warped, mask)
        return _masked_mean((fixed - warped) ** 2, mask)


class NormalizedCrossCorrelation(Similarity):
    """Global normalised cross-correlation per pair and channel; loss = -NCC (-1 for identical images).

    Invariant to a linear intensity change; `eps` keeps constant images finite (their NCC is 0).
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = _positive("ncc", "eps", eps)

    def forward(self, fixed: Tensor, warped: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = _mask_weights("ncc", fixed, warped, mask)
        dims = tuple(range(2, fixed.dim()))
        if mask is None:
            def average(x: Tensor) -> Tensor:
                return x.mean(dims, keepdim=True)
        else:
            count = mask.sum(dims, keepdim=True).clamp_min(1.0)

            def average(x: Tensor) -> Tensor:
                return (x * mask).sum(dims, keepdim=True) / count
        f, w = fixed - average(fixed), warped - average(warped)
        cov, var_f, var_w = average(f * w), average(f * f), average(w * w)
        return -(cov * torch.rsqrt(var_f * var_w + self.eps)).mean()


class LocalNormalizedCrossCorrelation(Similarity):
    """Local NCC in a Gaussian (`sigma`, voxels) or box (`radius`, voxels) window; loss = -mean local NCC.

    Local moments come from separable convolutions; near the border and the mask edge they are
    renormalised by the filtered mask, so windows use only voxels inside the image and the mask.
    Local NCC = (cov + eps) / sqrt((var_f + eps) (var_w + eps)) (local_ncc with eps_in_covariance): 1
    exactly where the warped image equals the fixed one, so an image registered to itself stays put.
    """

    def __init__(self, window: str = "gaussian", sigma: float | Sequence[float] = 2.0, radius: int = 2,
                 eps: float = 1e-5):
        super().__init__()
        self.window = _choice("lncc", "window", window, ("gaussian", "box"))
        sigmas = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
        self.sigma = [_positive("lncc", "sigma", s) for s in sigmas]
        self.radius = _positive_int("lncc", "radius", radius)
        self.eps = _positive("lncc", "eps", eps)
        self._fixed = _FixedCache()

    def _kernels(self, image: Tensor) -> list[Tensor]:
        dim = image.dim() - 2
        if self.window == "box":
            return box_window(self.radius, dim, image)
        if len(self.sigma) not in (1, dim):
            raise RegistrationError(f"similarity 'lncc': sigma needs 1 or {dim} values for {dim}D images, "
                                    f"got {len(self.sigma)}.")
        return gaussian_window(self.sigma[0] if len(self.sigma) == 1 else self.sigma, dim, image)

    def forward(self, fixed: Tensor, warped: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        given, mask = mask, _mask_weights("lncc", fixed, warped, mask)
        kernels = self._kernels(fixed)
        # keyed on the mask as given (the weights are a new tensor at every call)
        moments = self._fixed.get(lambda: fixed_moments(fixed, kernels, mask), fixed, given)
        local = local_ncc(fixed, warped, kernels, self.eps, mask, moments, eps_in_covariance=True)
        return -_masked_mean(local, mask)


def _cubic_bspline(u: Tensor) -> Tensor:
    """Cubic B-spline kernel (support |u| < 2, sums to 1 over integer shifts)."""
    a = u.abs()
    inner = (4.0 - 6.0 * a * a + 3.0 * a * a * a) / 6.0
    outer = (2.0 - a).clamp_min(0.0) ** 3 / 6.0
    return torch.where(a < 1.0, inner, outer)


_GAUSS_CUTOFF = 4.0  # Parzen Gaussian support, in sigmas
_GAUSS_FLOOR = math.exp(-0.5 * _GAUSS_CUTOFF ** 2)


def _entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum()


class MutualInformation(Similarity):
    """Mutual information from a Parzen-window joint histogram; loss = -MI (or -NMI with `normalized`).

    Intensities are clipped to [0, 1] and spread over `bins` bins (centres k/(bins-1)) with a Gaussian
    kernel (`sigma` in bin widths, cut at 4 sigma) or a cubic B-spline kernel (Mattes), so the loss is
    differentiable.
    Only voxels with mask > 0 enter the histogram. When more than `max_samples` voxels qualify, a new
    random sample of that size (with replacement) is drawn at every call from a generator seeded with
    `seed`; max_samples=0 uses all.
    NMI = (H(f) + H(w)) / H(f, w), between 1 and 2. The histogram is a [N, bins]^T [N, bins] product,
    never an [N, bins, bins] tensor.
    """

    def __init__(self, bins: int = 32, kernel: str = "gaussian", sigma: float = 0.5,
                 max_samples: int = 65536, seed: int = 0, normalized: bool = False):
        super().__init__()
        self.bins = _positive_int("mi", "bins", bins, 4)
        self.kernel = _choice("mi", "kernel", kernel, ("gaussian", "bspline"))
        self.sigma = _positive("mi", "sigma", sigma)
        if not isinstance(max_samples, int) or isinstance(max_samples, bool) or max_samples < 0:
            raise RegistrationError(f"similarity 'mi': max_samples must be an integer >= 0 (0 = all voxels), "
                                    f"not {max_samples!r}.")
        self.max_samples = max_samples
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RegistrationError(f"similarity 'mi': seed must be an integer, not {seed!r}.")
        self.normalized = bool(normalized)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._fixed_weights = _FixedCache()

    @property
    def stochastic(self) -> bool:
        return self.max_samples > 0

    def reseed(self, seed: int) -> None:
        """Restarts the sampling generator at this measure's seed offset by a run's `seed`."""
        self._generator = torch.Generator().manual_seed(self.seed + int(seed))

    def _select(self, mask_b: Optional[Tensor], count: int, device: torch.device) -> Optional[Tensor]:
        """Flat voxel indices of one pair that enter the histogram (None = all voxels)."""
        candidates = None if mask_b is None else torch.nonzero(mask_b.reshape(-1) > 0).reshape(-1)
        available = count if candidates is None else candidates.numel()
        if self.max_samples and available > self.max_samples:
            # drawn with replacement: O(max_samples), where a permutation of all voxels is O(voxels)
            chosen = torch.randint(available, (self.max_samples,), generator=self._generator).sort().values
            chosen = chosen.to(device)
            return chosen if candidates is None else candidates[chosen]
        return candidates

    def _weights(self, values: Tensor) -> Tensor:
        """Parzen weights [N, bins] of values in [0, 1]; each row sums to 1."""
        position = values.clamp(0.0, 1.0) * (self.bins - 1)
        centres = torch.arange(self.bins, device=values.device, dtype=values.dtype)
        u = position[:, None] - centres
        if self.kernel == "bspline":
            weights = _cubic_bspline(u)
        else:
            # truncated at 4 sigma and shifted to reach 0 there: continuous, and no subnormal floats, whose
            # arithmetic is ~100x slower on CPUs (exp(-x) is subnormal in float32 for x in 87..103)
            z = ((u / self.sigma) ** 2).clamp(max=_GAUSS_CUTOFF ** 2)
            weights = torch.exp(-0.5 * z) - _GAUSS_FLOOR
        return weights / weights.sum(1, keepdim=True)

    def _every_voxel(self, mask: Optional[Tensor], count: int) -> bool:
        """Whether each histogram takes every voxel, the same ones at every step (no mask, no sampling)."""
        return mask is None and not (self.max_samples and count > self.max_samples)

    def _loss(self, f: Tensor, w: Tensor, f_weights: Optional[Tensor] = None) -> Tensor:
        """-MI (or -NMI) of two value vectors [N]; `f_weights`: f's Parzen weights, where already known."""
        if f.numel() == 0:
            return f.sum() * 0.0
        joint = (self._weights(f) if f_weights is None else f_weights).T @ self._weights(w) / f.numel()
        h_f, h_w, h_fw = _entropy(joint.sum(1)), _entropy(joint.sum(0)), _entropy(joint)
        return -(h_f + h_w) / h_fw.clamp_min(1e-12) if self.normalized else -(h_f + h_w - h_fw)

    def forward(self, fixed: Tensor, warped: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = _mask_weights("mi", fixed, warped, mask)
        count = fixed[0, 0].numel()
        losses = []
        for b in range(fixed.shape[0]):
            index = self._select(None if mask is None else mask[b], count, fixed.device)
            f, w = fixed[b].flatten(1), warped[b].flatten(1)
            if index is not None:
                f, w = f[:, index], w[:, index]
            losses += [self._loss(f[c], w[c]) for c in range(f.shape[0])]
        return torch.stack(losses).mean()

    def mapped_loss(self, fixed: Tensor, moving: Tensor, sampling_grid: Tensor,
                    mask: Optional[Tensor] = None) -> Tensor:
        """Same as forward on the warped image, but interpolates the moving image at the chosen voxels only."""
        dim = fixed.dim() - 2
        if sampling_grid.shape[1:-1] != fixed.shape[2:] or sampling_grid.shape[-1] != dim:
            raise RegistrationError(f"similarity 'mi': sampling grid {tuple(sampling_grid.shape)} does not fit "
                                    f"the fixed image {tuple(fixed.shape)}.")
        mask = _mask_weights("mi", fixed, fixed, mask)
        count = fixed[0, 0].numel()
        # with every voxel in every histogram, the fixed image's Parzen weights are the same at each step
        known = self._fixed_weights.get(lambda: [[self._weights(values) for values in fixed[b].flatten(1)]
                                                 for b in range(fixed.shape[0])], fixed) \
            if self._every_voxel(mask, count) else None
        losses = []
        for b in range(fixed.shape[0]):
            index = self._select(None if mask is None else mask[b], count, fixed.device)
            points = sampling_grid[b if sampling_grid.shape[0] > 1 else 0].reshape(-1, dim)
            f = fixed[b].flatten(1)
            if index is not None:
                points, f = points[index], f[:, index]
            w = sample(moving[b:b + 1], points.reshape(1, -1, *([1] * (dim - 1)), dim)).reshape(f.shape)
            losses += [self._loss(f[c], w[c], None if known is None else known[b][c]) for c in range(f.shape[0])]
        return torch.stack(losses).mean()


def _spatial_gradient(image: Tensor) -> Tensor:
    """Central differences per spatial axis ((z,) y, x), one-sided at the border (as numpy.gradient),
    stacked [D, B, C, *spatial]; zero along an axis of length 1."""
    return torch.stack([torch.gradient(image, dim=axis)[0] if image.shape[axis] > 1 else torch.zeros_like(image)
                        for axis in range(2, image.dim())], 0)


class NormalizedGradientFields(Similarity):
    """Normalised gradient fields (Haber & Modersitzki 2006): loss = mean(1 - (n_f . n_w)^2).

    n = grad I / sqrt(|grad I|^2 + eps^2), gradients in intensity per voxel. `eps` is the edge
    parameter: gradients much weaker than eps count as noise. Aligned edges score whatever their
    contrast or polarity, so it suits images of different modalities.
    """

    def __init__(self, eps: float = 0.01):
        super().__init__()
        self.eps = _positive("ngf", "eps", eps)
        self._fixed = _FixedCache()

    def _normalized(self, image: Tensor) -> Tensor:
        gradient = _spatial_gradient(image)
        return gradient * torch.rsqrt((gradient * gradient).sum(0, keepdim=True) + self.eps ** 2)

    def forward(self, fixed: Tensor, warped: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = _mask_weights("ngf", fixed, warped, mask)
        n_f = self._fixed.get(lambda: self._normalized(fixed), fixed)
        dot = (n_f * self._normalized(warped)).sum(0)
        return _masked_mean(1.0 - dot * dot, mask)


def _ssc_pairs(dim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs of the 2*dim face neighbours that lie sqrt(2) apart: 12 in 3D, 4 in 2D (Heinrich 2013)."""
    neighbours = []
    for axis in range(dim):
        for sign in (-1, 1):
            offset = [0] * dim
            offset[axis] = sign
            neighbours.append(tuple(offset))
    return [(a, b) for a, b in itertools.combinations(neighbours, 2)
            if sum(x * y for x, y in zip(a, b)) == 0]


def _crop(tensor: Tensor, start: Sequence[int], sizes: Sequence[int]) -> Tensor:
    """The block of `sizes` voxels at `start` of [N, C, *spatial], as one negative pad: its backward is one
    pad instead of one zero-filled copy per sliced axis."""
    pads = []
    for begin, size, full in reversed(list(zip(start, sizes, tensor.shape[2:]))):
        pads += [-begin, begin + size - full]
    return F.pad(tensor, pads)


def _minus(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x - y for x, y in zip(a, b))


def _canonical(vector: tuple[int, ...]) -> bool:
    """True when the first non-zero component is positive (one of each pair v, -v)."""
    return next(x for x in vector if x != 0) > 0


class MINDSSC(Similarity):
    """MIND self-similarity context (Heinrich et al., MICCAI 2013); loss = mean |MIND_f - MIND_w| (or squared).

    For each pair of face neighbours sqrt(2) apart (offsets times `dilation` voxels), the patch distance
    is the box mean (radius `radius`) of the squared difference of the image shifted to both. The
    descriptor is exp(-(d - min d) / v) with v the mean over the pairs, clamped to [1e-3, 1e3] times
    its mean over the image (over the mask, when there is one, so nothing outside the mask beyond the
    stencil reach dilation + radius matters). It describes local structure, not intensity, so it
    matches across modalities.
    """

    def __init__(self, radius: int = 2, dilation: int = 2, norm: str = "l1"):
        super().__init__()
        self.radius = _positive_int("mind", "radius", radius)
        self.dilation = _positive_int("mind", "dilation", dilation)
        self.norm = _choice("mind", "norm", norm, ("l1", "l2"))
        self._fixed_distances = _FixedCache()
        self._fixed_descriptor = _FixedCache()

    def distances(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Patch distances minus their minimum [B, C * pairs, *spatial] and their mean [B, C, *spatial].

        A pair (a, b) gives (I(x + d a) - I(x + d b))^2 = S_v(x + d b) with S_v(y) = (I(y + d v) - I(y))^2
        and v = a - b; pairs are ordered so that v is one of the 6 (3D) or 2 (2D) canonical vectors, and
        only those squared differences are box filtered (on the domain grown by d, replicate padded),
        less work than filtering one image per pair.
        """
        b, c = image.shape[:2]
        spatial = image.shape[2:]
        dim = len(spatial)
        d = self.dilation
        padded = F.pad(image.reshape(b * c, 1, *spatial), [2 * d] * (2 * dim), mode="replicate")
        grown = [n + 2 * d for n in spatial]

        pairs = [(p, q) if _canonical(_minus(p, q)) else (q, p) for p, q in _ssc_pairs(dim)]
        vectors = sorted({_minus(p, q) for p, q in pairs})
        base = _crop(padded, [d] * dim, grown)
        squared = torch.cat([(_crop(padded, [d + v * d for v in vector], grown) - base) ** 2
                             for vector in vectors], 1)
        kernels = box_window(self.radius, dim, image)
        filtered = separable_filter(squared, kernels) * filtered_ones(grown, kernels).reciprocal()
        shifted = {q: _crop(filtered, [d + o * d for o in q], spatial) for q in sorted({q for _, q in pairs})}
        distance = torch.stack([shifted[q][:, vectors.index(_minus(p, q))] for p, q in pairs], 1)
        distance = distance - distance.min(1, keepdim=True).values
        variance = distance.mean(1, keepdim=True)
        return distance.reshape(b, c * len(pairs), *spatial), variance.reshape(b, c, *spatial)

    def descriptor(self, image: Tensor, mask: Optional[Tensor] = None,
                   distances: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """MIND-SSC of image [B, C, *spatial] -> [B, C * pairs, *spatial] (12 pairs in 3D, 4 in 2D)."""
        distance, variance = self.distances(image) if distances is None else distances
        b, c = variance.shape[:2]
        dims = tuple(range(2, variance.dim()))
        if mask is None:
            level = variance.mean(dims, keepdim=True)
        else:
            level = (variance * mask).sum(dims, keepdim=True) / mask.sum(dims, keepdim=True).clamp_min(1.0)
        level = level + 1e-12
        variance = torch.minimum(torch.maximum(variance, level * 1e-3), level * 1e3)
        pairs = distance.shape[1] // c
        distance = distance.reshape(b, c, pairs, *variance.shape[2:])
        return torch.exp(distance * (-1.0 / variance).unsqueeze(2)).reshape(b, c * pairs, *variance.shape[2:])

    def forward(self, fixed: Tensor, warped: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = _mask_weights("mind", fixed, warped, mask)
        fixed_mind = self._fixed_descriptor.get(
            lambda: self.descriptor(fixed, mask, self._fixed_distances.get(lambda: self.distances(fixed), fixed)),
            fixed, mask)
        difference = fixed_mind - self.descriptor(warped, mask)
        return _masked_mean(difference.abs() if self.norm == "l1" else difference * difference, mask)
