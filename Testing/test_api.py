"""The package-root API: the README's Python example run verbatim on a pair with a known deformation, lazy
imports, and clear errors for wrong argument types."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.geometry.metrics import field_mapping
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement
from DiffusionRegistrationLib.core.image import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_python() -> str:
    section = README.read_text().split("## Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def known_pair(t1_slice, tmp_path, monkeypatch):
    """moving = the T1 slice; fixed(x) = moving(x + u(x)) for a known smooth u, so the true fixed->moving
    mapping is x + u. Label maps: a threshold of each image. Written where the README expects them."""
    field = random_smooth_displacement(t1_slice.grid, max_mm=6.0, seed=3, smoothness_mm=30.0)
    fixed = warp_with_displacement(t1_slice, field)
    labels = Image((t1_slice.array > np.percentile(t1_slice.array, 60)).astype(np.uint8), t1_slice.grid)
    for name, image in (("fixed", fixed), ("moving", t1_slice), ("moving_labels", labels),
                        ("fixed_labels", warp_with_displacement(labels, field, "nearest"))):
        sitk.WriteImage(image.to_sitk(), str(tmp_path / f"{name}.nii.gz"))
    monkeypatch.chdir(tmp_path)
    return fixed, field


def _mean_error(displacement: np.ndarray, field: np.ndarray, fixed: Image) -> float:
    """Mean distance (mm) between the estimated and the true mapping over the image's foreground."""
    inside = fixed.array > np.percentile(fixed.array, 30)
    return float(np.linalg.norm(displacement - field, axis=-1)[inside].mean())


def test_readme_python_example_runs_as_written_and_registers(known_pair, capsys):
    fixed, field = known_pair
    namespace: dict = {}
    exec(compile(_readme_python(), str(README), "exec"), namespace)
    before = _mean_error(np.zeros_like(field), field, fixed)
    for name in ("result", "again"):  # paths, then SimpleITK images with a SimpleITK mask
        assert _mean_error(namespace[name].displacement, field, fixed) < 0.4 * before, name
    saved = json.loads(Path("out/report.json").read_text())
    assert {"transform", "warped", "checkerboard"} <= set(saved["outputs"])
    # the SimpleITK transform maps fixed points like the field; the written file reads back the same
    reference = fixed.to_sitk()
    points = np.array([reference.TransformContinuousIndexToPhysicalPoint(index)
                       for index in ((20.3, 17.5), (35.0, 28.2), (28.6, 40.1))])
    transform = namespace["transform"]
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in points])
    np.testing.assert_allclose(mapped, field_mapping(namespace["result"].displacement, fixed.grid)(points), atol=1e-3)
    reread = sitk.ReadTransform("out/transform.h5")
    np.testing.assert_allclose([reread.TransformPoint(p.tolist()) for p in points], mapped, atol=1e-3)
    # apply() with labels: the warped moving labels overlap the fixed labels better than before
    fixed_labels = sitk.GetArrayFromImage(sitk.ReadImage("fixed_labels.nii.gz")) > 0
    moving_labels = sitk.GetArrayFromImage(sitk.ReadImage("moving_labels.nii.gz")) > 0
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(namespace["labels"].array > 0, fixed_labels) > dice(moving_labels, fixed_labels) + 0.02
    printed = capsys.readouterr().out
    assert "mean_after" in printed and "multimodal" in printed


def test_importing_the_package_imports_no_torch_or_simpleitk():
    code = ("import sys, DiffusionRegistrationLib as dr; dr.presets(); "
            "print(sorted(m for m in ('torch', 'SimpleITK', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("arguments, named", [
    ((42, "moving.nii.gz"), "fixed"),
    (("fixed.nii.gz", [1, 2]), "moving"),
    (("fixed.nii.gz", "moving.nii.gz", 3), "preset"),
])
def test_wrong_argument_types_raise_type_error_naming_the_argument(known_pair, arguments, named):
    import DiffusionRegistrationLib as dr

    with pytest.raises(TypeError, match=named):
        dr.register(*arguments)


def test_unknown_setting_and_bad_mask_are_clear_errors(known_pair):
    import DiffusionRegistrationLib as dr

    with pytest.raises(dr.RegistrationError, match="unknown option.*learning_rate"):
        dr.register("fixed.nii.gz", "moving.nii.gz", learning_rate=0.1)
    empty = sitk.Image(sitk.ReadImage("fixed.nii.gz").GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(sitk.ReadImage("fixed.nii.gz"))
    with pytest.raises(dr.RegistrationError, match="fixed_mask.*empty"):
        dr.register("fixed.nii.gz", "moving.nii.gz", fixed_mask=empty)
