"""`diffreg evaluate`: label overlap, landmark error and folding of a transform file."""
from __future__ import annotations

from typing import Any, Optional


from ..errors import RegistrationError
from ..io.images import read_image, read_labels
from ..io.landmarks import match_landmarks, read_landmarks
from ..geometry.metrics import dice_per_label, field_mapping, folding, jacobian_determinant, landmark_tre, mean_dice
from .result import Result
from ..io.transform_files import read_displacement


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
        moving_label_image = read_labels(moving_labels, "moving labels")
        warped = Result(grid, moving_label_image.grid, field).warp(moving_label_image, "nearest")
        identity = Result.identity(grid, moving_label_image.grid).warp(moving_label_image, "nearest")
        after = dice_per_label(fixed_label_image.array, warped.array)
        before = dice_per_label(fixed_label_image.array, identity.array)
        report["dice"] = {"mean_before": mean_dice(before), "mean_after": mean_dice(after),
                          "per_label": {str(k): round(v, 4) for k, v in after.items()}}
    if fixed_landmarks:
        fixed_points, moving_points, labels = match_landmarks(read_landmarks(fixed_landmarks),
                                                              read_landmarks(moving_landmarks))
        tre = landmark_tre(fixed_points, moving_points, field_mapping(field, grid))
        before = landmark_tre(fixed_points, moving_points, lambda p: p)
        report["landmark_tre"] = {"labels": labels, "before": before, "after": tre}
    return report
