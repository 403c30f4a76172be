"""`diffreg evaluate`: label overlap, landmark error and folding of a transform file."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..errors import RegistrationError
from ..geometry.metrics import dice_per_label, field_mapping, folding, jacobian_determinant, landmark_tre, mean_dice
from ..io.images import read_image, read_labels
from ..io.landmarks import Landmarks, match_landmarks, read_landmarks
from ..io.transform_files import read_displacement
from .result import Result


def evaluate_transform(transform: str, reference: Optional[str] = None, fixed_labels: Optional[str] = None,
                       moving_labels: Optional[str] = None, fixed_landmarks: Optional[str] = None,
                       moving_landmarks: Optional[str] = None) -> dict[str, Any]:
    """Numbers for one fixed->moving transform; each part is computed when its inputs are given."""
    if (fixed_labels is None) != (moving_labels is None):
        raise RegistrationError("give both --fixed-labels and --moving-labels, or neither.")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise RegistrationError("give both --fixed-landmarks and --moving-landmarks, or neither.")
    fixed_label_image = read_labels(fixed_labels, "fixed labels") if fixed_labels else None
    grid = read_image(reference, "reference image").grid if reference else \
        (fixed_label_image.grid if fixed_label_image is not None else None)
    field, grid = read_displacement(transform, grid)
    report: dict[str, Any] = {"transform": str(transform)}
    report["folding"] = folding(jacobian_determinant(field, grid))
    if fixed_label_image is not None:
        if not fixed_label_image.grid.same_as(grid, tolerance=1e-3):
            raise RegistrationError(f"fixed labels {fixed_labels}: lie on another grid than the transform's reference "
                                    f"({fixed_label_image.grid.size} vs {grid.size} voxels); give labels on the fixed "
                                    "image's grid.")
        moving_label_image = read_labels(moving_labels, "moving labels")
        if moving_label_image.dim != grid.dim:
            raise RegistrationError(f"moving labels {moving_labels}: are {moving_label_image.dim}D but the transform "
                                    f"is {grid.dim}D; give labels of the moving image.")
        warped = Result(grid, moving_label_image.grid, field).warp(moving_label_image, "nearest")
        identity = Result.identity(grid, moving_label_image.grid).warp(moving_label_image, "nearest")
        after = dice_per_label(fixed_label_image.array, warped.array)
        before = dice_per_label(fixed_label_image.array, identity.array)
        report["dice"] = {"mean_before": mean_dice(before), "mean_after": mean_dice(after),
                          "per_label": {str(k): round(v, 4) for k, v in after.items()}}
    if fixed_landmarks:
        fixed_points, moving_points, labels = match_landmarks(_in_dim(read_landmarks(fixed_landmarks), grid.dim),
                                                              _in_dim(read_landmarks(moving_landmarks), grid.dim))
        tre = landmark_tre(fixed_points, moving_points, field_mapping(field, grid))
        before = landmark_tre(fixed_points, moving_points, lambda p: p)
        report["landmark_tre"] = {"labels": labels, "before": before, "after": tre}
    return report


def _in_dim(landmarks: Landmarks, dim: int) -> Landmarks:
    """The landmarks with `dim` finite coordinates (3D points with z = 0 serve a 2D transform);
    RegistrationError otherwise."""
    points = np.asarray(landmarks.points, dtype=np.float64)
    if not np.isfinite(points).all():
        raise RegistrationError(f"landmark file {landmarks.path}: holds NaN or infinite coordinates; give finite "
                                "positions.")
    if points.shape[1] == 3 and dim == 2 and np.allclose(points[:, 2], 0):
        points = points[:, :2]
    if points.shape[1] != dim:
        raise RegistrationError(f"landmark file {landmarks.path}: has {points.shape[1]}D points but the transform is "
                                f"{dim}D; give landmarks of the registered images.")
    return Landmarks(points, landmarks.labels, landmarks.path)
