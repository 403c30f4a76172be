"""Reading, checking and writing images (core.image's Grid and Image) through SimpleITK."""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import SimpleITK as sitk

from ..core.image import Grid, Image
from ..errors import RegistrationError
from .atomic import WriteError, atomic_path, not_as_written
from .image_headers import check_image_file, nifti_version
from .paths import existing_path


_HIDING = threading.Lock()
_hidden: dict[str, int] = {"depth": 0, "saved": -1}


@contextmanager
def itk_messages_hidden() -> Iterator[None]:
    """Hides what ITK and its HDF5/MetaIO libraries print on the process's stderr during the block: their
    failures reach us as exceptions, and the command line promises one `error:` line.

    Blocks may overlap in several threads (outputs are written side by side): the first one in points
    stderr at the null device and the last one out restores it, so no thread restores another's null."""
    with _HIDING:
        if _hidden["depth"] == 0:
            sys.stderr.flush()
            try:
                _hidden["saved"] = os.dup(2)
                with open(os.devnull, "wb") as sink:
                    os.dup2(sink.fileno(), 2)
            except OSError:
                _hidden["saved"] = -1
        _hidden["depth"] += 1
    try:
        yield
    finally:
        with _HIDING:
            _hidden["depth"] -= 1
            if _hidden["depth"] == 0 and _hidden["saved"] >= 0:
                os.dup2(_hidden["saved"], 2)
                os.close(_hidden["saved"])
                _hidden["saved"] = -1


def _read_sitk(path: Path, role: str) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise RegistrationError(f"{role} {path}: the folder holds no DICOM series. Give an image file or a "
                                    "folder with the DICOM files of one series.")
        if len(series) > 1:
            raise RegistrationError(f"{role} {path}: the folder holds {len(series)} DICOM series "
                                    f"({', '.join(series[:4])}...). Put one series per folder.")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        return reader.Execute()
    if nifti_version(path) == 2:
        return _read_nifti2(path, role)
    return sitk.ReadImage(str(path))


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _read_nifti2(path: Path, role: str) -> sitk.Image:
    """A NIfTI-2 file (ITK reads NIfTI-1 only) through nibabel: its voxels (scaled by scl_slope/scl_inter
    as ITK does) and nibabel's voxel-to-RAS affine (the sform where set, else the qform), turned into ITK's
    LPS origin, spacing and direction."""
    try:
        import nibabel
    except ImportError:
        raise RegistrationError(f"{role} {path}: is a NIfTI-2 file, which ITK cannot read. Install nibabel (pip "
                                "install nibabel) to read it, or save it as NIfTI-1.") from None
    try:
        loaded = nibabel.load(str(path))
        array = np.asanyarray(loaded.dataobj)
        affine = np.asarray(loaded.affine, dtype=np.float64)
    except Exception as error:  # nibabel raises many types for damaged files
        raise RegistrationError(f"{role} {path}: cannot be read as NIfTI-2 ({type(error).__name__}: {error})."
                                ) from None
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    dim = array.ndim
    if dim not in (2, 3):
        raise RegistrationError(f"{role} {path}: is {dim}D; give a 2D or 3D image (extract one volume of a 4D "
                                "series first).")
    linear = (_RAS_TO_LPS @ affine[:3, :3])[:dim, :dim]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(tuple(reversed(range(dim))))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in (_RAS_TO_LPS @ affine[:3, 3])[:dim]])
    if np.all(spacing > 0):
        image.SetDirection([float(v) for v in (linear / spacing).ravel()])
    return image


def _read_checked(path: Path, role: str) -> sitk.Image:
    """The image as ITK reads it, after the header checks; its grid must be usable."""
    existing_path(path, role)
    if not path.is_dir():
        check_image_file(path, role)
    try:
        with itk_messages_hidden():
            image = _read_sitk(path, role)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise RegistrationError(f"{role} {path}: cannot be read as an image ({first}). Give a NIfTI, NRRD, "
                                "MHA/MHD, PNG/TIFF file or a DICOM series folder.") from None
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() not in (2, 3):
        raise RegistrationError(f"{role} {path}: is {image.GetDimension()}D; give a 2D or 3D image "
                                "(extract one volume of a 4D series first).")
    check_grid(Grid.from_sitk(image), f"{role} {path}")
    return image


def check_grid(grid: Grid, name: str) -> None:
    """Refuses a grid with zero, negative or non-finite spacing, a non-finite origin or a singular direction."""
    if not all(np.isfinite(s) and s > 0 for s in grid.spacing):
        raise RegistrationError(f"{name}: voxel spacing {list(grid.spacing)} has a zero, negative or non-finite "
                                "value. Fix the spacing in the header and save the image again.")
    if not np.all(np.isfinite(grid.origin)) or not np.all(np.isfinite(grid.direction)) \
            or abs(np.linalg.det(grid.direction_matrix)) < 1e-6:
        raise RegistrationError(f"{name}: its origin {list(grid.origin)} or direction {list(grid.direction)} is not "
                                "finite or not a rotation. Fix the orientation in the header and save it again.")


def read_image(path: str | os.PathLike, role: str = "image", dtype=np.float32) -> Image:
    """Reads a 2D or 3D scalar image (NIfTI, NRRD, MHA/MHD, PNG/TIFF, DICOM folder) and checks it.

    Colour 2D images are converted to grey. Raises RegistrationError naming the file and the fix.
    """
    path = Path(path)
    image = _read_checked(path, role)
    if image.GetNumberOfComponentsPerPixel() in (3, 4) and image.GetDimension() == 2:
        channels = [sitk.VectorIndexSelectionCast(image, c, sitk.sitkFloat32) for c in range(3)]
        image = channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114
    elif image.GetNumberOfComponentsPerPixel() != 1:
        raise RegistrationError(f"{role} {path}: has {image.GetNumberOfComponentsPerPixel()} components per "
                                "voxel (a colour or vector volume); registration needs a scalar (grey) image. "
                                "Convert it first (in Slicer: Vector to Scalar Volume).")
    result = Image(sitk.GetArrayFromImage(image).astype(dtype, copy=False), Grid.from_sitk(image), str(path))
    check_image(result, role)
    return result


def check_image(image: Image, role: str = "image") -> None:
    """Rejects images that cannot be registered: NaN/inf voxels, constant or empty images."""
    array = image.array
    if array.size == 0 or min(array.shape) < 4:
        raise RegistrationError(f"{role} {image.name}: is too small ({'x'.join(map(str, image.grid.size))} "
                                "voxels); each side needs at least 4 voxels.")
    finite = np.isfinite(array)
    if not finite.all():
        raise RegistrationError(f"{role} {image.name}: {int((~finite).sum())} voxels are NaN or infinite. "
                                "Fix or mask them before registering.")
    if float(array.max()) == float(array.min()):
        raise RegistrationError(f"{role} {image.name}: every voxel is {float(array.max()):g}; the image is "
                                "empty or constant and has nothing to align.")


def read_labels(path: str | os.PathLike, role: str = "label map") -> Image:
    """Reads a label map or mask as stored (integer type kept, no intensity checks)."""
    image = _read_checked(Path(path), role)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise RegistrationError(f"{role} {path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                                "a mask or label map has one value per voxel. Save it as a scalar label map.")
    return Image.from_sitk(image, str(path))


def check_mask(mask: Image, reference: Image, role: str = "mask", label: Optional[str] = None) -> Image:
    """The mask as binary float32 weights; RegistrationError when it lies on another grid than
    `reference` or selects no voxel. `label` names it in messages (default: its path)."""
    label = label or mask.name
    if not mask.grid.same_as(reference.grid, tolerance=1e-3):
        raise RegistrationError(f"{role} {label}: lies on another voxel grid than {reference.name} ({mask.grid.size} "
                                f"vs {reference.grid.size} voxels, or another origin/spacing/direction). Resample "
                                "it onto the image grid (in Slicer: Resample Scalar/Vector/DWI Volume, or export "
                                "the segment with the volume as reference geometry).")
    binary = mask.array > 0
    if not binary.any():
        raise RegistrationError(f"{role} {label}: is empty (no voxel above 0). Draw the region to use, or leave "
                                "the mask out.")
    return mask.with_array(binary.astype(np.float32))


def read_mask(path: str | os.PathLike, reference: Image, role: str = "mask") -> Image:
    """Reads a binary mask that must lie on the grid of `reference` and must not be empty."""
    return check_mask(read_labels(path, role), reference, role)


def write_image(image: Image | sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Writes an image atomically; the format follows the file name (.nii.gz, .nrrd, .mha, .png ...). A
    detached header (.mhd, .nhdr) gets its data file beside it, named by `data_file` and put in place with it.
    compress=False (attached headers only) for files read once right away, the Slicer job's inputs: faster."""
    sitk_image = image.to_sitk() if isinstance(image, Image) else image
    with atomic_path(path) as temporary:
        try:
            with itk_messages_hidden():
                sitk.WriteImage(sitk_image, str(temporary), useCompression=compress, imageIO=image_io(path))
        except RuntimeError as error:
            raise unwritable(path, error) from None
        check_written(sitk_image, temporary, path)
    return Path(path)


IMAGE_WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_IMAGE_IOS = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
              ".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".png": "PNGImageIO"}


_DATA_FILES = {".mhd": ".zraw", ".nhdr": ".raw.gz"}  # what ITK names the compressed data of a detached header


def data_file(path: str | os.PathLike) -> Optional[Path]:
    """The data file that `write_image` writes beside a detached header (.mhd, .nhdr), or None."""
    path = Path(path)
    name = path.name.lower()
    header = next((suffix for suffix in _DATA_FILES if name.endswith(suffix)), None)
    return path.with_name(path.name[:-len(header)] + _DATA_FILES[header]) if header else None


def image_io(path: str | os.PathLike) -> str:
    """ITK's reader/writer for a file name ('' for ITK's choice). Naming it skips ITK's probing of every
    format, which opens the file with the HDF5 library: not thread-safe, and the outputs are written by
    several threads while another writes an HDF5 transform."""
    name = Path(path).name.lower()
    return next((io for suffix, io in _IMAGE_IOS.items() if name.endswith(suffix)), "")


def unwritable(path: str | os.PathLike, error: RuntimeError) -> RegistrationError:
    """The error for an image or transform ITK could not write (unknown suffix, I/O failure)."""
    reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
    return WriteError(f"cannot write {path} ({reason}). Check the file name's suffix (images: "
                      f"{', '.join(IMAGE_WRITE_SUFFIXES)}) and that the folder is writable with free space.")


def check_written(expected: sitk.Image, temporary: Path, final: str | os.PathLike) -> None:
    """Reads a just-written image back completely; WriteError unless size, geometry and voxels match."""
    try:
        if temporary.suffix.lower() != ".png":
            check_image_file(temporary, "written file", finite=False)
        with itk_messages_hidden():
            back = sitk.ReadImage(str(temporary), imageIO=image_io(final))
    except (RegistrationError, RuntimeError) as error:
        raise not_as_written(final, f" ({str(error).strip().splitlines()[-1]})") from None
    same = (back.GetSize() == expected.GetSize()
            and np.allclose(back.GetSpacing(), expected.GetSpacing(), rtol=1e-5)
            and np.allclose(back.GetOrigin(), expected.GetOrigin(), rtol=1e-5, atol=1e-4)
            and np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(expected), equal_nan=True))
    if not same:
        raise not_as_written(final, " (other size, geometry or voxel values)")


def normalize(image: Image, low: float = 0.5, high: float = 99.5, mask: Optional[np.ndarray] = None) -> Image:
    """Robust intensity normalisation: clip to the [low, high] percentiles (of the mask if given), map to [0, 1]."""
    values = image.array[mask > 0] if mask is not None else image.array
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise RegistrationError(f"{image.name}: intensities inside the region are constant; cannot normalise.")
    scaled = np.clip((image.array.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return image.with_array(scaled.astype(np.float32))
