"""The quality guard: warnings for a registration that probably made things worse.

Checked after every run, independently of the similarity that was optimised:
- the normalised mutual information of the fixed image and the moving image is lower after the
  registration than with the images as they lie (an intensity similarity such as LNCC can improve
  while the anatomy drifts apart, typically on a pair of different contrasts);
- the optimised similarity itself ended worse than it started at some level (divergence);
- the affine part is implausible: a scale outside 0.5-2, a strong shear or a mirroring;
- a brain onto a head (or a head onto a brain; engine.foreground) is implausible after the affine stage
  or at the end: the brain lies over the head's scalp and skull, or much of it outside the head, or the
  affine scales by more than two brains differ.
Each warning names the likely cause and the setting to try.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from ..geometry.spatial import physical_points, strided_grid
from ..core.image import Grid, Image
from ..similarity.registry import same_contrast
from .foreground import HEAD, STRIPPED, Foreground
from .result import Result

MI_BINS = 32
MI_DROP = 0.01  # NMI is in [1, 2]; smaller drops are interpolation noise
SCALE_RANGE = (0.5, 2.0)
MAX_ANISOTROPY = 1.5  # largest / smallest singular value of the affine's linear part
LOSS_RISE = 0.2  # a level whose loss ends this much (relative) above its start diverged; less is step noise
MIN_CORRELATION = 0.3
GUARD_VOXELS = 1 << 18
SCALP_MM = 6.0  # a brain lies deeper than this below the skin (scalp and skull are thicker)
BRAIN_SURFACE_MM = 5.0  # the brain's outer layer, which the check looks at
ON_SCALP = 0.1  # share of the brain's outer layer less than SCALP_MM below the skin that is implausible
OUTSIDE_HEAD = 0.05  # share of the brain outside the head that is implausible
BRAIN_SCALE_RANGE = (0.75, 1.33)  # linear scale between two people's brains (an infant's excepted)


def normalized_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = MI_BINS) -> float:
    """(H(a) + H(b)) / H(a, b) on robustly scaled intensities; 1 for independent images, 2 for identical."""
    def scaled(values: np.ndarray) -> np.ndarray:
        low, high = np.percentile(values, [0.5, 99.5])
        return np.clip((values - low) / max(high - low, 1e-12), 0, 1)

    joint, _, _ = np.histogram2d(scaled(a.ravel()), scaled(b.ravel()), bins=bins, range=[[0, 1], [0, 1]])
    joint = joint / max(joint.sum(), 1)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (entropy(joint.sum(0)) + entropy(joint.sum(1))) / max(entropy(joint), 1e-12)


def affine_warnings(matrix: np.ndarray) -> list[str]:
    linear = matrix[:-1, :-1]
    scales = np.linalg.svd(linear, compute_uv=False)
    found = []
    if scales.min() < SCALE_RANGE[0] or scales.max() > SCALE_RANGE[1]:
        found.append(f"the affine part scales by {scales.min():.2f}-{scales.max():.2f} (outside "
                     f"{SCALE_RANGE[0]}-{SCALE_RANGE[1]}): the affine stage probably failed; try `--preset "
                     "multimodal` for different contrasts, `--set init=centers`, or a lower affine_lr.")
    elif scales.max() / scales.min() > MAX_ANISOTROPY:
        found.append(f"the affine part shears or stretches strongly (axis ratio {scales.max() / scales.min():.2f}): "
                     "the affine stage probably failed; try `--preset multimodal` for different contrasts or a "
                     "lower affine_lr.")
    if np.linalg.det(linear) < 0:
        found.append("the affine part mirrors the image: the affine stage failed or the orientation of one image "
                     "is wrong in its header; check both images in a viewer.")
    return found


def _loss_warnings(history: list[dict[str, Any]]) -> list[str]:
    worse = [h for h in history if h.get("start_loss") is not None
             and h["loss"] - h["start_loss"] > LOSS_RISE * max(abs(h["start_loss"]), 1e-6)]
    return [f"the similarity got worse during the {h['stage']} stage at level {h['level']:g} (from "
            f"{h['start_loss']:.4f} to {h['loss']:.4f}): lower {'affine_lr' if h['stage'] == 'affine' else 'lr'}."
            for h in worse]


def _affine_only(result: Result, grid: Grid) -> Result:
    """The result's affine part alone, as a mapping on `grid` (in fixed space)."""
    points = physical_points(grid, dtype=torch.float64)[0].numpy()
    mapped = points @ result.affine[:-1, :-1].T + result.affine[:-1, -1]
    return Result(grid, result.moving_grid, (mapped - points).astype(np.float32))


def _cause(fixed: np.ndarray, moving: np.ndarray, similarity: str) -> str:
    """The likely cause of a worse match: different contrasts for an intensity similarity (intensities that
    correlate weakly where both images show anatomy), else the start."""
    both = (fixed > np.percentile(fixed, 30)) & (moving > np.percentile(moving, 30))
    if both.sum() < 100:
        both = np.ones_like(fixed, dtype=bool)
    correlation = float(np.nan_to_num(np.corrcoef(fixed[both], moving[both])[0, 1]))
    if same_contrast(similarity) and correlation < MIN_CORRELATION:
        return (f"the images probably have different contrasts (intensity correlation {correlation:.2f}) and "
                f"{similarity} compares intensities: try `--preset multimodal`")
    return "the start may be too far off or the images may not show the same anatomy: try `--set init=centers` " \
           "or check both images in a viewer"


REMEDIES = {"moving": "try `--preset stripped` (the similarity only inside the moving brain), or give masks of the "
                      "brains (--moving-mask, --fixed-mask)",
            "fixed": "try `--set fixed_foreground_mask=true` (the similarity only inside the fixed brain) or `--preset "
                     "stripped`, or give a mask of the moving image's brain (--moving-mask)"}


def brain_warnings(stage: str, mapping: Result, fixed: Foreground, moving: Foreground,
                   affine: Optional[np.ndarray] = None) -> list[str]:
    """Whether a brain-only image lies implausibly on a head under `mapping` (on a grid in fixed space).

    Checked for a brain-only image onto a head or the reverse (engine.foreground), with each image's object
    and depth below its surface: the brain should lie inside the head, deeper than SCALP_MM below the
    skin, and `affine` (the stage's, if given) should scale by no more than two brains differ."""
    if {fixed.kind, moving.kind} != {STRIPPED, HEAD}:
        return []
    fixed_depth = Result.identity(mapping.fixed_grid, fixed.depth.grid).warp(fixed.depth).array
    moving_depth = mapping.warp(moving.depth).array
    brain, head = (moving_depth, fixed_depth) if moving.kind == STRIPPED else (fixed_depth, moving_depth)
    inside = brain > 0
    surface = inside & (brain <= BRAIN_SURFACE_MM)
    on_scalp = float(((head > 0) & (head <= SCALP_MM) & surface).sum()) / max(int(surface.sum()), 1)
    outside = float((inside & (head <= 0)).sum()) / max(int(inside.sum()), 1)
    part = "after the affine stage" if stage == "affine" else "after the registration"
    role = "moving" if moving.kind == STRIPPED else "fixed"
    who, remedy = f"the {role} brain", REMEDIES[role]
    found = []
    if on_scalp > ON_SCALP:
        found.append(f"{who} lies over the scalp and skull of the head {part} ({100 * on_scalp:.0f} % of its "
                     f"surface less than {SCALP_MM:g} mm below the skin): a brain-only image was probably stretched "
                     f"onto the whole head, or the head shrunk onto the brain; {remedy}.")
    if outside > OUTSIDE_HEAD:
        found.append(f"{100 * outside:.0f} % of {who} lies outside the head {part}: the brain-only image and the "
                     f"head are not aligned; {remedy}.")
    if affine is not None:
        scales = np.linalg.svd(affine[:-1, :-1], compute_uv=False)
        brains = BRAIN_SCALE_RANGE[0] <= scales.min() and scales.max() <= BRAIN_SCALE_RANGE[1]
        if not brains and SCALE_RANGE[0] <= scales.min() and scales.max() <= SCALE_RANGE[1]:  # else: affine_warnings
            found.append(f"the affine part scales by {scales.min():.2f}-{scales.max():.2f}, more than two people's "
                         f"brains differ ({BRAIN_SCALE_RANGE[0]}-{BRAIN_SCALE_RANGE[1]}, unless one is an "
                         f"infant's); {remedy}.")
    return found


def quality_warnings(result: Result, fixed: Image, moving: Image, similarity: str,
                     kinds: Optional[tuple[Foreground, Foreground]] = None) -> list[str]:
    """The guard's warnings for a finished registration of `moving` onto `fixed` (empty when all is plausible).

    `kinds`: what the fixed and the moving image show (engine.foreground), for the brain-onto-head checks.
    The images are compared on every `step`-th voxel (at most about GUARD_VOXELS of them): the same
    statistics as on all voxels for a histogram of 32 x 32 bins, at a fraction of the time.
    """
    found = _loss_warnings(result.history)
    if result.affine is not None:
        found += affine_warnings(result.affine)
    step = max(1, math.ceil((fixed.array.size / GUARD_VOXELS) ** (1 / fixed.dim) - 1e-9))
    grid = strided_grid(fixed.grid, step)
    strided = (slice(None, None, step),) * fixed.dim
    fixed_values = fixed.array[strided]
    start = Result.identity(grid, moving.grid).warp(moving).array
    before = normalized_mutual_information(fixed_values, start)
    affine_only = _affine_only(result, grid) if result.affine is not None else None
    if kinds is not None:
        checks = [("affine", affine_only, result.affine)] if affine_only is not None else []
        checks.append(("whole", Result(grid, result.moving_grid, result.displacement[strided]), None))
        for stage, mapping, affine in checks:
            anatomy = brain_warnings(stage, mapping, *kinds, affine=affine)
            if anatomy:
                found += anatomy
                break
    stages = [("affine", affine_only.warp(moving).array)] if affine_only is not None else []
    whole = result.warped if result.warped is not None else result.warp(moving)
    stages.append(("whole", whole.array[strided]))
    for stage, warped in stages:
        after = normalized_mutual_information(fixed_values, warped)
        if after < before - MI_DROP:
            part = "the affine stage" if stage == "affine" else "the registration"
            found.append(f"the images match worse after {part} than before it (normalised mutual information "
                         f"{before:.3f} before, {after:.3f} after; the optimised {similarity} similarity does not "
                         f"see this): {_cause(fixed_values, start, similarity)}.")
            break
    return found
