"""Where the test and benchmark images live, and resampling them to a working resolution.

The images come from Debian packages (`mricron-data`, `insighttoolkit5-examples`) unpacked by
`bash scripts/setup.sh` into a cache folder, and from the `nilearn` wheel. Nothing here downloads.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import RegistrationError
from ..core.image import Grid, Image
from ..core.paths import cache_folder

_TEMPLATES = "usr/share/mricron/templates"
_ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data"

COLIN_T1 = f"{_TEMPLATES}/ch2.nii.gz"  # Colin27 T1 with skull, 1 mm
COLIN_BET = f"{_TEMPLATES}/ch2bet.nii.gz"  # the same, skull-stripped, exactly aligned
COLIN_AAL = f"{_TEMPLATES}/aal.nii.gz"  # 116 AAL labels on the Colin27 grid
ITK_T1_SLICE = f"{_ITK_DATA}/BrainT1Slice.png"  # BrainWeb T1 slice
ITK_PD_SLICE = f"{_ITK_DATA}/BrainProtonDensitySlice.png"  # the aligned proton-density slice
ITK_HEAD = f"{_ITK_DATA}/KmeansTest_T1UCharRaw.nii.gz"  # another head, with skull
MNI152 = "nilearn:datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"  # skull-stripped MNI152

SETUP_HINT = "Run `bash scripts/setup.sh` from the repository root to fetch it"


def data_root() -> Path:
    """The unpacked Debian packages: $DIFFREG_DATA/root, default "data/root" in the user cache folder (as
    scripts/setup.sh writes it)."""
    return cache_folder("data", "DIFFREG_DATA") / "root"


def data_file(relative: str) -> Path:
    """The path of a data file (one of the names above, or any path under `data_root()`).

    Names starting with "nilearn:" are looked up inside the installed nilearn package.
    Raises RegistrationError with the set-up command when the file is missing.
    """
    if relative.startswith("nilearn:"):
        spec = importlib.util.find_spec("nilearn")
        if spec is None or spec.origin is None:
            raise RegistrationError(f"data file {relative}: the nilearn package is not installed. "
                                    f"{SETUP_HINT} (it installs the benchmark extras).")
        path = Path(spec.origin).parent / relative.split(":", 1)[1]
    else:
        path = data_root() / relative
    if not path.is_file():
        raise RegistrationError(f"data file {path} is missing. {SETUP_HINT}, or set DIFFREG_DATA to the "
                                "folder that holds root/usr/share/...")
    return path


def resample_isotropic(image: Image, spacing_mm: float, labels: bool = False) -> Image:
    """Resamples onto a grid with `spacing_mm` voxels covering the same field of view (centres aligned).

    Linear interpolation for intensities; nearest neighbour for label maps (`labels=True`), keeping
    the label dtype. Direction is kept.
    """
    if spacing_mm <= 0:
        raise RegistrationError(f"resample: spacing must be positive, not {spacing_mm} mm.")
    grid = image.grid
    extent = np.asarray(grid.size) * np.asarray(grid.spacing)
    size = tuple(max(int(np.floor(e / spacing_mm + 0.5)), 1) for e in extent)
    spacing = (float(spacing_mm),) * grid.dim
    index_to_mm = grid.direction_matrix @ np.diag(spacing)
    origin = grid.center() - index_to_mm @ ((np.asarray(size, dtype=np.float64) - 1) / 2)
    target = Grid(size, spacing, tuple(float(v) for v in origin), grid.direction)
    reference = target.apply_to(sitk.Image(list(size), sitk.sitkUInt8))
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    source = image.to_sitk() if labels else sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    out = sitk.Resample(source, reference, sitk.Transform(), interpolator, 0.0)
    array = sitk.GetArrayFromImage(out)
    array = array.astype(image.array.dtype if labels else np.float32, copy=False)
    return Image(array, target, image.path)
