"""The quality guard: a registration that makes the match worse, or an implausible affine, is reported."""
import json

import numpy as np
import pytest

from DiffusionRegistrationLib.cli.main import main
from DiffusionRegistrationLib.engine.config import make_config
from DiffusionRegistrationLib.engine.quality import affine_warnings
from DiffusionRegistrationLib.engine.registration import register
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement


def test_default_on_a_pd_to_t1_pair_warns_and_names_multimodal(tmp_path, t1_slice, pd_slice, write_image_file, capsys):
    """The issue's case: LNCC on a PD -> T1 pair turns the image (target error several times that of no
    registration); the guard says so on the console and in report.json."""
    truth = random_smooth_displacement(t1_slice.grid, max_mm=8.0, seed=5, smoothness_mm=25.0)
    fixed = write_image_file(warp_with_displacement(t1_slice, truth), tmp_path / "t1.nii.gz")
    moving = write_image_file(pd_slice, tmp_path / "pd.nii.gz")
    out = tmp_path / "out"
    assert main(["register", "--fixed", fixed, "--moving", moving, "--output-dir", str(out), "--progress", "none"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    report = json.loads((out / "report.json").read_text())
    assert len(warnings) == 1 and "--preset multimodal" in warnings[0]
    assert report["warnings"] == [warnings[0][len("warning: "):]]
    error = np.linalg.norm(_field(out) - truth, axis=-1).mean()
    assert error > 2 * np.linalg.norm(truth, axis=-1).mean()  # the case the guard is for: worse than nothing


def _field(folder):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadTransform(str(folder / "transform.h5")).Downcast().GetDisplacementField())


def test_a_good_same_contrast_registration_gives_no_warning(t1_slice):
    truth = random_smooth_displacement(t1_slice.grid, max_mm=8.0, seed=5, smoothness_mm=25.0)
    result = register(warp_with_displacement(t1_slice, truth), t1_slice, make_config("fast"))
    assert np.linalg.norm(result.displacement - truth, axis=-1).mean() < np.linalg.norm(truth, axis=-1).mean()
    assert result.warnings == []


@pytest.mark.parametrize("linear, fragment", [
    ([[3.0, 0.0], [0.0, 3.0]], "scales by 3.00-3.00"), ([[0.4, 0.0], [0.0, 1.0]], "outside 0.5-2"),
    ([[1.0, 0.9], [0.0, 1.0]], "shears"), ([[-1.0, 0.0], [0.0, 1.0]], "mirrors")])
def test_an_implausible_affine_is_named(linear, fragment):
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    assert any(fragment in warning for warning in affine_warnings(matrix))


def test_a_rotation_with_translation_is_plausible():
    angle = np.deg2rad(20)
    matrix = np.array([[np.cos(angle), -np.sin(angle), 12.0], [np.sin(angle), np.cos(angle), -7.0], [0, 0, 1]])
    assert affine_warnings(matrix) == []
