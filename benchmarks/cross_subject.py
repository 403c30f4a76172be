"""The cross-subject pair: MNI152 (nilearn's skull-stripped template) onto Colin27 (ch2bet), and its score.

There is no ground-truth field between two subjects, so the score is tissue overlap: each image is
split into three intensity classes inside its brain (3-means on T1 intensity: CSF, grey matter, white
matter), the moving classes are warped with the method's field (nearest neighbour) and compared with
the fixed classes by Dice. The classes are computed once per image, independently of any method. The
share of folded voxels (Jacobian determinant <= 0) inside the fixed brain is reported with them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from DiffusionRegistrationLib.io.data import COLIN_BET, MNI152, data_file, resample_isotropic
from DiffusionRegistrationLib.core.image import Image
from DiffusionRegistrationLib.io.images import read_image
from DiffusionRegistrationLib.geometry.metrics import dice_per_label, folding, jacobian_determinant
from DiffusionRegistrationLib.geometry.synthetic import warp_with_displacement

TISSUES = {1: "csf", 2: "grey", 3: "white"}


def tissue_classes(image: Image, iterations: int = 50) -> Image:
    """Labels 1 (darkest: CSF), 2 (grey matter), 3 (white matter) by 3-means of intensities > 0; 0 outside."""
    values = image.array[image.array > 0].astype(np.float64)
    centres = np.percentile(values, [10.0, 50.0, 90.0])
    for _ in range(iterations):
        nearest = np.abs(values[:, None] - centres[None]).argmin(1)
        updated = np.array([values[nearest == k].mean() for k in range(3)])
        if np.allclose(updated, centres):
            break
        centres = updated
    edges = (centres[:-1] + centres[1:]) / 2
    labels = np.where(image.array > 0, np.digitize(image.array, edges) + 1, 0).astype(np.uint8)
    return image.with_array(labels)


def load_pair(spacing_mm: float) -> dict[str, Image]:
    """fixed = Colin27 ch2bet, moving = MNI152 (both skull-stripped), at `spacing_mm`, with tissue classes."""
    fixed = resample_isotropic(read_image(data_file(COLIN_BET)), spacing_mm)
    moving = resample_isotropic(read_image(data_file(MNI152)), spacing_mm)
    return {"fixed": fixed, "moving": moving,
            "fixed_tissues": tissue_classes(fixed), "moving_tissues": tissue_classes(moving)}


def tissue_dice(pair: dict[str, Image], field: Optional[np.ndarray]) -> dict[str, float]:
    """Grey- and white-matter (and CSF) Dice of the moving classes warped by `field` (None: no registration),
    and the share of folded voxels in the fixed brain."""
    grid = pair["fixed"].grid
    field = np.zeros((*grid.shape, grid.dim)) if field is None else field
    warped = warp_with_displacement(pair["moving_tissues"], field, "nearest", grid=grid).array
    per_label = dice_per_label(warped, pair["fixed_tissues"].array, labels=list(TISSUES))
    fold = folding(jacobian_determinant(field, grid), pair["fixed"].array > 0)
    return {**{f"{name}_dice": float(per_label[label]) for label, name in TISSUES.items()},
            "percent_folded": fold["percent_folded"], "min_jacobian": fold["min_jacobian"]}
