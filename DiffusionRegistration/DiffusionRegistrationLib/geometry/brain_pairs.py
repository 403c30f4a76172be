"""Pairs of a skull-stripped brain and a head scan, built from the fetched data, with their known brain masks.

The template onto a patient's head scan is the common clinical case (issue 22): MNI152 (nilearn, skull-stripped)
onto Colin27 with skull (ch2), whose brain is known exactly (ch2bet > 0 on the same grid). Colin27 lies in
MNI space already; a patient's head does not, so the head scan is turned and shifted (its header: HEAD_POSE)
and the images do not overlap as they lie. The head scan's air is set to exactly zero (de-identified or
background-suppressed scans), to noise (as acquired), or zero in a field of view enlarged by PAD_MM on every
side. Pairs (`PAIRS`, fixed <- moving):
- zero, noisy, fov: MNI152 onto ch2 with that air;
- reverse: ch2 with zero air onto MNI152;
- heads: ch2 with zero air onto ch2 with noisy air warped by a known smooth field (seed), head onto head.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from ..core.image import Image
from ..errors import RegistrationError
from ..io.data import COLIN_BET, COLIN_T1, MNI152, data_file, resample_isotropic
from ..io.images import read_image
from .synthetic import random_smooth_displacement, warp_with_displacement

PAIRS = ("zero", "noisy", "fov", "reverse", "heads")
HEAD_THRESHOLD = 0.03  # of the 99th intensity percentile: ch2's tissue is above it, its remaining air below
NOISE = 0.03  # Rayleigh noise of the air: sigma as a share of the 99th intensity percentile
PAD_MM = 20.0  # the large field of view: ch2's 18 x 22 x 18 cm become 22 x 26 x 22 cm (zeros 0.42 -> 0.67)
MAX_MM = 8.0  # the known field of the head-onto-head pair
HEAD_POSE = ((8.0, -6.0, 10.0), (12.0, -15.0, 10.0))  # rotations about x, y, z (degrees), then a shift (mm)


@dataclass
class BrainPair:
    """A fixed and a moving image, each with its brain (1 inside, 0 outside) and its skull-stripped version
    (the brain's intensities, 0 elsewhere) on its own grid."""

    name: str
    fixed: Image
    moving: Image
    fixed_brain: Image
    moving_brain: Image
    fixed_stripped: Image
    moving_stripped: Image


def head_mask(image: Image) -> np.ndarray:
    """The head of a scan with skull: its largest connected object above HEAD_THRESHOLD, holes filled."""
    above = image.with_array((image.array > HEAD_THRESHOLD * np.percentile(image.array, 99)).astype(np.uint8))
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(above.to_sitk())) == 1
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(largest)) > 0


def with_air(image: Image, head: np.ndarray, noisy: bool, seed: int = 0) -> Image:
    """`image` with everything outside `head` set to 0, or to Rayleigh noise (magnitude MR's air)."""
    air = np.zeros(image.array.shape, dtype=np.float32)
    if noisy:
        sigma = NOISE * float(np.percentile(image.array[head], 99))
        parts = np.random.default_rng(seed).normal(0.0, sigma, (2, *image.array.shape))
        air = np.hypot(parts[0], parts[1]).astype(np.float32)
    return image.with_array(np.where(head, image.array, air).astype(np.float32))


def padded(image: Image, mm: float) -> Image:
    """`image` in a field of view enlarged by `mm` (zeros) on every side."""
    voxels = [int(round(mm / s)) for s in image.grid.spacing]
    return Image.from_sitk(sitk.ConstantPad(image.to_sitk(), voxels, voxels, 0.0), image.path)


def posed(image: Image, rotations_deg: tuple[float, float, float], shift_mm: tuple[float, float, float]) -> Image:
    """`image` turned about its grid's centre and shifted, by changing its header only (no resampling)."""
    rotation = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(rotations_deg)):
        turn = np.eye(3)
        a, b = [i for i in range(3) if i != axis]
        turn[[a, a, b, b], [a, b, a, b]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        rotation = turn @ rotation
    grid = image.grid
    centre = grid.center()
    origin = rotation @ (np.asarray(grid.origin) - centre) + centre + np.asarray(shift_mm)
    direction = rotation @ grid.direction_matrix
    return Image(image.array, replace(grid, origin=tuple(float(v) for v in origin),
                                      direction=tuple(float(v) for v in direction.ravel())), image.path)


def _brain(stripped: Image) -> Image:
    return stripped.with_array((stripped.array > 0).astype(np.float32))


def brain_pair(name: str, spacing_mm: float, seed: int = 0) -> BrainPair:
    """The pair `name` (one of PAIRS) at `spacing_mm`; `seed` draws the noise and the known field."""
    if name not in PAIRS:
        raise RegistrationError(f"unknown brain pair '{name}': use one of {', '.join(PAIRS)}.")
    colin = posed(resample_isotropic(read_image(data_file(COLIN_T1)), spacing_mm), *HEAD_POSE)
    colin_bet = posed(resample_isotropic(read_image(data_file(COLIN_BET)), spacing_mm), *HEAD_POSE)
    template = resample_isotropic(read_image(data_file(MNI152)), spacing_mm)
    head = head_mask(colin)
    zero_air = with_air(colin, head, noisy=False)
    if name == "reverse":
        return BrainPair(name, template, zero_air, _brain(template), _brain(colin_bet), template, colin_bet)
    if name == "heads":
        truth = random_smooth_displacement(colin.grid, MAX_MM, seed)
        fixed_bet = warp_with_displacement(colin_bet, truth)
        fixed_brain = warp_with_displacement(_brain(colin_bet), truth, "nearest")
        fixed = warp_with_displacement(with_air(colin, head, noisy=True, seed=seed), truth)
        return BrainPair(name, fixed, zero_air, fixed_brain, _brain(colin_bet), fixed_bet, colin_bet)
    fixed, fixed_bet = with_air(colin, head, noisy=name == "noisy", seed=seed), colin_bet
    if name == "fov":
        fixed, fixed_bet = padded(fixed, PAD_MM), padded(colin_bet, PAD_MM)
    return BrainPair(name, fixed, template, _brain(fixed_bet), _brain(template), fixed_bet, template)
