"""How good a registration is: label overlap, target registration error, Jacobian and folding.

Displacement fields follow the project's convention: an array [*grid.shape, D] on a grid, (x, y, z)
components in LPS mm, mapping each grid point x to x + u(x). numpy float64 throughout.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np

from ..errors import RegistrationError
from ..core.image import Grid


def dice_per_label(a: np.ndarray, b: np.ndarray, labels: Optional[Iterable[int]] = None) -> dict[int, float]:
    """Dice 2|A∩B|/(|A|+|B|) of each label (default: every non-zero label in either map).

    A label absent from both maps is left out (its Dice is undefined). Labels are compared as stored, in any
    integer type, and counted in one pass over the voxels however many there are.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise RegistrationError(f"dice: label maps have different shapes {a.shape} and {b.shape}; "
                                "resample one onto the other's grid first.")
    a, b = a.ravel(), b.ravel()
    if a.size == 0:
        return {}
    found, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)  # each voxel's label, numbered
    in_a = np.bincount(inverse[:a.size], minlength=found.size)
    in_b = np.bincount(inverse[a.size:], minlength=found.size)
    both = np.bincount(inverse[:a.size][a == b], minlength=found.size)
    wanted = found[found != 0] if labels is None else np.asarray(list(labels))
    where = np.searchsorted(found, wanted).clip(max=found.size - 1)
    out = {}
    for label, position in zip(wanted.tolist(), where.tolist()):
        total = int(in_a[position] + in_b[position]) if found[position] == label else 0
        if total:
            out[int(label)] = 2.0 * int(both[position]) / total
    return out


def mean_dice(per_label: dict[int, float]) -> float:
    """Unweighted mean over labels (NaN when there are none)."""
    return float(np.mean(list(per_label.values()))) if per_label else float("nan")


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (anything > 0 is inside)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise RegistrationError(f"dice: masks have different shapes {a.shape} and {b.shape}.")
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else float("nan")


def error_stats(errors: np.ndarray) -> dict[str, float]:
    """mean, median, 95th percentile and max of a set of distances (mm)."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise RegistrationError("TRE: there are no points to measure (empty mask or no landmarks).")
    return {"mean": float(errors.mean()), "median": float(np.median(errors)),
            "p95": float(np.percentile(errors, 95)), "max": float(errors.max())}


def field_tre(true: np.ndarray, estimated: np.ndarray, mask: Optional[np.ndarray] = None) -> dict[str, float]:
    """Target registration error over every voxel (of `mask`): |x + u_true(x) - (x + u_est(x))| in mm.

    Both fields map the same grid's points, so the error is the length of their difference.
    """
    true, estimated = np.asarray(true, np.float64), np.asarray(estimated, np.float64)
    if true.shape != estimated.shape:
        raise RegistrationError(f"TRE: displacement fields have different shapes {true.shape} and "
                                f"{estimated.shape}; both must lie on the same grid.")
    errors = np.linalg.norm(true - estimated, axis=-1)
    if mask is not None:
        errors = errors[np.asarray(mask) > 0]
    return error_stats(errors)


def displacement_gradient(field: np.ndarray, grid: Grid) -> np.ndarray:
    """du_a/dx_b in physical space, [*shape, D, D]; central differences (one-sided at the borders).

    Differences are taken along index axes and converted with (direction @ diag(spacing))^-1, so
    anisotropic spacing and oblique directions are handled.
    """
    field = np.asarray(field, dtype=np.float64)
    d = grid.dim
    if field.shape != (*grid.shape, d):
        raise RegistrationError(f"Jacobian: field shape {field.shape} does not match the grid "
                                f"({(*grid.shape, d)} expected).")
    # gradient along array axes (z, y, x) -> index axes (x, y, z)
    per_axis = np.gradient(field, axis=tuple(range(d)))
    by_index = np.stack(per_axis[::-1], axis=-1)  # [..., component a, index axis b]
    index_from_mm = np.linalg.inv(grid.direction_matrix @ np.diag(grid.spacing))
    return by_index @ index_from_mm


def jacobian_determinant(field: np.ndarray, grid: Grid) -> np.ndarray:
    """det(I + du/dx) at every voxel, [*shape]. Below 0 means folding; 1 means volume kept.

    The same numbers as det(I + displacement_gradient) in the field's precision (float32 fields stay
    float32), entry by entry and by cofactors, without the [*shape, D, D] arrays: a 1 mm brain's
    determinant took 30 s that way, most of writing the outputs.
    """
    field = np.asarray(field)
    field = field.astype(np.result_type(field.dtype, np.float32), copy=False)
    d = grid.dim
    if field.shape != (*grid.shape, d):
        raise RegistrationError(f"Jacobian: field shape {field.shape} does not match the grid "
                                f"({(*grid.shape, d)} expected).")
    by_index = np.gradient(field, axis=tuple(range(d)))[::-1]  # d/d index x, y, z, each [*shape, D]
    index_from_mm = np.linalg.inv(grid.direction_matrix @ np.diag(grid.spacing))
    j = [[sum(by_index[k][..., a] * field.dtype.type(index_from_mm[k, b]) for k in range(d)
              if index_from_mm[k, b] != 0) + (1.0 if a == b else 0.0) for b in range(d)] for a in range(d)]
    if d == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1]) - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


def folding(determinant: np.ndarray, mask: Optional[np.ndarray] = None) -> dict[str, float]:
    """Percentage of voxels with det <= 0, and the min/max determinant (inside `mask` if given)."""
    values = np.asarray(determinant, dtype=np.float64)
    if mask is not None:
        values = values[np.asarray(mask) > 0]
    if values.size == 0:
        raise RegistrationError("folding: the mask selects no voxel.")
    return {"percent_folded": 100.0 * float((values <= 0).mean()), "min_jacobian": float(values.min()),
            "max_jacobian": float(values.max())}


def field_mapping(field: np.ndarray, grid: Grid) -> Callable[[np.ndarray], np.ndarray]:
    """A point mapping p -> p + u(p) from a displacement field, linear interpolation, border extension."""
    from scipy import ndimage  # here, not at the top: every registration imports this module, few map points

    field = np.asarray(field, dtype=np.float64)
    d = grid.dim
    mm_to_index = grid.physical_to_index()

    def transform(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, d)
        index = points @ mm_to_index[:d, :d].T + mm_to_index[:d, d]  # (x, y, z) continuous index
        coordinates = index[:, ::-1].T  # array order (z, y, x)
        moved = np.stack([ndimage.map_coordinates(field[..., c], coordinates, order=1, mode="nearest")
                          for c in range(d)], axis=-1)
        return points + moved

    return transform


def landmark_tre(fixed_points: np.ndarray, moving_points: np.ndarray,
                 transform: Callable[[np.ndarray], np.ndarray]) -> dict[str, object]:
    """TRE of landmarks: fixed points mapped by the fixed->moving `transform` against the moving points.

    Returns the statistics of `error_stats` plus the per-landmark errors (mm).
    """
    fixed_points = np.asarray(fixed_points, dtype=np.float64)
    moving_points = np.asarray(moving_points, dtype=np.float64)
    if fixed_points.shape != moving_points.shape:
        raise RegistrationError(f"landmark TRE: {len(fixed_points)} fixed and {len(moving_points)} moving "
                                "landmarks (or different dimensions); give matched pairs.")
    mapped = np.asarray(transform(fixed_points), dtype=np.float64).reshape(fixed_points.shape)
    errors = np.linalg.norm(mapped - moving_points, axis=-1)
    return {**error_stats(errors), "errors": errors.tolist()}
