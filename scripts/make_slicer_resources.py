"""Draws the Slicer extension's pictures from real data and a real run of the module's logic.

- DiffusionRegistration/Resources/Icons/DiffusionRegistration.png and Resources/Icons/DiffusionRegistration.png:
  a 128x128 checkerboard of the aligned BrainWeb T1 and proton-density slices (ITK example data).
- Resources/Screenshots/slicer_checkerboard.png: the module's checkerboard review of a registration result.
  The PD slice is deformed by a known smooth field; the registration runs the way Slicer runs it (volume
  nodes -> RegistrationJob -> background `diffreg register` process -> grid transform and checkerboard
  nodes), and the picture shows the checkerboard volume node the job created.

Run: .venv/bin/python scripts/make_slicer_resources.py   (needs the test data: bash scripts/setup.sh)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image as PILImage, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DiffusionRegistration"))

from DiffusionRegistrationLib.io.data import ITK_PD_SLICE, ITK_T1_SLICE, data_file  # noqa: E402
from DiffusionRegistrationLib.core.image import Image  # noqa: E402

ICONS = [ROOT / "DiffusionRegistration" / "Resources" / "Icons" / "DiffusionRegistration.png",
         ROOT / "Resources" / "Icons" / "DiffusionRegistration.png"]
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "slicer_checkerboard.png"


def grey(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))


def to_unit(array: np.ndarray) -> np.ndarray:
    low, high = np.percentile(array[array > 0] if (array > 0).any() else array, [1, 99.5])
    return np.clip((array - low) / max(high - low, 1e-6), 0, 1)


def draw_icon() -> PILImage.Image:
    """Checkerboard of T1 (grey) and PD (warm tint), 4x4 squares, rounded corners, transparent outside."""
    t1, pd = to_unit(grey(data_file(ITK_T1_SLICE))), to_unit(grey(data_file(ITK_PD_SLICE)))
    rows, cols = t1.shape
    side = min(rows, cols)
    crop = (slice((rows - side) // 2, (rows + side) // 2), slice((cols - side) // 2, (cols + side) // 2))

    def resized(array):
        return np.asarray(PILImage.fromarray((array[crop] * 255).astype(np.uint8)).resize((128, 128),
                                                                                          PILImage.LANCZOS)) / 255.0
    t1_small, pd_small = resized(t1), resized(pd)
    parity = (np.indices((128, 128)) // 32).sum(0) % 2
    rgb = np.where(parity[..., None] == 0, np.stack([t1_small] * 3, -1),
                   np.stack([pd_small, pd_small * 0.62, pd_small * 0.25], -1))
    picture = PILImage.fromarray((rgb * 255).astype(np.uint8)).convert("RGBA")
    mask = PILImage.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, 127, 127), radius=18, fill=255)
    picture.putalpha(mask)
    return picture


def known_field(shape: tuple[int, int], spacing: float) -> np.ndarray:
    """A smooth LPS displacement (mm) on the slice, up to about 6 mm."""
    y, x = np.indices(shape) * spacing
    cy, cx = y.mean(), x.mean()
    field = np.zeros(shape + (2,))
    field[..., 0] = 4.0 * np.sin((y - cy) / 30.0) + 2.0
    field[..., 1] = 3.0 * np.cos((x - cx) / 35.0) - 1.5
    return field


def register_like_slicer(fixed: sitk.Image, moving: sitk.Image, square_mm: float):
    """Volume nodes -> the module's background job -> (checkerboard array, seconds)."""
    import slicer
    from DiffusionRegistrationLib.slicer import image_from_volume_node, volume_node_from_image
    from DiffusionRegistrationLib.engine.options import RegistrationOptions
    from DiffusionRegistrationLib.slicer.job import RegistrationJob

    scene = slicer.vtkMRMLScene()
    fixed_node = volume_node_from_image(Image.from_sitk(fixed), scene=scene, name="T1")
    moving_node = volume_node_from_image(Image.from_sitk(moving), scene=scene, name="PD deformed")
    options = RegistrationOptions(preset="multimodal", device="cpu", checkerboard_square_mm=square_mm,
                                  overrides={"threads": 1})
    start = time.perf_counter()
    result = RegistrationJob(scene, fixed_node, moving_node, options).start().wait()
    seconds = time.perf_counter() - start
    return image_from_volume_node(result.checkerboard).array[0], seconds, result.report


def label(picture: PILImage.Image, text: str) -> PILImage.Image:
    canvas = PILImage.new("RGB", (picture.width, picture.height + 28), (24, 24, 28))
    canvas.paste(picture.convert("RGB"), (0, 28))
    ImageDraw.Draw(canvas).text((8, 7), text, fill=(235, 235, 235), font=ImageFont.load_default())
    return canvas


def draw_screenshot() -> PILImage.Image:
    from DiffusionRegistrationLib.slicer import checkerboard_array

    fixed = sitk.ReadImage(str(data_file(ITK_T1_SLICE)), sitk.sitkFloat32)
    pd = sitk.ReadImage(str(data_file(ITK_PD_SLICE)), sitk.sitkFloat32)
    field = sitk.GetImageFromArray(known_field(fixed.GetSize()[::-1], fixed.GetSpacing()[0]), isVector=True)
    field.CopyInformation(fixed)
    moving = sitk.Resample(pd, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0)
    square_mm = 24.0
    after, seconds, report = register_like_slicer(fixed, moving, square_mm)
    f, m = sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(moving)
    grid = Image.from_sitk(fixed).grid
    before = checkerboard_array(to_unit(f), to_unit(m), grid, square_mm)
    # the job's checkerboard keeps raw intensities: show each square with its own volume's window
    parity = checkerboard_array(np.zeros_like(f), np.ones_like(f), grid, square_mm)
    after_display = np.where(parity == 0, to_unit(np.where(parity == 0, after, 0)),
                             to_unit(np.where(parity == 1, after, 0)))
    tiles = [label(PILImage.fromarray((to_unit(f) * 255).astype(np.uint8)), "fixed: T1"),
             label(PILImage.fromarray((before * 255).astype(np.uint8)), "checkerboard before (PD, deformed)"),
             label(PILImage.fromarray((after_display * 255).astype(np.uint8)),
                   f"checkerboard after ({seconds:.0f} s, multimodal)")]
    scale = 1.5
    tiles = [t.resize((int(t.width * scale), int(t.height * scale)), PILImage.BICUBIC) for t in tiles]
    sheet = PILImage.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) + 1), tiles[0].height + 16),
                         (24, 24, 28))
    x = 8
    for tile in tiles:
        sheet.paste(tile, (x, 8))
        x += tile.width + 8
    print(f"registration through the module's job: {seconds:.1f} s; report: "
          f"{ {k: report[k] for k in ('seconds', 'percent_folded', 'max_displacement_mm') if k in report} }")
    return sheet


def main() -> None:
    icon = draw_icon()
    for path in ICONS:
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path)
        print(f"wrote {path}")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    draw_screenshot().save(SCREENSHOT)
    print(f"wrote {SCREENSHOT}")


if __name__ == "__main__":
    main()
