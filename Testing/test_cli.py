"""The `diffreg` command line: outputs, JSON progress, and clear errors with nothing half-written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.cli.main import main, openmp_waiting
from DiffusionRegistrationLib.core.image import Image
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement

FAST = ["--preset", "fast", "--similarity", "mse", "--set", "affine=false", "--set", "regularization=0.01"]


@pytest.fixture
def pair(tmp_path, t1_slice, write_image_file):
    truth = random_smooth_displacement(t1_slice.grid, max_mm=8.0, seed=5, smoothness_mm=25.0)
    fixed = warp_with_displacement(t1_slice, truth)
    return {"fixed": write_image_file(fixed, tmp_path / "fixed.nii.gz"),
            "moving": write_image_file(t1_slice, tmp_path / "moving.nii.gz"), "truth": truth, "image": t1_slice,
            "fixed_image": fixed}


def test_register_writes_every_output_and_follows_the_json_progress_contract(tmp_path, pair, capsys):
    out = tmp_path / "out"
    code = main(["register", "--fixed", pair["fixed"], "--moving", pair["moving"], "--output-dir", str(out),
                 "--progress", "json", "--inverse", "inverse.h5", "--affine", "affine.tfm",
                 "--vector-field", "transform.nii.gz", *FAST])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(set(e) == {"stage", "fraction", "message"} for e in events)
    assert events[-1]["stage"] == "done" and events[-1]["fraction"] == 1.0
    fractions = [e["fraction"] for e in events if e["stage"] == "deformable"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    report = json.loads((out / "report.json").read_text())
    for name in ("transform.h5", "transform.nii.gz", "warped.nii.gz", "jacobian.nii.gz", "checkerboard.png",
                 "inverse.h5", "affine.tfm"):
        assert (out / name).is_file(), name
    assert set(report["outputs"]) >= {"transform", "warped", "jacobian", "checkerboard", "inverse", "report"}
    transform = sitk.ReadTransform(str(out / "transform.h5"))
    vectors = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "transform.nii.gz")))
    np.testing.assert_allclose(vectors, sitk.GetArrayFromImage(transform.Downcast().GetDisplacementField()),
                               atol=1e-5)  # the same field twice (float32 image, float64 transform)
    centre = pair["image"].grid.center()
    index = np.round(pair["image"].grid.physical_to_index() @ np.append(centre, 1))[:2].astype(int)
    truth_at_centre = pair["truth"][index[1], index[0]]
    point = pair["image"].grid.index_to_physical()[:2] @ np.append(index, 1)
    assert np.linalg.norm(np.array(transform.TransformPoint(tuple(float(v) for v in point))) - (point + truth_at_centre)) < 1.0


def test_apply_keeps_label_values_and_evaluate_reports_dice(tmp_path, pair, capsys, write_image_file):
    out = tmp_path / "out"
    assert main(["register", "--fixed", pair["fixed"], "--moving", pair["moving"], "--output-dir", str(out),
                 "--progress", "none", *FAST]) == 0
    labels = (pair["image"].array > np.percentile(pair["image"].array, 60)).astype(np.uint8) * 7
    moving_labels = write_image_file(pair["image"].with_array(labels), tmp_path / "ml.nii.gz")
    fixed_labels = warp_with_displacement(pair["image"].with_array(labels), pair["truth"], "nearest")
    fixed_labels_path = write_image_file(fixed_labels, tmp_path / "fl.nii.gz")
    assert main(["apply", "--transform", str(out / "transform.h5"), "--input", moving_labels, "--reference",
                 pair["fixed"], "--output", str(tmp_path / "warped_labels.nii.gz"), "--labels"]) == 0
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "warped_labels.nii.gz")))
    assert set(np.unique(warped)) <= {0, 7}
    capsys.readouterr()
    assert main(["evaluate", "--transform", str(out / "transform.h5"), "--fixed-labels", fixed_labels_path,
                 "--moving-labels", moving_labels]) == 0
    report = json.loads(capsys.readouterr().out)
    ours = 2 * np.logical_and(warped == 7, fixed_labels.array == 7).sum() / ((warped == 7).sum() +
                                                                         (fixed_labels.array == 7).sum())
    assert report["dice"]["mean_after"] == pytest.approx(ours, abs=1e-6)
    assert report["dice"]["mean_after"] > report["dice"]["mean_before"]


def save4d(path) -> str:
    volumes = [sitk.GetImageFromArray(np.random.rand(6, 5, 4).astype(np.float32)) for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(volumes), str(path))
    return str(path)


def _bad_inputs(tmp_path, image: Image) -> dict:
    def save(array, name, grid=image.grid):
        itk = sitk.GetImageFromArray(array)
        if array.ndim == image.dim:
            grid.apply_to(itk)
        sitk.WriteImage(itk, str(tmp_path / name))
        return str(tmp_path / name)

    nan = image.array.astype(np.float32)
    nan[3, 3] = np.nan
    return {
        "missing": (str(tmp_path / "nope.nii.gz"), "no such file"),
        "unreadable": ((tmp_path / "junk.nii.gz").write_bytes(b"not an image") and str(tmp_path / "junk.nii.gz"),
                       "cannot be read"),
        "4d": (save4d(tmp_path / "4d.nii.gz"), "4D"),
        "constant": (save(np.full_like(image.array, 3.0), "const.nii.gz"), "constant"),
        "nan": (save(nan, "nan.mha"), "NaN"),
    }


@pytest.mark.parametrize("problem", ["missing", "unreadable", "4d", "constant", "nan"])
def test_bad_moving_image_exits_2_naming_the_file_and_writes_nothing(tmp_path, pair, capsys, problem):
    path, message = _bad_inputs(tmp_path, pair["image"])[problem]
    out = tmp_path / "out"
    code = main(["register", "--fixed", pair["fixed"], "--moving", path, "--output-dir", str(out), *FAST])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: moving image") and path in error and message in error
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("problem, message", [("empty", "empty"), ("grid", "another voxel grid")])
def test_bad_masks_exit_2(tmp_path, pair, capsys, problem, message, write_image_file):
    image = pair["fixed_image"]
    if problem == "empty":
        mask = image.with_array(np.zeros_like(image.array))
    else:
        mask = Image(np.ones((9, 9), np.float32), type(image.grid)((9, 9), (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1)))
    path = write_image_file(mask, tmp_path / "mask.nii.gz")
    code = main(["register", "--fixed", pair["fixed"], "--moving", pair["moving"], "--fixed-mask", path,
                 "--output-dir", str(tmp_path / "out"), *FAST])
    error = capsys.readouterr().err
    assert code == 2 and path in error and message in error


@pytest.mark.parametrize("args, message", [(["--set", "nonsense=1"], "unknown option"),
                                           (["--preset", "nope"], "setting preset=nope: is not a known choice"),
                                           (["--similarity", "nope"], "setting similarity=nope: is not a known choice"),
                                           (["--steps", "-1"], "setting steps=-1: is out of range")])
def test_bad_settings_exit_2(tmp_path, pair, capsys, args, message):
    code = main(["register", "--fixed", pair["fixed"], "--moving", pair["moving"], "--output-dir",
                 str(tmp_path / "out"), *args])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("extra, refused", [
    (["--fixed-mask", "MASK"], "--fixed-mask"),
    (["--preset", "fast", "--set", "lr=0.1"], "--preset, --set"),
])
def test_network_refuses_what_it_cannot_honour_before_reading_anything(tmp_path, pair, capsys, extra, refused):
    """The refusal comes before any file is read: the mask here is not even an image, and no network exists."""
    garbage = tmp_path / "mask.nii.gz"
    garbage.write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["register", "--fixed", pair["fixed"], "--moving", pair["moving"], "--output-dir", str(out),
            "--network", str(tmp_path / "absent.pt"), *[str(garbage) if a == "MASK" else a for a in extra]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --network cannot honour {refused}:")
    assert not out.exists()


def test_unknown_flag_is_an_argparse_error_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["register", "--fixed", "a", "--moving", "b", "--output-dir", "c", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_a_failure_while_writing_outputs_leaves_no_file(tmp_path, pair, monkeypatch, capsys):
    import errno

    import DiffusionRegistrationLib.engine.outputs as outputs

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "checkerboard.png")

    monkeypatch.setattr(outputs, "before_after_checkerboard", broken)
    out = tmp_path / "out"
    assert main(["register", "--fixed", pair["fixed"], "--moving", pair["moving"], "--output-dir", str(out),
                 "--progress", "none", *FAST]) == 2
    assert capsys.readouterr().err == "error: checkerboard.png: No space left on device. Check the path, its " \
                                      "permissions and free space.\n"
    assert list(out.iterdir()) == []


def test_progress_bar_draws_one_finished_bar_per_stage():
    import io

    from DiffusionRegistrationLib.progress import Progress, progress_bar

    stream = io.StringIO()
    report = progress_bar(stream)
    for stage in ("affine", "deformable"):
        for fraction in (0.0, 0.5, 1.0):
            report(Progress(stage, fraction, "working"))
        report(Progress(stage, 1.0, "done"))  # the engine's closing event repeats 100 %
    finished = [line for line in stream.getvalue().split("\n") if line]
    assert len(finished) == 2
    assert finished[0].rsplit("\r", 1)[-1].startswith("affine") and "100%" in finished[0].rsplit("\r", 1)[-1]


def test_the_command_line_answers_help_and_a_wrong_path_without_importing_torch_or_simpleitk(tmp_path):
    code = ("import sys\n"
            "from DiffusionRegistrationLib.cli import main\n"
            "code = main.main(['register', '--fixed', sys.argv[1], '--moving', sys.argv[1], '--output-dir', sys.argv[2]])\n"
            "print(code, sorted(m for m in ('torch', 'SimpleITK', 'diffusers', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.nii.gz"), str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "2 []"
    assert "fixed image" in out.stderr and "missing.nii.gz" in out.stderr and "no such file" in out.stderr


def test_openmp_threads_spin_briefly_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    openmp_waiting()
    assert (os.environ["OMP_WAIT_POLICY"], os.environ["GOMP_SPINCOUNT"]) == ("PASSIVE", "2000")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "INFINITE")
    openmp_waiting()
    assert (os.environ["OMP_WAIT_POLICY"], os.environ["GOMP_SPINCOUNT"]) == ("ACTIVE", "INFINITE")


def test_the_command_ends_at_once_with_its_code_and_everything_it_printed(tmp_path):
    """`python -m DiffusionRegistrationLib` ends with os._exit (no interpreter teardown): piped output must
    still arrive whole, and the exit code must be main()'s."""
    from DiffusionRegistrationLib.engine.config import PRESETS

    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a user's shell has it
    listed = subprocess.run([sys.executable, "-m", "DiffusionRegistrationLib", "presets"], capture_output=True,
                            text=True, timeout=60, env=buffered)
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in PRESETS)
    failed = subprocess.run([sys.executable, "-m", "DiffusionRegistrationLib", "register", "--fixed",
                             str(tmp_path / "absent.nii.gz"), "--moving", str(tmp_path / "absent.nii.gz"),
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                            env=buffered)
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: ") and "absent.nii.gz" in failed.stderr
