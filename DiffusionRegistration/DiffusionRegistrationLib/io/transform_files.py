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

from ..errors import RegistrationError
from .atomic import atomic_path, not_as_written, reserve
from .image_headers import check_image_file
from .paths import input_file
from ..core.image import Grid
from .images import itk_messages_hidden, unwritable, write_image

FIELD_SUFFIXES = (".h5", ".hdf5")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
AFFINE_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5")
HDF5_OVERHEAD = 16_384  # bytes an ITK .h5 displacement field holds beside its float64 values


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
    check_transform_name(path)
    if _suffix(path) not in FIELD_SUFFIXES:
        return write_image(sitk.Cast(field_image(displacement, grid), sitk.sitkVectorFloat32), path)
    with atomic_path(path) as temporary:
        reserve(temporary, displacement.size * 8 + HDF5_OVERHEAD, path)
        try:
            with itk_messages_hidden():
                sitk.WriteTransform(displacement_transform(displacement, grid), str(temporary))
        except RuntimeError as error:
            raise unwritable(path, error) from None
        try:
            with itk_messages_hidden():
                back = sitk.ReadTransform(str(temporary))
            back_field = sitk.GetArrayFromImage(back.Downcast().GetDisplacementField())
        except (RuntimeError, AttributeError) as error:
            raise not_as_written(path, f" ({str(error).strip().splitlines()[-1] if str(error).strip() else ''})") from None
        if not np.array_equal(back_field, displacement.astype(np.float64)):
            raise not_as_written(path, " (other field values)")
    return path


def check_transform_name(path: str | os.PathLike, affine: bool = False) -> None:
    """RegistrationError when `path`'s suffix is not a transform format this module writes."""
    suffix = _suffix(Path(path))
    allowed = AFFINE_SUFFIXES if affine else FIELD_SUFFIXES + IMAGE_SUFFIXES
    if suffix not in allowed:
        kind = "affine transform" if affine else "transform"
        raise RegistrationError(f"{path}: unknown {kind} format '{suffix}'. Use one of {', '.join(allowed)}"
                                + ("" if affine else " (.h5: ITK transform; the others: a vector image)") + ".")


def write_affine(matrix: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes a homogeneous (D+1)x(D+1) fixed->moving matrix as an ITK AffineTransform (.tfm/.txt/.mat/.h5)."""
    dim = matrix.shape[0] - 1
    transform = sitk.AffineTransform(dim)
    transform.SetMatrix(matrix[:dim, :dim].ravel().tolist())
    transform.SetTranslation(matrix[:dim, dim].tolist())
    check_transform_name(path, affine=True)
    with atomic_path(path) as temporary:
        try:
            with itk_messages_hidden():
                sitk.WriteTransform(transform, str(temporary))
                back = sitk.ReadTransform(str(temporary)).GetParameters()
        except RuntimeError as error:
            raise unwritable(path, error) from None
        if not np.allclose(back, transform.GetParameters(), rtol=1e-6, atol=1e-9):
            raise not_as_written(path, " (other parameters)")
    return Path(path)


def read_displacement(path: str | os.PathLike, grid: Grid | None = None) -> tuple[np.ndarray, Grid]:
    """Reads any transform file as a displacement field, sampled on `grid` (default: the field's own grid)."""
    path = input_file(path, "transform")
    suffix = _suffix(path)
    if suffix in IMAGE_SUFFIXES:
        check_image_file(path, "transform")
    elif suffix in (".tfm", ".txt"):
        _check_parameter_text(path)
    try:
        with itk_messages_hidden():
            image = sitk.ReadImage(str(path), sitk.sitkVectorFloat64) if suffix in IMAGE_SUFFIXES else None
            transform = sitk.ReadTransform(str(path)) if image is None else None
        if image is not None:
            if image.GetNumberOfComponentsPerPixel() != image.GetDimension():
                raise RegistrationError(f"transform {path}: has {image.GetNumberOfComponentsPerPixel()} components "
                                        f"per voxel in a {image.GetDimension()}D image; a displacement field has one "
                                        "per axis.")
            transform = sitk.DisplacementFieldTransform(sitk.Image(image))
            own = Grid.from_sitk(image)
        else:
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
    if transform.GetDimension() != target.dim:
        raise RegistrationError(f"transform {path}: is {transform.GetDimension()}D but the image grid is {target.dim}D; "
                                "use the transform of a registration of images of this dimension.")
    converter = sitk.TransformToDisplacementFieldFilter()
    converter.SetReferenceImage(target.apply_to(sitk.Image([int(s) for s in target.size], sitk.sitkUInt8)))
    converter.SetOutputPixelType(sitk.sitkVectorFloat64)
    field = sitk.GetArrayFromImage(converter.Execute(transform)).astype(np.float32)
    if not np.isfinite(field).all():
        raise RegistrationError(f"transform {path}: maps points to NaN or infinite positions; the file is damaged. "
                                "Write the transform again.")
    return field, target


def _check_parameter_text(path: Path) -> None:
    """An ITK text transform's parameter lines must hold finite numbers only (ITK stops at the first bad one)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise RegistrationError(f"transform {path}: cannot be read ({error.strerror}).") from None
    for number, line in enumerate(lines, 1):
        key, _, values = line.partition(":")
        if key.strip() not in ("Parameters", "FixedParameters"):
            continue
        try:
            finite = all(np.isfinite(float(v)) for v in values.split())
        except ValueError:
            finite = False
        if not finite:
            raise RegistrationError(f"transform {path}, line {number}: {key.strip()} holds something other than "
                                    "finite numbers; the file is damaged. Write the transform again.")
