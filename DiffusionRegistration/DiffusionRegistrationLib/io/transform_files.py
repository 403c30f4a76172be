"""Transform files that ITK, ANTs and 3D Slicer read the same way (fixed->moving, LPS mm).

- .h5 / .hdf5 / .tfm with a dense field: an ITK DisplacementFieldTransform;
- .nii.gz / .nii / .mha / .mhd / .nrrd: a vector image of displacements (ANTs' warp format);
- .tfm / .txt / .mat for an affine matrix alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from ..errors import RegistrationError
from .images import Grid

FIELD_SUFFIXES = (".h5", ".hdf5")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def field_image(displacement: np.ndarray, grid: Grid) -> sitk.Image:
    """A float64 vector image of a displacement field [*grid.shape, D] on `grid`."""
    if tuple(displacement.shape) != grid.shape + (grid.dim,):
        raise RegistrationError(f"displacement field shape {displacement.shape} does not match the grid "
                                f"({grid.shape + (grid.dim,)} expected).")
    return grid.apply_to(sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True))


def displacement_transform(displacement: np.ndarray, grid: Grid) -> sitk.DisplacementFieldTransform:
    return sitk.DisplacementFieldTransform(field_image(displacement, grid))


def write_displacement(displacement: np.ndarray, grid: Grid, path: str | os.PathLike) -> Path:
    """Writes a fixed->moving displacement field as an ITK transform (.h5) or a vector image, atomically."""
    path = Path(path)
    suffix = _suffix(path)
    with atomic_path(path) as temporary:
        if suffix in FIELD_SUFFIXES:
            sitk.WriteTransform(displacement_transform(displacement, grid), str(temporary))
        elif suffix in IMAGE_SUFFIXES:
            sitk.WriteImage(sitk.Cast(field_image(displacement, grid), sitk.sitkVectorFloat32), str(temporary),
                            useCompression=True)
        else:
            raise RegistrationError(f"{path}: unknown transform format '{suffix}'. Use .h5 for an ITK "
                                    f"transform or one of {', '.join(IMAGE_SUFFIXES)} for a vector image.")
    return path


def write_affine(matrix: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes a homogeneous (D+1)x(D+1) fixed->moving matrix as an ITK AffineTransform (.tfm/.txt/.mat/.h5)."""
    dim = matrix.shape[0] - 1
    transform = sitk.AffineTransform(dim)
    transform.SetMatrix(matrix[:dim, :dim].ravel().tolist())
    transform.SetTranslation(matrix[:dim, dim].tolist())
    with atomic_path(path) as temporary:
        sitk.WriteTransform(transform, str(temporary))
    return Path(path)


def read_displacement(path: str | os.PathLike, grid: Grid | None = None) -> tuple[np.ndarray, Grid]:
    """Reads any transform file as a displacement field, sampled on `grid` (default: the field's own grid)."""
    path = Path(path)
    if not path.is_file():
        raise RegistrationError(f"transform {path}: no such file. Check the path.")
    suffix = _suffix(path)
    try:
        if suffix in IMAGE_SUFFIXES:
            image = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
            transform: sitk.Transform = sitk.DisplacementFieldTransform(sitk.Image(image))
            own = Grid.from_sitk(image)
        else:
            transform = sitk.ReadTransform(str(path))
            own = None
    except RuntimeError as error:
        raise RegistrationError(f"transform {path}: cannot be read ({str(error).strip().splitlines()[-1]}).") from None
    if own is None:
        flat = transform.Downcast() if transform.GetName() != "CompositeTransform" else transform
        if isinstance(flat, sitk.DisplacementFieldTransform):
            own = Grid.from_sitk(flat.GetDisplacementField())
    target = grid or own
    if target is None:
        raise RegistrationError(f"transform {path}: holds no dense field; give the grid to sample it on.")
    converter = sitk.TransformToDisplacementFieldFilter()
    converter.SetReferenceImage(target.apply_to(sitk.Image([int(s) for s in target.size], sitk.sitkUInt8)))
    converter.SetOutputPixelType(sitk.sitkVectorFloat64)
    field = sitk.GetArrayFromImage(converter.Execute(transform)).astype(np.float32)
    return field, target
