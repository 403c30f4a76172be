"""What an image shows, decided from the image alone: a brain only (skull-stripped or otherwise cut out of a
larger scene), a whole head, or a scene without a constant background; and, from the two images' kinds,
which image's foreground limits where the similarity is measured.

A cut-out image is one object on an exactly constant background (zeros after skull stripping or masking).
A head scan whose air was set to zero, cropped, or padded with a large empty field of view has such a
background too, so the background alone cannot tell them apart (nor can the share of background voxels,
which depends on the field of view). What does is the object's outer layers: going inwards from the
background, a head shows scalp, then skull (no MR signal in any contrast), then brain: a dark layer between
brighter ones; a stripped brain goes from cortex to white matter without such a layer.
`layering` measures it on the median intensity of each layer of the outer LAYERS_MM millimetres.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ..core.image import Image
from ..geometry.spatial import strided

STRIPPED, HEAD, SCENE = "stripped", "head", "scene"
BACKGROUND_TOLERANCE = 1e-3  # of the intensity range: what counts as the exact background value
MIN_BACKGROUND = 0.1  # share of voxels: less is no constant background
LAYERS_MM = 30.0  # the outer layers looked at
SKULL_MM = 16.0  # a dark layer (skull, cerebrospinal fluid) starts less deep than this below the skin
MIN_LAYER_MM = 2.0
MIN_LAYER_VOXELS = 20
LAYERED = 0.075  # a layer this much (of the object's intensity range) darker than layers on both sides
WORKING_MM = 3.0  # the layers are measured on a grid about this coarse (every k-th voxel)
MIN_WORKING_VOXELS = 32


@dataclass(frozen=True)
class Foreground:
    """One image's kind, its constant background, and the depth below the skin of each voxel of its object.

    `depth` (mm to the object's surface, 0 outside it, holes filled) is on a grid of every k-th voxel of the
    image (about WORKING_MM): the quality guard warps it with the result. The object is the image without
    its constant background, or for a scene the largest object above half the Otsu threshold."""

    kind: str
    background: Optional[float]  # the constant background value, None for a scene
    tolerance: float
    background_share: float
    layering: float
    depth: Image

    def mask(self, image: Image) -> Image:
        """1 where `image` differs from its constant background (for a scene: where it is non-zero)."""
        if self.background is None:
            return image.with_array((image.array != 0).astype(np.float32))
        return image.with_array((np.abs(image.array - self.background) > self.tolerance).astype(np.float32))

    def describe(self) -> str:
        share = f"{100 * self.background_share:.0f} % of voxels"
        if self.kind == SCENE:
            return f"a scene: no constant background (only {share} at one value)"
        what = f"one object on a constant background ({share} at {self.background:g})"
        if self.kind == HEAD:
            return (f"a head: {what} with a dark layer under its surface (scalp, skull; layering "
                    f"{self.layering:.2f} >= {LAYERED})")
        return f"brain only (skull-stripped or masked): {what} without a dark layer under its surface " \
               f"(layering {self.layering:.2f} < {LAYERED})"


def _background(values: np.ndarray) -> tuple[float, float, float]:
    """The most common value, the tolerance around it, and the share of voxels within it."""
    low, high = np.percentile(values, [0.1, 99.9])
    tolerance = BACKGROUND_TOLERANCE * max(float(high - low), 1e-12)
    counts, edges = np.histogram(values, bins=int(1 / BACKGROUND_TOLERANCE), range=(float(low), float(high)))
    peak = int(np.argmax(counts))
    candidate = values[(values >= edges[peak]) & (values <= edges[peak + 1])]
    value = float(np.median(candidate)) if candidate.size else float(low)
    share = float((np.abs(values - value) <= tolerance).mean())
    return value, tolerance, share


def _coarse(image: Image) -> Image:
    """Every k-th voxel, about WORKING_MM apart, keeping at least MIN_WORKING_VOXELS along each axis."""
    step = min(round(WORKING_MM / min(image.grid.spacing)), min(image.grid.size) // MIN_WORKING_VOXELS)
    return strided(image, max(1, step))


def object_depth(inside: np.ndarray, like: Image) -> Image:
    """Distance (mm) from each voxel of the object `inside` (holes filled) to the nearest voxel outside it."""
    import SimpleITK as sitk

    mask = like.with_array(inside.astype(np.uint8)).to_sitk()
    filled = sitk.BinaryFillhole(mask)
    distance = sitk.SignedMaurerDistanceMap(filled, insideIsPositive=True, squaredDistance=False,
                                            useImageSpacing=True)
    depth = np.clip(sitk.GetArrayFromImage(distance), 0, None).astype(np.float32)
    return like.with_array(np.where(sitk.GetArrayFromImage(filled) > 0, np.maximum(depth, 1e-3), 0.0)
                           .astype(np.float32))


def layering(values: np.ndarray, depth: np.ndarray, spacing_mm: float) -> float:
    """How far one of the object's outer layers (starting less than SKULL_MM deep) lies below the brightest
    layers on both sides of it, in units of the object's intensity range; 0 without such a dark layer.
    Each layer's intensity is its median, over layers of width >= MIN_LAYER_MM down to LAYERS_MM."""
    inside = depth > 0
    if inside.sum() < MIN_LAYER_VOXELS:
        return 0.0
    low, high = np.percentile(values[inside], [1, 99])
    width = max(MIN_LAYER_MM, spacing_mm)
    outer = inside & (depth <= LAYERS_MM)
    layers, outer_values = np.ceil(depth[outer] / width).astype(np.int64), values[outer]
    profile = []  # (depth where the layer starts, its median intensity relative to the range)
    for layer in range(1, int(layers.max(initial=0)) + 1):
        members = outer_values[layers == layer]
        if members.size >= MIN_LAYER_VOXELS:
            profile.append(((layer - 1) * width, (float(np.median(members)) - low) / max(float(high - low), 1e-12)))
    levels = [level for _, level in profile]
    best = 0.0
    for j in range(1, len(profile) - 1):
        if profile[j][0] < SKULL_MM:
            best = max(best, min(max(levels[:j]), max(levels[j + 1:])) - levels[j])
    return best


def _scene_object(image: Image) -> np.ndarray:
    """The largest connected object above half the Otsu threshold (a head in noisy air)."""
    import SimpleITK as sitk

    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(image.to_sitk())
    above = image.with_array((image.array > otsu.GetThreshold() / 2).astype(np.uint8)).to_sitk()
    return sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(above)) == 1) > 0


def classify(image: Image) -> Foreground:
    """The kind of `image` (STRIPPED, HEAD or SCENE) and what it was decided from."""
    coarse = _coarse(image)
    values = coarse.array.astype(np.float32)
    value, tolerance, share = _background(values)
    if share < MIN_BACKGROUND:
        return Foreground(SCENE, None, tolerance, share, 0.0, object_depth(_scene_object(coarse), coarse))
    depth = object_depth(np.abs(values - value) > tolerance, coarse)
    layered = layering(values, depth.array, float(max(coarse.grid.spacing)))
    return Foreground(HEAD if layered >= LAYERED else STRIPPED, value, tolerance, share, layered, depth)


def _reason(role: str, other: str, kinds: dict[str, Foreground], given: bool, use: bool) -> str:
    if given:
        return f"the {role} mask was given"
    if use:
        return f"the {role} image is brain only and the {other} image is not: the similarity is measured " \
               f"inside the {role} image's foreground"
    if kinds[role].kind == STRIPPED:
        return "both images are brain only: no foreground mask"
    return f"the {role} image is not brain only: no foreground mask"


@dataclass
class MaskDecision:
    """The masks the similarity is measured in, the decided fixed_/moving_foreground_mask and why."""

    fixed_mask: Optional[Image]
    moving_mask: Optional[Image]
    fixed_foreground_mask: bool
    moving_foreground_mask: bool
    reasons: dict[str, str]
    fixed: Foreground
    moving: Foreground


def decide_masks(fixed: Image, moving: Image, fixed_mask: Optional[Image], moving_mask: Optional[Image],
                 fixed_foreground: Union[bool, str], moving_foreground: Union[bool, str]) -> MaskDecision:
    """Masks each image with its foreground where its setting is true, or "auto" decides so: an image that is
    brain only onto one that is not (a skull-stripped template onto a head scan, or a head scan onto a
    skull-stripped template). Heads onto heads, brains onto brains and scenes stay unmasked. A given mask
    wins over its image's setting."""
    kinds = {"fixed": classify(fixed), "moving": classify(moving)}
    images = {"fixed": fixed, "moving": moving}
    given = {"fixed": fixed_mask, "moving": moving_mask}
    settings = {"fixed": fixed_foreground, "moving": moving_foreground}
    reasons = {role: kind.describe() for role, kind in kinds.items()}
    masks, decided = {}, {}
    for role, other in (("fixed", "moving"), ("moving", "fixed")):
        use = settings[role]
        if use == "auto":
            use = given[role] is None and kinds[role].kind == STRIPPED and kinds[other].kind != STRIPPED
            reasons[f"{role}_foreground_mask"] = _reason(role, other, kinds, given[role] is not None, use)
        else:
            reasons[f"{role}_foreground_mask"] = f"set to {str(use).lower()}" + \
                (" (the given mask is used)" if given[role] is not None else "")
        decided[role] = bool(use)
        masks[role] = given[role] if given[role] is not None or not use else kinds[role].mask(images[role])
    return MaskDecision(masks["fixed"], masks["moving"], decided["fixed"], decided["moving"], reasons,
                        kinds["fixed"], kinds["moving"])
