"""The main job: a real registration of a real pair with a known answer, its outputs and a report.

Moving: Colin27 skull-stripped (ch2bet). Fixed: Colin27 with skull (ch2), warped by a known smooth
deformation (up to 8 mm), at 2 mm. Because the deformation is known, the report gives the true
target registration error over the brain and the Dice of the 116 AAL labels, not just a picture.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from ..engine.config import make_config
from ..engine.outputs import OutputRequest, register_and_write
from ..engine.registration import register
from ..engine.result import Result
from ..errors import RegistrationError
from ..geometry.metrics import dice_per_label, field_tre, mask_dice, mean_dice
from ..geometry.synthetic import random_smooth_displacement, warp_with_displacement
from ..io.data import COLIN_AAL, COLIN_BET, COLIN_T1, data_file, resample_isotropic
from ..core.image import Image
from ..io.images import read_image, read_labels, write_image
from ..progress import Progress, ProgressCallback, silent

SPACING_MM, MAX_DISPLACEMENT_MM = 2.0, 8.0
INTENSITY_PRESET = "stripped"
DIFFUSION_PRESET = "diffusion"


def demo_pair(seed: int = 0, spacing_mm: float = SPACING_MM) -> dict[str, Image | np.ndarray]:
    """The pair (2 mm unless asked) with its ground truth: fixed, moving, labels of both, brain mask, true field."""
    moving = resample_isotropic(read_image(data_file(COLIN_BET), "Colin27 skull-stripped"), spacing_mm)
    skull = resample_isotropic(read_image(data_file(COLIN_T1), "Colin27 with skull"), spacing_mm)
    labels = resample_isotropic(read_labels(data_file(COLIN_AAL), "AAL labels"), spacing_mm, labels=True)
    if not labels.grid.same_as(moving.grid, tolerance=1e-3) or not skull.grid.same_as(moving.grid, 1e-3):
        raise RegistrationError("the Colin27 files do not share one grid; re-run `bash scripts/setup.sh`.")
    field = random_smooth_displacement(moving.grid, MAX_DISPLACEMENT_MM, seed)
    fixed = warp_with_displacement(skull, field)
    brain = warp_with_displacement(moving.with_array((moving.array > 0).astype(np.float32)), field)
    return {"fixed": Image(fixed.array, fixed.grid, "Colin27 with skull, deformed"),
            "moving": Image(moving.array, moving.grid, "Colin27 skull-stripped"),
            "fixed_labels": warp_with_displacement(labels, field, "nearest"), "moving_labels": labels,
            "brain": brain.array > 0.5, "field": field}


def diffusion_weights_status() -> Optional[str]:
    """None when the diffusion backbone's weights are cached and verified, else the reason and the fix."""
    from ..features.weights import default_backbone_path

    try:
        default_backbone_path()
    except RegistrationError as error:
        return str(error)
    return None


def accuracy(pair: dict, displacement: np.ndarray, warped_labels: Image) -> dict:
    """TRE over the brain, AAL Dice and brain-mask Dice against the known answer."""
    tre = field_tre(pair["field"], displacement, pair["brain"])
    per_label = dice_per_label(pair["fixed_labels"].array, warped_labels.array)
    return {"tre_mm": tre, "aal_dice_mean": mean_dice(per_label),
            "brain_dice": mask_dice(pair["fixed_labels"].array > 0, warped_labels.array > 0)}


def run_demo(output_dir: str | Path, seed: int = 0, preset: Optional[str] = None,
             progress: ProgressCallback = silent, log=sys.stderr) -> dict[str, str]:
    """Runs the main job; returns role -> path of every file written."""
    output_dir = Path(output_dir)
    progress(Progress("load", 0.0, "reading Colin27 and making the deformed pair"))
    pair = demo_pair(seed)
    progress(Progress("load", 1.0, "pair ready"))
    if preset is None:
        problem = diffusion_weights_status()
        if problem is None:
            preset = DIFFUSION_PRESET
        else:
            preset = INTENSITY_PRESET
            print(f"NOTE: the diffusion-feature similarity is NOT used in this run: {problem}\n"
                  f"      Running the best intensity preset ('{preset}') instead.", file=log)
    config = make_config(preset)

    extra: dict = {}

    def scores(result: Result) -> dict:
        identity = Result.identity(result.fixed_grid, result.moving_grid)
        extra["demo"] = {"pair": "moving Colin27 skull-stripped (ch2bet) -> fixed Colin27 with skull (ch2) "
                                 f"warped by a known smooth field, max {MAX_DISPLACEMENT_MM} mm, seed {seed}, "
                                 f"{SPACING_MM} mm voxels", "preset": preset, "similarity": config.similarity,
                         "before": accuracy(pair, identity.displacement,
                                            identity.warp(pair["moving_labels"], "nearest")),
                         "after": accuracy(pair, result.displacement, result.warp(pair["moving_labels"], "nearest"))}
        return extra

    result, written = register_and_write(output_dir, OutputRequest(), pair["fixed"], pair["moving"],
                                         lambda: register(pair["fixed"], pair["moving"], config, progress=progress),
                                         extra=scores)
    for role in ("fixed", "moving"):
        written[f"{role}_input"] = str(write_image(pair[role], output_dir / f"{role}.nii.gz").resolve())
    after, before = extra["demo"]["after"], extra["demo"]["before"]
    print(f"registered in {result.seconds:.1f} s with preset '{preset}' ({config.similarity}): "
          f"TRE over the brain {before['tre_mm']['mean']:.2f} -> {after['tre_mm']['mean']:.2f} mm "
          f"(p95 {after['tre_mm']['p95']:.2f}), AAL Dice {before['aal_dice_mean']:.3f} -> "
          f"{after['aal_dice_mean']:.3f}, folded {json.loads(Path(written['report']).read_text())['percent_folded']:.3f}%",
          file=log)
    return written
