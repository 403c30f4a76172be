"""Shared fixtures: small real images from the Debian data packages (fetched by scripts/setup.sh)."""
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.io.data import COLIN_BET, ITK_PD_SLICE, ITK_T1_SLICE, data_file
from DiffusionRegistrationLib.core.image import Image
from DiffusionRegistrationLib.io.images import read_image


def _shrunk(path, factor: int) -> Image:
    image = read_image(data_file(path))
    small = sitk.Shrink(sitk.SmoothingRecursiveGaussian(image.to_sitk(), 0.5 * factor), [factor] * image.dim)
    return Image.from_sitk(small, str(path))


@pytest.fixture(scope="session")
def t1_slice() -> Image:
    """BrainWeb T1 slice (ITK examples), 4x shrunk to about 60x55 pixels."""
    return _shrunk(ITK_T1_SLICE, 4)


@pytest.fixture(scope="session")
def pd_slice() -> Image:
    """The aligned proton-density slice, same grid as t1_slice."""
    return _shrunk(ITK_PD_SLICE, 4)


@pytest.fixture(scope="session")
def colin_small() -> Image:
    """Colin27 skull-stripped at 6 mm (about 30x36x30 voxels)."""
    return _shrunk(COLIN_BET, 6)


def write(image: Image, path) -> str:
    sitk.WriteImage(image.to_sitk(), str(path))
    return str(path)


@pytest.fixture
def write_image_file():
    return write
