"""Pictures people look at instead of numbers: checkerboards of the mid-planes before and after."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image as PILImage, ImageDraw

from ..errors import RegistrationError
from .atomic import atomic_path, not_as_written
from ..core.image import Grid, Image


def checkerboard_array(first: np.ndarray, second: np.ndarray, grid: Grid, square_mm: float) -> np.ndarray:
    """Voxels of `first` where the square parity is even and of `second` where it is odd.

    Squares are `square_mm` wide along each grid axis, counted from voxel 0 (index * spacing), so they
    stay aligned with the volume even when it is oblique.
    """
    if first.shape != second.shape or first.shape != grid.shape:
        raise RegistrationError(f"checkerboard: volumes of shape {first.shape} and {second.shape} differ; "
                                "both must lie on the fixed volume's grid.")
    if not square_mm > 0:
        raise RegistrationError(f"checkerboard square size {square_mm} mm: must be positive (e.g. 10 mm).")
    parity = np.zeros(grid.shape, dtype=np.int64)
    for axis, spacing in enumerate(reversed(grid.spacing)):  # array axes are (z, y, x)
        index = np.floor(np.arange(grid.shape[axis]) * spacing / square_mm + 1e-9).astype(np.int64)
        shape = [1] * len(grid.shape)
        shape[axis] = -1
        parity = parity + index.reshape(shape)
    return np.where(parity % 2 == 0, first, second.astype(first.dtype, copy=False))


def display_range(array: np.ndarray) -> np.ndarray:
    """Maps the 1st..99.5th percentile of non-zero voxels to [0, 1] for display."""
    values = array[array != 0] if np.any(array != 0) else array
    low, high = np.percentile(values, [1, 99.5])
    return np.clip((array - low) / max(high - low, 1e-12), 0, 1)


def mid_planes(image: Image) -> list[tuple[str, np.ndarray, tuple[float, float]]]:
    """(name, plane, (row spacing, column spacing)) for the axial, coronal and sagittal mid-planes.

    Planes are flipped so that superior and anterior point up on screen, as radiologists expect
    for images stored in (roughly) LPS-aligned index order.
    """
    array = image.array
    if image.dim == 2:
        return [("slice", array, (image.grid.spacing[1], image.grid.spacing[0]))]
    sx, sy, sz = image.grid.spacing
    z, y, x = (n // 2 for n in array.shape)
    return [("axial", array[z], (sy, sx)),
            ("coronal", array[:, y][::-1], (sz, sx)),
            ("sagittal", array[:, :, x][::-1], (sz, sy))]


def _tile(plane: np.ndarray, spacing: tuple[float, float], height: int) -> PILImage.Image:
    rows, cols = plane.shape
    aspect = (cols * spacing[1]) / (rows * spacing[0])
    picture = PILImage.fromarray((plane * 255).astype(np.uint8))
    return picture.resize((max(int(round(height * aspect)), 1), height), PILImage.BILINEAR)


def before_after_checkerboard(fixed: Image, before: Image, after: Image, path: str | os.PathLike,
                              square_mm: float = 10.0, height: int = 256,
                              titles: Sequence[str] = ("before", "after")) -> Path:
    """A PNG: rows 'before' and 'after', columns the mid-planes, each a fixed/moving checkerboard."""
    fixed_d, rows = display_range(fixed.array), []
    for title, moving in zip(titles, (before, after)):
        moving_d = display_range(moving.array)
        board = fixed.with_array(checkerboard_array(fixed_d, moving_d, fixed.grid, square_mm))
        rows.append((title, [_tile(p, s, height) for _, p, s in mid_planes(board)]))
    names = [name for name, _, _ in mid_planes(fixed)]
    label, gap = 18, 4
    width = sum(t.width for t in rows[0][1]) + gap * (len(rows[0][1]) + 1)
    canvas = PILImage.new("RGB", (width, (height + label + gap) * len(rows) + gap), "black")
    draw = ImageDraw.Draw(canvas)
    for r, (title, tiles) in enumerate(rows):
        top, left = gap + r * (height + label + gap), gap
        for name, tile in zip(names, tiles):
            draw.text((left + 2, top), f"{title}: {name}", fill=(255, 220, 0))
            canvas.paste(tile, (left, top + label))
            left += tile.width + gap
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
        try:
            with PILImage.open(temporary) as back:
                same = back.convert("RGB").tobytes() == canvas.tobytes()
        except OSError:
            same = False
        if not same:
            raise not_as_written(path)
    return Path(path)
