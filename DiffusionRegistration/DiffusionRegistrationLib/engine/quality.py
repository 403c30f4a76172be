"""The quality guard: warnings for a registration that probably made things worse.

Checked after every run, independently of the similarity that was optimised:
- the normalised mutual information of the fixed image and the moving image is lower after the
  registration than with the images as they lie (an intensity similarity such as LNCC can improve
  while the anatomy drifts apart, typically on a pair of different contrasts);
- the optimised similarity itself ended worse than it started at some level (divergence);
- the affine part is implausible: a scale outside 0.5-2, a strong shear or a mirroring.
Each warning names the likely cause and the setting to try.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..geometry.spatial import physical_points
from ..core.image import Grid, Image
from ..similarity.registry import same_contrast
from .result import Result

MI_BINS = 32
MI_DROP = 0.01  # NMI is in [1, 2]; smaller drops are interpolation noise
SCALE_RANGE = (0.5, 2.0)
MAX_ANISOTROPY = 1.5  # largest / smallest singular value of the affine's linear part
LOSS_RISE = 0.2  # a level whose loss ends this much (relative) above its start diverged; less is step noise
MIN_CORRELATION = 0.3
GUARD_VOXELS = 1 << 18


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


def _every(grid: Grid, step: int) -> Grid:
    """The voxels of `grid` at every `step`-th index along each axis, as a grid of their own."""
    return replace(grid, size=tuple(-(-n // step) for n in grid.size), spacing=tuple(s * step for s in grid.spacing))


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


def quality_warnings(result: Result, fixed: Image, moving: Image, similarity: str) -> list[str]:
    """The guard's warnings for a finished registration of `moving` onto `fixed` (empty when all is plausible).

    The images are compared on every `step`-th voxel (at most about GUARD_VOXELS of them): the same
    statistics as on all voxels for a histogram of 32 x 32 bins, at a fraction of the time.
    """
    found = _loss_warnings(result.history)
    if result.affine is not None:
        found += affine_warnings(result.affine)
    step = max(1, math.ceil((fixed.array.size / GUARD_VOXELS) ** (1 / fixed.dim) - 1e-9))
    grid = _every(fixed.grid, step)
    strided = (slice(None, None, step),) * fixed.dim
    fixed_values = fixed.array[strided]
    start = Result.identity(grid, moving.grid).warp(moving).array
    before = normalized_mutual_information(fixed_values, start)
    stages = [("affine", _affine_only(result, grid).warp(moving).array)] if result.affine is not None else []
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
