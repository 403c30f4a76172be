"""Data paths and isotropic resampling."""
import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.io.data import COLIN_BET, data_file, data_root, resample_isotropic
from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.core.image import Grid, Image


def test_missing_data_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFREG_DATA", str(tmp_path))
    assert data_root() == tmp_path / "root"
    with pytest.raises(RegistrationError, match=r"ch2bet\.nii\.gz is missing\. Run `bash scripts/setup\.sh`"):
        data_file(COLIN_BET)
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "b.txt").write_text("x")
    assert data_file("a/b.txt") == tmp_path / "root" / "a" / "b.txt"


def test_resample_isotropic_keeps_extent_and_interpolates_linearly():
    direction = (0.0, -1.0, 1.0, 0.0)  # rotated 90 degrees
    grid = Grid((12, 9), (1.0, 1.5), (3.0, -2.0), direction)
    reference = grid.apply_to(sitk.Image([12, 9], sitk.sitkFloat32))
    index = np.stack(np.meshgrid(np.arange(9), np.arange(12), indexing="ij"), -1)[..., ::-1]
    points = np.array([reference.TransformContinuousIndexToPhysicalPoint([float(i), float(j)])
                       for i, j in index.reshape(-1, 2)]).reshape(9, 12, 2)
    ramp = Image((2 * points[..., 0] - points[..., 1]).astype(np.float32), grid)
    out = resample_isotropic(ramp, 3.0)
    assert out.grid.size == (4, 5) and out.grid.spacing == (3.0, 3.0) and out.grid.direction == direction
    np.testing.assert_allclose(out.grid.center(), grid.center())
    target = out.to_sitk()
    for i, j in [(0, 0), (1, 2), (3, 4)]:  # interior of the old grid: linear interpolation is exact
        x, y = target.TransformIndexToPhysicalPoint([i, j])
        assert out.array[j, i] == pytest.approx(2 * x - y, abs=1e-4)


def test_resample_isotropic_labels_stay_labels():
    grid = Grid((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    labels = Image(np.random.default_rng(1).choice([0, 7, 300], grid.shape).astype(np.int16), grid)
    out = resample_isotropic(labels, 2.0, labels=True)
    assert out.array.dtype == np.int16 and set(np.unique(out.array)) <= {0, 7, 300}
    with pytest.raises(RegistrationError, match="spacing must be positive"):
        resample_isotropic(labels, 0.0)
