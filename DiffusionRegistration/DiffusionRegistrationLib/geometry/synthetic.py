"""Known smooth deformations, to make registration pairs whose true answer is known.

A field u on a grid maps each grid point x to x + u(x) (fixed -> moving, the project's direction):
`warp_with_displacement(moving, u)` gives the fixed image, and the true fixed->moving map of the
pair (fixed, moving) is x + u(x).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import RegistrationError
from ..core.image import Grid, Image
from ..io.transform_files import displacement_transform
from .metrics import jacobian_determinant

_COARSE_PER_SIGMA = 4  # noise samples per smoothing sigma: plenty for a band-limited field


def _smooth_noise(grid: Grid, smoothness_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise, [*shape, D], built on a coarse grid and cubic-spline interpolated.

    The field depends on the grid only through its physical extent, so grids of different spacing
    over the same field of view get (nearly) the same field for the same seed.
    """
    d = grid.dim
    step = smoothness_mm / _COARSE_PER_SIGMA
    margin = 3 * _COARSE_PER_SIGMA  # coarse samples beyond each border, so filtering sees no edge
    extent = (np.asarray(grid.size) - 1) * np.asarray(grid.spacing)  # (x, y, z)
    coarse_size = np.ceil(extent / step).astype(int) + 1 + 2 * margin
    components = []
    for _ in range(d):
        noise = rng.standard_normal(tuple(coarse_size[::-1]))
        components.append(ndimage.gaussian_filter(noise, _COARSE_PER_SIGMA, mode="reflect"))
    axes = [np.arange(n) * s / step + margin for n, s in zip(grid.shape, grid.spacing[::-1])]
    coordinates = np.stack(np.meshgrid(*axes, indexing="ij"))  # coarse (z, y, x) index of each voxel
    # components are along the grid axes (index x, y, z); rotate them into LPS with the direction
    along_axes = np.stack([ndimage.map_coordinates(ndimage.spline_filter(c, order=3), coordinates,
                                                   order=3, prefilter=False) for c in components], axis=-1)
    return along_axes @ grid.direction_matrix.T


def random_smooth_displacement(grid: Grid, max_mm: float, seed: int, smoothness_mm: float = 20.0,
                               min_jacobian: float = 0.1) -> np.ndarray:
    """A random smooth displacement field on `grid`, [*grid.shape, D] float64 in LPS mm.

    Gaussian-smoothed noise (sigma `smoothness_mm`) scaled so the largest displacement is exactly
    `max_mm`. Diffeomorphic on the grid: if any Jacobian determinant falls below `min_jacobian`
    (> 0), the smoothness is raised by 25% and the field redrawn with the same seed.
    """
    if max_mm < 0 or smoothness_mm <= 0:
        raise RegistrationError(f"synthetic field: max_mm ({max_mm}) must be >= 0 and smoothness_mm "
                                f"({smoothness_mm}) > 0.")
    for _ in range(20):
        field = _smooth_noise(grid, smoothness_mm, np.random.default_rng(seed))
        largest = float(np.linalg.norm(field, axis=-1).max())
        field *= max_mm / largest if largest > 0 else 0.0
        if float(jacobian_determinant(field, grid).min()) >= min_jacobian:
            return field
        smoothness_mm *= 1.25
    raise RegistrationError(f"synthetic field: no fold-free field of {max_mm} mm found on this grid; "
                            "ask for a smaller max_mm or a larger smoothness_mm.")


def warp_with_displacement(image: Image, field: np.ndarray, interpolator: str = "linear",
                           grid: Optional[Grid] = None) -> Image:
    """output(x) = image(x + field(x)) for x on `grid` (default: the image's grid), by SimpleITK.

    The field lies on `grid`; outside the image the output is 0. `interpolator` is 'linear' or
    'nearest' (label maps; the dtype is kept).
    """
    modes = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
    if interpolator not in modes:
        raise RegistrationError(f"warp: interpolator must be 'linear' or 'nearest', not '{interpolator}'.")
    grid = grid or image.grid
    transform = displacement_transform(np.asarray(field, dtype=np.float64), grid)
    source = image.to_sitk()
    if interpolator == "linear":
        source = sitk.Cast(source, sitk.sitkFloat32)
    reference = grid.apply_to(sitk.Image(list(grid.size), sitk.sitkUInt8))
    out = sitk.Resample(source, reference, transform, modes[interpolator], 0.0)
    array = sitk.GetArrayFromImage(out)
    if interpolator == "nearest":
        array = array.astype(image.array.dtype, copy=False)
    return Image(array, grid, None)
