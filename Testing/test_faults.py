"""Fault suite: bad inputs, bad settings, OS errors, short writes and signals against the `diffreg` CLI.

Every case asserts the exit code (2; 128 + signal number for SIGTERM/SIGHUP), the one `error:` line
(naming the file or setting) and the exact contents of the output folder afterwards. Images are tiny
(2D 32x32 for registrations, 16^3 for header faults) and registrations run a few steps, so the suite is
fast. Short writes use a file-size limit (RLIMIT_FSIZE) in a child process, signals are sent to child
processes, and a SIGKILL after each step of a commit hits a forked child that runs only that commit;
everything else runs in-process. The classes of issue 17 (file safety) each have cases here: failures
and kills at every commit step, detached formats, what may be deleted, label maps, a busy or empty output
folder, batch names and rows.
"""
from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.cli.main import main

QUICK = ["--set", "similarity=mse", "--set", "levels=[1]", "--set", "iterations=[3]", "--set", "affine_levels=[1]",
         "--set", "affine_iterations=[3]"]
DEFAULT_SET = {"transform.h5", "warped.nii.gz", "jacobian.nii.gz", "checkerboard.png", "report.json"}


def _blobs(shape: tuple[int, ...], shift: float = 0.0) -> np.ndarray:
    """Smooth test image: two Gaussian blobs, the first shifted by `shift` voxels along the last axis."""
    axes = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = [n / 2 for n in shape]
    first = sum((a - c - (shift if i == len(shape) - 1 else 0)) ** 2 for i, (a, c) in enumerate(zip(axes, centre)))
    second = sum((a - c / 2) ** 2 for a, c in zip(axes, centre))
    return (np.exp(-first / (0.08 * shape[0] ** 2)) + 0.5 * np.exp(-second / (0.02 * shape[0] ** 2))).astype(np.float32)


def _save(array: np.ndarray, path: Path, spacing: float = 1.0, vector: bool = False, compress: bool = False) -> str:
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing([spacing] * image.GetDimension())
    sitk.WriteImage(image, str(path), useCompression=compress)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("fault_data")
    return {"folder": folder,
            "fixed": _save(_blobs((32, 32)), folder / "fixed.nii.gz"),
            "moving": _save(_blobs((32, 32), shift=2.0), folder / "moving.nii.gz"),
            "fixed3d": _save(_blobs((16, 16, 16)), folder / "fixed3d.nii.gz"),
            "moving3d": _save(_blobs((16, 16, 16), shift=1.0), folder / "moving3d.nii.gz")}


def _contents(folder: Path):
    """The names in `folder`, or None when it does not exist."""
    return {p.name for p in folder.iterdir()} if folder.is_dir() else None


def _one_error(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _register(data, out: Path, *extra: str, moving: str = "", fixed: str = "", progress: str = "none") -> list[str]:
    return ["register", "--fixed", fixed or data["fixed"], "--moving", moving or data["moving"], "--output-dir",
            str(out), "--progress", progress, *QUICK, *extra]


# --- settings: every setting out of range or of the wrong type, from --set, flags and config files ---------

SETTING_CASES = [
    ("lr=abc", "setting lr=abc"), ("lr=-1", "setting lr=-1"), ("lr=0", "setting lr=0"),
    ("lr=Infinity", "setting lr=inf"), ("lr=NaN", "setting lr=nan"), ("lr=11", "<= 10"),
    ("affine_lr=Infinity", "setting affine_lr=inf"), ("affine_lr=0", "setting affine_lr=0"),
    ("affine_lr=2", "setting affine_lr=2"), ("levels=abc", "setting levels=abc"), ("levels=[]", "setting levels=[]"),
    ("levels=[0.5]", "setting levels=[0.5]"), ("levels=[4,2]", "levels (4.0, 2.0) and iterations"),
    ("iterations=[-1]", "setting iterations=[-1]"), ("iterations=[1.5]", "whole number"),
    ("affine_iterations=[-1]", "setting affine_iterations=[-1]"), ("affine_levels=[100]", "setting affine_levels"),
    ("control_spacing=0", "setting control_spacing=0"), ("field_smoothing=-1", "setting field_smoothing=-1"),
    ("regularization=-0.1", "setting regularization=-0.1"), ("regularization=1e9", "setting regularization"),
    ("integration_steps=-1", "setting integration_steps=-1"), ("integration_steps=2.5", "whole number"),
    ("integration_steps=31", "setting integration_steps=31"), ("tolerance=-1", "setting tolerance=-1"),
    ("tolerance=2", "setting tolerance=2"), ("patience=0", "setting patience=0"),
    ("normalize=yes", "setting normalize=yes"), ("affine=1", "setting affine=1"),
    ("moving_foreground_mask=null", "setting moving_foreground_mask"), ("percentiles=[1]", "setting percentiles"),
    ("percentiles=[90,10]", "low percentile"), ("percentiles=[-1,50]", "setting percentiles"),
    ("device=tpu", "setting device=tpu"), ("device=cuda:7", "setting device=cuda:7"), ("seed=-1", "setting seed=-1"),
    ("seed=1.5", "setting seed=1.5"), ("threads=-1", "setting threads=-1"), ("threads=0", "setting threads=0"),
    ("similarity=foo", "setting similarity=foo"), ("similarity=3", "setting similarity=3"),
    ("similarity_params=[1]", "setting similarity_params"), ("affine_similarity_params=3", "affine_similarity_params"),
    ("init=sideways", "setting init=sideways"), ("transform=bspline", "setting transform=bspline"),
    ("regularizer=l1", "setting regularizer=l1"), ("no_such_setting=1", "no_such_setting"), ("lr", "key=value"),
]


@pytest.mark.parametrize("setting, fragment", SETTING_CASES, ids=[c[0] for c in SETTING_CASES])
def test_a_bad_setting_is_refused_before_any_work(data, tmp_path, capsys, setting, fragment):
    out = tmp_path / "out"
    assert main(_register(data, out, "--set", setting)) == 2
    _one_error(capsys.readouterr().err, fragment)
    assert _contents(out) is None


FLAG_CASES = [(["--steps", "-1"], "setting steps=-1"), (["--steps", "100001"], "setting steps=100001"),
              (["--regularization", "-1"], "setting regularization=-1"), (["--seed", "-1"], "setting seed=-1"),
              (["--device", "tpu"], "setting device=tpu"), (["--similarity", "nope"], "setting similarity=nope"),
              (["--preset", "nope"], "setting preset=nope")]


@pytest.mark.parametrize("flags, fragment", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_a_bad_flag_value_is_refused_like_a_setting(data, tmp_path, capsys, flags, fragment):
    out = tmp_path / "out"
    assert main(_register(data, out, *flags)) == 2
    _one_error(capsys.readouterr().err, fragment)
    assert _contents(out) is None


CONFIG_FILES = [("list.json", b"[1, 2]", "object of settings"), ("value.json", b'{"lr": "fast"}', "setting lr=fast"),
                ("broken.json", b'{"lr": ', "cannot be parsed"), ("latin1.json", b'{"lr": "\xe9"}', "cannot be parsed"),
                ("bad.toml", b"lr = -3\n", "setting lr=-3")]


@pytest.mark.parametrize("name, text, fragment", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_a_bad_config_file_is_refused(data, tmp_path, capsys, name, text, fragment):
    (tmp_path / name).write_bytes(text)
    out = tmp_path / "out"
    assert main(_register(data, out, "--config", str(tmp_path / name))) == 2
    _one_error(capsys.readouterr().err, fragment)
    assert _contents(out) is None


# --- inputs: truncated, oversized, NaN/Inf, bad spacing, wrong kind, in every header format ---------------

def _nifti_header_edit(path: Path, offset: int, fmt: str, values) -> None:
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    raw = bytearray(raw)
    struct.pack_into("<" + fmt, raw, offset, *values)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))


def _text_header_edit(path: Path, old: str, new: str) -> None:
    raw = path.read_bytes()
    assert old.encode() in raw[:2000], (old, raw[:400])
    path.write_bytes(raw.replace(old.encode(), new.encode(), 1))


_SIZE_LINES = {"nrrd": ("sizes: 16 16 16", "sizes: {0} {0} {0}"), "mha": ("DimSize = 16 16 16", "DimSize = {0} {0} {0}")}


def _claim_size(path: Path, fmt: str, side: int) -> None:
    if fmt.startswith("nii"):
        _nifti_header_edit(path, 40, "4h", (3, side, side, side))
    else:
        old, new = _SIZE_LINES[fmt]
        _text_header_edit(path, old, new.format(side))


def _make_input(folder: Path, fmt: str, fault: str) -> tuple[str, str]:
    """A 16^3 float image in format `fmt` with `fault`; returns its path and a fragment of the error."""
    array = _blobs((16, 16, 16))
    if fault in ("nan", "inf"):
        array[4, 5, 6] = np.nan if fault == "nan" else np.inf
    path = folder / f"{fault}.{fmt}"
    _save(array, path)
    if fault == "truncated":
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.truncate(size - 300)
        return str(path), "truncated"
    if fault == "oversized":
        _claim_size(path, fmt, 200)
        return str(path), "truncated"
    if fault == "huge":
        _claim_size(path, fmt, 30000)
        return str(path), "memory"
    if fault == "zero-spacing":
        if fmt.startswith("nii"):
            _nifti_header_edit(path, 80, "f", (0.0,))
        elif fmt == "nrrd":
            _text_header_edit(path, "(1,0,0)", "(0,0,0)")
        else:
            _text_header_edit(path, "ElementSpacing = 1 1 1", "ElementSpacing = 0 1 1")
        return str(path), "spacing"
    if fault == "negative-spacing":
        _text_header_edit(path, "ElementSpacing = 1 1 1", "ElementSpacing = -2 1 1")
        return str(path), "spacing"
    return str(path), "NaN or infinite"


INPUT_CASES = [(fmt, fault) for fmt in ("nii", "nii.gz", "nrrd", "mha")
               for fault in ("nan", "inf", "truncated", "oversized", "huge", "zero-spacing")] + [("mha", "negative-spacing")]


@pytest.mark.parametrize("fmt, fault", INPUT_CASES, ids=[f"{f}-{k}" for f, k in INPUT_CASES])
def test_a_damaged_input_is_refused_before_reading_it(data, tmp_path, capsys, fmt, fault):
    path, fragment = _make_input(tmp_path, fmt, fault)
    out = tmp_path / "out"
    assert main(_register(data, out, moving=path, fixed=data["fixed3d"])) == 2
    _one_error(capsys.readouterr().err, "moving image", path, fragment)
    assert _contents(out) is None


def _other_inputs(folder: Path) -> dict:
    vector = _save(np.stack([_blobs((16, 16, 16))] * 4, -1), folder / "vector.nrrd", vector=True)
    (folder / "garbage.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n\x00\x01garbage")
    (folder / "empty.nii").write_bytes(b"")
    return {"vector": (vector, "components"), "constant": (_save(np.ones((16, 16, 16), np.float32),
                                                                folder / "constant.nii.gz"), "constant"),
            "garbage": (str(folder / "garbage.mha"), "cannot be read"),
            "empty": (str(folder / "empty.nii"), "cannot be read"),
            "missing": (str(folder / "missing.nii.gz"), "no such file"),
            "folder": (str(folder), "DICOM")}


@pytest.mark.parametrize("kind", ["vector", "constant", "garbage", "empty", "missing", "folder"])
def test_an_input_that_is_no_scalar_image_is_refused(data, tmp_path, capsys, kind):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path, fragment = _other_inputs(inputs)[kind]
    out = tmp_path / "out"
    assert main(_register(data, out, moving=path, fixed=data["fixed3d"])) == 2
    _one_error(capsys.readouterr().err, "moving image", fragment)
    assert _contents(out) is None


def _masks(folder: Path, data: dict) -> dict:
    grid_other = _save(np.ones((8, 8), np.uint8), folder / "small.nii.gz")
    two = _save(np.ones((32, 32, 2), np.uint8), folder / "two.nrrd", vector=True)
    empty = _save(np.zeros((32, 32), np.uint8), folder / "empty.nii.gz")
    truncated = Path(_save(np.ones((32, 32), np.uint8), folder / "cut.nii"))
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size - 100)
    return {"components": (two, "components"), "grid": (grid_other, "another voxel grid"),
            "empty": (empty, "empty"), "truncated": (str(truncated), "truncated")}


@pytest.mark.parametrize("kind", ["components", "grid", "empty", "truncated"])
def test_a_bad_mask_is_refused(data, tmp_path, capsys, kind):
    path, fragment = _masks(tmp_path, data)[kind]
    out = tmp_path / "out"
    assert main(_register(data, out, "--fixed-mask", path)) == 2
    _one_error(capsys.readouterr().err, "fixed mask", fragment)
    assert _contents(out) is None


# --- output folder and names: refused before the registration starts -------------------------------------

@pytest.fixture
def no_registration(monkeypatch):
    """Fails the test if a registration starts (output problems must be found before)."""
    import DiffusionRegistrationLib.engine.registration as registration

    def refuse(*args, **kwargs):
        raise AssertionError("the registration started before the outputs were checked")

    monkeypatch.setattr(registration, "register", refuse)


def _output_cases(tmp_path: Path, data: dict) -> dict:
    (tmp_path / "a_file").write_text("keep")
    (tmp_path / "out_dir").mkdir()
    (tmp_path / "out_dir" / "warped_dir").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    return {
        "dir-is-file": ([str(tmp_path / "a_file")], "is a file", tmp_path / "a_file"),
        "dir-under-file": ([str(tmp_path / "a_file" / "sub")], "a_file", tmp_path / "a_file" / "sub"),
        "dir-under-proc": (["/proc/diffreg-fault-suite"], "/proc/diffreg-fault-suite", Path("/proc/diffreg-fault-suite")),
        "warped-suffix": ([str(tmp_path / "o"), "--warped", "w.xyz"], "w.xyz", tmp_path / "o"),
        "transform-suffix": ([str(tmp_path / "o"), "--transform", "t.png"], "t.png", tmp_path / "o"),
        "affine-suffix": ([str(tmp_path / "o"), "--affine", "a.nii.gz"], "a.nii.gz", tmp_path / "o"),
        "inverse-suffix": ([str(tmp_path / "o"), "--inverse", "i.png"], "i.png", tmp_path / "o"),
        "name-is-folder": ([str(tmp_path / "out_dir"), "--warped", "warped_dir.nii.gz"], "", None),
        "overwrites-input": ([str(Path(data["moving"]).parent), "--warped", Path(data["moving"]).name],
                             "destroy the input", None),
        "duplicate-names": ([str(tmp_path / "o"), "--inverse", "transform.h5"], "both", tmp_path / "o"),
        "dir-in-symlink-loop": ([str(tmp_path / "loop" / "out")], "symbolic links form a loop", tmp_path / "loop"),
        "dir-is-symlink-loop": ([str(tmp_path / "loop")], "symbolic links form a loop", tmp_path / "loop"),
    }


@pytest.mark.parametrize("case", ["dir-is-file", "dir-under-file", "dir-under-proc", "warped-suffix",
                                  "transform-suffix", "affine-suffix", "inverse-suffix", "overwrites-input",
                                  "duplicate-names", "dir-in-symlink-loop", "dir-is-symlink-loop"])
def test_an_impossible_output_is_refused_before_registering(data, tmp_path, capsys, no_registration, case):
    arguments, fragment, folder = _output_cases(tmp_path, data)[case]
    before = _contents(Path(data["moving"]).parent)
    argv = ["register", "--fixed", data["fixed"], "--moving", data["moving"], "--progress", "none", *QUICK,
            "--output-dir", *arguments]
    assert main(argv) == 2
    _one_error(capsys.readouterr().err, fragment)
    if case == "dir-is-file":
        assert (tmp_path / "a_file").read_text() == "keep"
    elif folder is not None:
        assert _contents(folder) is None
    assert _contents(Path(data["moving"]).parent) == before


def test_an_output_name_that_is_a_folder_is_refused(data, tmp_path, capsys, no_registration):
    (tmp_path / "out" / "warped.nii.gz").mkdir(parents=True)
    assert main(_register(data, tmp_path / "out")) == 2
    _one_error(capsys.readouterr().err, "is a folder")
    assert _contents(tmp_path / "out") == {"warped.nii.gz"}


def test_too_little_free_space_is_refused_before_registering(data, tmp_path, capsys, no_registration, monkeypatch):
    import shutil

    import DiffusionRegistrationLib.engine.outputs as outputs

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    assert main(_register(data, tmp_path / "out")) == 2
    _one_error(capsys.readouterr().err, "free", "--output-dir")
    assert _contents(tmp_path / "out") == set()


# --- commit: roll-back, stale files, leftovers -------------------------------------------------------------

def _bytes_of(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


DETACHED_SET = {"transform.h5", "warped.mhd", "warped.zraw", "jacobian.nii.gz", "checkerboard.png", "report.json"}


def _loads(folder: Path) -> set:
    """Loads every visible file of `folder` by its format (asserting it is whole); returns the hidden names."""
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        name = path.name.lower()
        if name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".h5"):
            sitk.ReadTransform(str(path))
        elif name.endswith((".nii.gz", ".mhd", ".nhdr", ".png", ".mha")):
            assert sitk.ReadImage(str(path)).GetNumberOfPixels() > 0
        else:
            assert name.endswith((".zraw", ".raw.gz")), path
    return {p.name for p in folder.iterdir() if p.name.startswith(".")}


@pytest.fixture(params=["warped.nii.gz", "warped.mhd"])
def two_sets(data, tmp_path, monkeypatch, request):
    """An output folder holding an earlier set (with an inverse, and the warped image named `request.param`),
    the names of the second set, and the registration a second run gets (computed once: the tests below are
    about the commit, not the registration). Returns (folder, bytes of the first set, second set's names)."""
    import DiffusionRegistrationLib.engine.registration as registration

    out = tmp_path / "out"
    names = DETACHED_SET if request.param == "warped.mhd" else DEFAULT_SET
    assert main(_register(data, out, "--inverse", "inverse.h5", "--warped", request.param, "--set", "seed=1")) == 0
    assert _contents(out) == names | {"inverse.h5"}
    from DiffusionRegistrationLib.engine.options import RegistrationOptions
    from DiffusionRegistrationLib.io.images import read_image

    config = RegistrationOptions(overrides={"similarity": "mse", "levels": [1], "iterations": [2]}).config()
    second = registration.register(read_image(data["fixed"]), read_image(data["moving"]), config)
    monkeypatch.setattr(registration, "register", lambda *args, **kwargs: second)
    return out, _bytes_of(out), names


def test_a_failure_at_any_step_of_the_commit_rolls_the_whole_set_back(data, two_sets, capsys, monkeypatch):
    out, previous, names = two_sets
    warped = "warped.mhd" if "warped.mhd" in names else "warped.nii.gz"
    real_replace, failing = os.replace, 1
    while True:
        calls = []

        def replace(source, target):
            calls.append(target)
            if len(calls) == failing:
                raise OSError(28, "No space left on device", str(target))
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
        code = main(_register(data, out, "--warped", warped))
        monkeypatch.setattr(os, "replace", real_replace)
        if len(calls) < failing:
            break
        assert code == 2, failing
        _one_error(capsys.readouterr().err, "No space left on device")
        assert _bytes_of(out) == previous and _loads(out) == set(), failing
        failing += 1
    assert code == 0 and failing > len(names) * 2
    assert _contents(out) == names and _loads(out) == set()


def test_a_kill_at_any_step_of_the_commit_leaves_whole_files_and_the_next_run_recovers(data, two_sets, monkeypatch):
    """The process committing the second set is SIGKILLed after step k of its commit (a rename or a deletion),
    for every k: every file left in the folder loads, and the next run's recovery leaves exactly the old set or
    the new one."""
    import DiffusionRegistrationLib.engine.registration as registration
    import DiffusionRegistrationLib.io.atomic as atomic
    from DiffusionRegistrationLib.errors import RegistrationError

    out, previous, names = two_sets
    warped = "warped.mhd" if "warped.mhd" in names else "warped.nii.gz"
    second = registration.register
    snapshot = out.parent / "snapshot"
    snapshot.mkdir()
    for name, content in previous.items():
        (snapshot / name).write_bytes(content)
    real_commit, outcomes, step = atomic.OutputSet.commit, [], 1

    def commit_in_a_child_killed_after_step(self):
        child = os.fork()
        if child == 0:
            try:
                count = [0]

                def counted(real):
                    def step_then_maybe_die(*args):
                        real(*args)
                        count[0] += 1
                        if count[0] == step:
                            os.kill(os.getpid(), signal.SIGKILL)
                    return step_then_maybe_die

                os.replace, os.unlink, os.rmdir = counted(os.replace), counted(os.unlink), counted(os.rmdir)
                real_commit(self)
            finally:
                os._exit(0)
        _, status = os.waitpid(child, 0)
        outcomes.append(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)
        return []

    def stopped(*args, **kwargs):
        raise RegistrationError("stopped after the checks")

    while True:
        for path in out.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in snapshot.iterdir():
            (out / path.name).write_bytes(path.read_bytes())
        monkeypatch.setattr(atomic.OutputSet, "commit", commit_in_a_child_killed_after_step)
        assert main(_register(data, out, "--warped", warped)) == 0
        monkeypatch.setattr(atomic.OutputSet, "commit", real_commit)
        if not outcomes[-1]:
            break
        _loads(out)  # whole files only, at every step
        monkeypatch.setattr(registration, "register", stopped)  # the next run: its checks (and recovery) only
        assert main(_register(data, out, "--warped", warped)) == 2
        monkeypatch.setattr(registration, "register", second)
        after = _contents(out)
        assert after in (set(previous), names), (step, after)
        assert _loads(out) == set(), step
        if after == set(previous):
            assert _bytes_of(out) == previous, step
        step += 1
    assert step > 2 * len(names)
    assert main(_register(data, out, "--warped", warped)) == 0
    assert _contents(out) == names and _loads(out) == set()


def test_only_provable_temporaries_and_the_earlier_sets_outputs_are_removed(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_register(data, out, "--inverse", "inverse.h5", "--affine", "affine.tfm")) == 0
    assert _contents(out) == DEFAULT_SET | {"inverse.h5", "affine.tfm"}
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stage = out / ".diffreg-0123456789abcdef.stage"  # a staging folder of a process that was killed
    stage.mkdir()
    (stage / ".diffreg-temporary").write_text(json.dumps({"diffreg": "temporary", "token": "0123456789abcdef",
                                                          "pid": int(ended.stdout), "journal": str(out / "none")}))
    (stage / "warped.nii.gz").write_bytes(b"half")
    (out / ".warped.nii.gz.abc123.partial.nii.gz").write_bytes(b"looks like a temporary, but has no marker")
    (out / ".diffreg-fedcba9876543210.stage").mkdir()  # no marker: not provably ours
    (out / ".diffreg-fedcba9876543210.stage" / "mine.txt").write_text("mine")
    (out / "notes.txt").write_text("mine")
    assert main(_register(data, out)) == 0
    assert _contents(out) == DEFAULT_SET | {"notes.txt", ".warped.nii.gz.abc123.partial.nii.gz",
                                            ".diffreg-fedcba9876543210.stage"}
    report = json.loads((out / "report.json").read_text(), parse_constant=_no_constant)
    assert set(report["outputs"]) == {"transform", "warped", "jacobian", "checkerboard", "report"}


def test_detached_outputs_keep_their_data_files_through_later_commands(data, tmp_path, capsys):
    out = tmp_path / "out"
    names = ["--transform", "transform.nhdr", "--warped", "warped.mhd", "--vector-field", "field.mhd"]
    detached = {"transform.nhdr", "transform.raw.gz", "warped.mhd", "warped.zraw", "field.mhd", "field.zraw",
                "jacobian.nii.gz", "checkerboard.png", "report.json"}
    assert main(_register(data, out, *names)) == 0
    assert _contents(out) == detached and _loads(out) == set()
    assert main(["apply", "--transform", str(out / "transform.nhdr"), "--input", data["moving"], "--reference",
                 data["fixed"], "--output", str(out / "applied.mhd")]) == 0
    assert main(["apply", "--transform", str(out / "field.mhd"), "--input", data["moving"], "--reference",
                 data["fixed"], "--output", str(out / "again.nhdr")]) == 0
    assert _contents(out) == detached | {"applied.mhd", "applied.zraw", "again.nhdr", "again.raw.gz"}
    assert _loads(out) == set()
    assert main(_register(data, out, *names)) == 0
    assert _contents(out) == detached | {"applied.mhd", "applied.zraw", "again.nhdr", "again.raw.gz"}
    assert _loads(out) == set()
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["warped"] == [str(out / "warped.mhd"), str(out / "warped.zraw")]


@pytest.mark.parametrize("mask", ["mask.nii.gz", "mask.mhd"])
def test_a_mask_an_earlier_run_wrote_is_kept_when_this_run_reads_it(data, tmp_path, capsys, mask):
    import DiffusionRegistrationLib as dr

    out = tmp_path / "out"
    first = dr.register(data["fixed"], data["moving"], similarity="mse", levels=[1], iterations=[2])
    first.save(out, jacobian=mask)  # the Jacobian is > 0 everywhere: a valid mask on the fixed grid
    mask_files = {mask} | ({"mask.zraw"} if mask.endswith(".mhd") else set())
    assert _contents(out) == DEFAULT_SET - {"jacobian.nii.gz"} | mask_files
    kept = {name: (out / name).read_bytes() for name in mask_files}
    assert main(_register(data, out, "--fixed-mask", str(out / mask))) == 0
    assert _contents(out) == DEFAULT_SET | mask_files
    assert {name: (out / name).read_bytes() for name in mask_files} == kept
    assert _loads(out) == set()


def _no_constant(name: str):
    raise AssertionError(f"report.json holds {name}, which strict JSON parsers reject")


# --- short writes (file-size limit) and signals in child processes -----------------------------------------

CHILD_PATCHES = {
    "none": "",
    "term-while-reading": "import DiffusionRegistrationLib.io.images as m\n_r = m.read_image\n"
                          "def read_image(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return _r(*a, **k)\n"
                          "m.read_image = read_image\n",
    "term-while-writing": "import DiffusionRegistrationLib.engine.outputs as m\n_w = m.write_image\n"
                          "def write_image(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return _w(*a, **k)\n"
                          "m.write_image = write_image\n",
    "kill-while-writing": "import DiffusionRegistrationLib.engine.outputs as m\n_w = m.write_image\n"
                          "def write_image(*a, **k):\n    _w(*a, **k)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                          "m.write_image = write_image\n",
    "kill-while-registering": "import DiffusionRegistrationLib.engine.registration as m\n"
                              "def register(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                              "m.register = register\n",
    "term-while-committing": "import DiffusionRegistrationLib.io.atomic as m\n_r, _n = m._move, []\n"
                             "def move(a, b):\n    _n.append(b)\n    if len(_n) == 3:\n"
                             "        os.kill(os.getpid(), signal.SIGTERM)\n    return _r(a, b)\nm._move = move\n",
}


def _run_child(argv: list[str], patch: str = "none", file_limit: int = 0) -> subprocess.CompletedProcess:
    """`diffreg argv` in a child process, after `patch`; with a file-size limit when `file_limit` is set."""
    code = f"import os, signal, sys\n{CHILD_PATCHES[patch]}from DiffusionRegistrationLib.cli.main import main\n" \
           f"sys.exit(main({argv!r}))\n"

    def limit() -> None:
        if file_limit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=limit)


SHORT_WRITES = [(2_000, [], "transform.h5"),  # the HDF5 field (24 KB) does not fit
                (5_000, ["--transform", "t.nii.gz"], "t.nii.gz"),  # the NIfTI writer does not report it
                (20_000, ["--transform", "t.nii.gz"], "checkerboard.png")]  # the NIfTI files (< 8 KB) fit


@pytest.mark.parametrize("file_limit, names, failing", SHORT_WRITES, ids=[c[2] for c in SHORT_WRITES])
def test_a_short_write_fails_cleanly_and_keeps_the_previous_set(data, tmp_path, file_limit, names, failing):
    out = tmp_path / "out"
    assert main(_register(data, out, *names)) == 0
    previous = _bytes_of(out)
    process = _run_child(_register(data, out, "--set", "seed=9", "--set", "init=centers", *names),
                         file_limit=file_limit)
    assert process.returncode == 2, process.stderr
    _one_error(process.stderr, "cannot write", str(out / failing))
    assert _bytes_of(out) == previous


@pytest.mark.parametrize("patch, signum, expected", [
    ("term-while-reading", signal.SIGTERM, None),
    ("term-while-writing", signal.SIGTERM, set()),
    ("term-while-committing", signal.SIGTERM, DEFAULT_SET),
])
def test_sigterm_at_each_moment_leaves_nothing_or_the_whole_set(data, tmp_path, patch, signum, expected):
    out = tmp_path / "out"
    process = _run_child(_register(data, out), patch)
    assert process.returncode == 128 + signum, process.stderr
    _one_error(process.stderr, "interrupted by SIGTERM")
    assert _contents(out) == expected


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_registration_ends_the_json_stream_with_a_cancelled_event(data, tmp_path, signum):
    out = tmp_path / "out"
    argv = _register(data, out, "--set", "iterations=[100000]", "--set", "tolerance=0", progress="json")
    code = "import sys\nfrom DiffusionRegistrationLib.cli.main import main\n" f"sys.exit(main({argv!r}))"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    lines = []
    for line in process.stdout:
        lines.append(json.loads(line))
        if lines[-1]["stage"] == "deformable":
            process.send_signal(signum)
            break
    rest, err = process.communicate(timeout=60)
    events = lines + [json.loads(line) for line in rest.splitlines()]
    assert process.returncode == 128 + signum
    _one_error(err, f"interrupted by {signal.Signals(signum).name}")
    assert events[-1]["stage"] == "cancelled"
    assert _contents(out) == set()


@pytest.mark.parametrize("patch, leaves_temporaries", [("kill-while-registering", False), ("kill-while-writing", True)])
def test_sigkill_keeps_the_previous_set_and_a_rerun_cleans_up(data, tmp_path, capsys, patch, leaves_temporaries):
    out = tmp_path / "out"
    assert main(_register(data, out)) == 0
    previous = _bytes_of(out)
    process = _run_child(_register(data, out, "--set", "seed=4"), patch)
    assert process.returncode == -signal.SIGKILL
    leftovers = _contents(out) - DEFAULT_SET
    assert bool(leftovers) == leaves_temporaries and all(name.startswith(".diffreg-") and name.endswith(".stage")
                                                         for name in leftovers)
    assert {name: data for name, data in _bytes_of(out).items() if name in DEFAULT_SET} == previous
    assert main(_register(data, out)) == 0
    assert _contents(out) == DEFAULT_SET


# --- apply and evaluate ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def transforms(data, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("fault_transforms")
    assert main(_register(data, folder / "t2d")) == 0
    assert main(_register(data, folder / "t3d", fixed=data["fixed3d"], moving=data["moving3d"])) == 0
    affine = folder / "short.tfm"
    affine.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
                      "Parameters: 1 0 0\nFixedParameters: 0 0 0\n")
    nan_affine = folder / "nan.tfm"
    nan_affine.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
                          "Parameters: 1 0 0 0 1 0 0 0 1 nan 0 0\nFixedParameters: 0 0 0\n")
    cut = folder / "cut.h5"
    cut.write_bytes((folder / "t2d" / "transform.h5").read_bytes()[:3000])
    nan_field = np.zeros((32, 32, 2), np.float32)
    nan_field[3, 3, 0] = np.nan
    return {"2d": str(folder / "t2d" / "transform.h5"), "3d": str(folder / "t3d" / "transform.h5"),
            "short": str(affine), "nan": str(nan_affine), "cut": str(cut),
            "nan-field": _save(nan_field, folder / "nanfield.nii.gz", vector=True)}


APPLY_CASES = [
    ("3d", "fixed", "moving", "out.nii.gz", "3D"), ("2d", "fixed", "moving3d", "out.nii.gz", "3D"),
    ("2d", "fixed3d", "moving3d", "out.nii.gz", "2D"), ("2d", "fixed", "moving", "out.xyz", "out.xyz"),
    ("short", "fixed3d", "moving3d", "out.nii.gz", "less than expected"),
    ("nan", "fixed3d", "moving3d", "out.nii.gz", "finite numbers"), ("cut", "fixed", "moving", "out.nii.gz", "cut.h5"),
    ("nan-field", "fixed", "moving", "out.nii.gz", "NaN"), ("2d", "fixed", "moving", "INPUT", "destroy the input"),
]


@pytest.mark.parametrize("transform, reference, image, output, fragment", APPLY_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in APPLY_CASES])
def test_apply_refuses_mismatches_and_bad_outputs(data, transforms, tmp_path, capsys, transform, reference, image,
                                                  output, fragment):
    target = data["moving"] if output == "INPUT" else str(tmp_path / output)
    before = Path(data["moving"]).read_bytes()
    assert main(["apply", "--transform", transforms[transform], "--reference", data[reference], "--input",
                 data[image], "--output", target]) == 2
    _one_error(capsys.readouterr().err, fragment)
    assert _contents(tmp_path) == set()
    assert Path(data["moving"]).read_bytes() == before


def _landmark_files(folder: Path) -> dict:
    def markups(document) -> str:
        path = folder / f"m{len(list(folder.iterdir()))}.mrk.json"
        path.write_text(json.dumps(document) if not isinstance(document, str) else document)
        return str(path)

    point = {"label": "a", "position": [1.0, 2.0, 3.0]}
    (folder / "2d.csv").write_text("x,y\n1,2\n3,4\n")
    (folder / "nan.csv").write_text("x,y,z\n1,2,nan\n3,4,5\n")
    return {"2d-points": str(folder / "2d.csv"), "nan-csv": str(folder / "nan.csv"),
            "nan-json": markups('{"markups": [{"controlPoints": [{"label": "a", "position": [1, NaN, 3]}]}]}'),
            "markups-dict": markups({"markups": {"a": 1}}), "markup-list": markups({"markups": [[point]]}),
            "points-dict": markups({"markups": [{"controlPoints": {"a": point}}]}),
            "point-list": markups({"markups": [{"controlPoints": [[1, 2, 3]]}]}),
            "position-text": markups({"markups": [{"controlPoints": [{"position": ["1", "2", "3"]}]}]})}


LANDMARK_CASES = [("2d-points", "2D points"), ("nan-csv", "nan"), ("nan-json", "NaN"),
                  ("markups-dict", "markups"), ("markup-list", "markup 1"), ("points-dict", "controlPoints"),
                  ("point-list", "control point 1"), ("position-text", "position")]


@pytest.mark.parametrize("kind, fragment", LANDMARK_CASES, ids=[c[0] for c in LANDMARK_CASES])
def test_evaluate_refuses_bad_landmarks(data, transforms, tmp_path, capsys, kind, fragment):
    folder = tmp_path / "landmarks"
    folder.mkdir()
    path = _landmark_files(folder)[kind]
    good = folder / "good.csv"
    good.write_text("x,y,z\n1,2,3\n3,4,5\n")
    assert main(["evaluate", "--transform", transforms["3d"], "--reference", data["fixed3d"], "--fixed-landmarks", path,
                 "--moving-landmarks", str(good), "--output", str(tmp_path / "eval.json")]) == 2
    _one_error(capsys.readouterr().err, "landmark file", path, fragment)
    assert _contents(tmp_path) == {"landmarks"}


def test_evaluate_checks_its_output_name_first(data, transforms, tmp_path, capsys):
    assert main(["evaluate", "--transform", str(tmp_path / "missing.h5"), "--output", str(tmp_path / "e.txt")]) == 2
    _one_error(capsys.readouterr().err, "e.txt", ".json")
    assert _contents(tmp_path) == set()


def test_evaluate_refuses_labels_on_another_grid(data, transforms, tmp_path, capsys):
    assert main(["evaluate", "--transform", transforms["2d"], "--reference", data["fixed"], "--fixed-labels",
                 data["fixed3d"], "--moving-labels", data["moving"]]) == 2
    _one_error(capsys.readouterr().err, "fixed labels")


# --- JSON progress, batch, the Python API, model verification ---------------------------------------------

def test_a_failure_under_json_progress_ends_with_an_error_event_and_only_json_on_stdout(data, tmp_path, capsys):
    assert main(_register(data, tmp_path / "out", "--set", "lr=-1", progress="json")) == 2
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert events[-1]["stage"] == "error" and "setting lr=-1" in events[-1]["message"]
    _one_error(captured.err, "setting lr=-1")


def test_auto_progress_into_a_pipe_prints_only_json(data, tmp_path, capsys):
    assert main(_register(data, tmp_path / "out", progress="auto")) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["stage"] == "done"


def test_batch_refuses_a_csv_that_is_not_utf8(data, tmp_path, capsys):
    (tmp_path / "pairs.csv").write_bytes("fixed,moving\n".encode() + "caf\xe9.nii,b.nii\n".encode("latin-1"))
    assert main(["batch", str(tmp_path / "pairs.csv"), "--output-dir", str(tmp_path / "out"), "--progress", "none"]) == 2
    _one_error(capsys.readouterr().err, "pairs.csv", "UTF-8")
    assert _contents(tmp_path / "out") == set()


def test_batch_reports_an_unexpected_failure_for_its_pair_and_goes_on(data, tmp_path, capsys, monkeypatch):
    import DiffusionRegistrationLib.network.batch as batch

    real, calls = batch.register, []

    def flaky(fixed, moving, config):
        calls.append(moving.path)
        if len(calls) == 1:
            raise ValueError("a bug in one pair")
        return real(fixed, moving, config)

    monkeypatch.setattr(batch, "register", flaky)
    (tmp_path / "pairs.csv").write_text(f"fixed,moving\n{data['fixed']},{data['moving']}\n"
                                        f"{data['fixed']},{data['moving']}\n")
    code = main(["batch", str(tmp_path / "pairs.csv"), "--output-dir", str(tmp_path / "out"), "--similarity", "mse",
                 "--set", "levels=[1]", "--set", "iterations=[2]", "--progress", "none"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ValueError: a bug in one pair" in err
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(folders) == 2 and folders[1] == "batch_rank0.json"
    assert _contents(tmp_path / "out" / folders[0]) == {"transform.h5", "warped.nii.gz", "result.json"}


def test_the_api_checks_in_memory_images_and_argument_types(data):
    from DiffusionRegistrationLib.engine.registration import register
    from DiffusionRegistrationLib.errors import RegistrationError
    from DiffusionRegistrationLib.io.images import read_image

    fixed = read_image(data["fixed"])
    broken = fixed.with_array(fixed.array.copy())
    broken.array[4, 4] = np.nan
    with pytest.raises(RegistrationError, match="NaN"):
        register(fixed, broken)
    with pytest.raises(TypeError, match="moving"):
        register(fixed, data["moving"])


@pytest.fixture
def hand_placed_hub_model(tmp_path, monkeypatch):
    """A hub model of the catalog whose files were put into the cache by hand (zeros of the right size)."""
    from DiffusionRegistrationLib.features.catalog import load_catalog

    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path))
    entry = next(e for e in load_catalog().values() if e.kind == "hub" and all(not f.sha256 for f in e.files))
    for expected in entry.files:
        target = tmp_path / entry.id / expected.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\0" * (expected.size or 10))
    return entry


def test_models_verify_calls_hand_placed_hub_files_unverified(hand_placed_hub_model, capsys):
    entry = hand_placed_hub_model
    assert main(["models", "verify", entry.id, "--progress", "none"]) == 0
    assert capsys.readouterr().out.startswith(f"{entry.id}: unverified")


CHECKPOINT_FIELDS = [("step", "abc", "step"), ("network", [1, 2], "network"), ("config", 5, "config"),
                     ("network", {"dim": 2, "channels": [10 ** 9]}, "channels"),
                     ("network", {"dim": 2, "size": [100000, 100000]}, "out of range"),
                     ("network", {"dim": 7}, "dim")]


@pytest.mark.parametrize("field, value, fragment", CHECKPOINT_FIELDS, ids=[f"{c[0]}-{c[2]}" for c in CHECKPOINT_FIELDS])
def test_a_checkpoint_with_crafted_fields_is_refused(data, tmp_path, capsys, field, value, fragment):
    import torch

    checkpoint = {"format": "diffreg-network-1", "model": {}, "network": {"dim": 2}, "config": {}, "step": 1}
    checkpoint[field] = value
    torch.save(checkpoint, tmp_path / "net.pt")
    out = tmp_path / "out"
    assert main(["register", "--fixed", data["fixed"], "--moving", data["moving"], "--output-dir", str(out),
                 "--network", str(tmp_path / "net.pt"), "--progress", "none"]) == 2
    _one_error(capsys.readouterr().err, "net.pt" if field != "network" or fragment == "network" else "network",
               fragment)
    assert _contents(tmp_path) == {"net.pt", "out"} and _contents(out) == set()


def test_evaluate_refuses_multi_component_labels(data, transforms, tmp_path, capsys):
    labels = _save(np.ones((32, 32, 3), np.uint8), tmp_path / "rgb.nrrd", vector=True)
    assert main(["evaluate", "--transform", transforms["2d"], "--reference", data["fixed"], "--fixed-labels", labels,
                 "--moving-labels", data["moving"]]) == 2
    _one_error(capsys.readouterr().err, "fixed labels", "components")


# --- label maps: exact through apply, the API and evaluate ------------------------------------------------

def _label_map(folder: Path) -> tuple[str, str, np.ndarray]:
    """32^3 voxels, each its own label: 32,768 labels up to 2^31 - 1 (float32 holds neither exactly), on a grid
    with spacing, origin and a rotation; and the identity transform on it, written by SimpleITK."""
    values = (2**31 - 1 - np.random.default_rng(0).permutation(32768)).astype(np.int32).reshape(32, 32, 32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 1.3, 2.0))
    image.SetOrigin((3.1, -20.0, 5.5))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    sitk.WriteImage(image, str(folder / "labels.nii.gz"))
    field = sitk.Image(image.GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(image)
    sitk.WriteTransform(sitk.DisplacementFieldTransform(field), str(folder / "identity.h5"))
    return str(folder / "labels.nii.gz"), str(folder / "identity.h5"), values


def test_apply_labels_keeps_every_label_value_and_type(tmp_path, capsys):
    labels, identity, values = _label_map(tmp_path)
    out = tmp_path / "out"
    assert main(["apply", "--transform", identity, "--input", labels, "--reference", labels, "--output",
                 str(out / "moved.nii.gz"), "--labels"]) == 0
    assert capsys.readouterr().err == ""
    back = sitk.ReadImage(str(out / "moved.nii.gz"))
    assert back.GetPixelID() == sitk.sitkInt32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), values)
    assert _contents(out) == {"moved.nii.gz"}


def test_the_api_applies_labels_exactly(tmp_path):
    import DiffusionRegistrationLib as dr

    labels, identity, values = _label_map(tmp_path)
    moved = dr.apply(identity, sitk.ReadImage(labels), reference=labels, labels=True)
    assert moved.array.dtype == np.int32
    np.testing.assert_array_equal(moved.array, values)


def test_evaluate_scores_each_label_as_given(tmp_path, capsys):
    labels, identity, values = _label_map(tmp_path)
    assert main(["evaluate", "--transform", identity, "--fixed-labels", labels, "--moving-labels", labels]) == 0
    dice = json.loads(capsys.readouterr().out)["dice"]
    assert len(dice["per_label"]) == 32768 and set(dice["per_label"].values()) == {1.0}
    assert str(2**31 - 1) in dice["per_label"] and dice["mean_before"] == dice["mean_after"] == 1.0


# --- two runs into one folder, folder names, outputs that cannot be written -------------------------------

def test_a_second_run_into_a_busy_folder_is_refused_and_a_killed_run_leaves_no_lock(data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _register(data, out, "--set", "iterations=[100000]", "--set", "tolerance=0", progress="json")
    code = "import sys\nfrom DiffusionRegistrationLib.cli.main import main\n" f"sys.exit(main({argv!r}))"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    for line in process.stdout:
        if json.loads(line)["stage"] == "deformable":
            break
    try:
        assert main(_register(data, out)) == 2
        _one_error(capsys.readouterr().err, f"output folder {out}", "another diffreg run is writing into it")
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert _contents(out) == set()
    assert main(_register(data, out)) == 0
    assert _contents(out) == DEFAULT_SET


def test_an_empty_output_folder_name_is_refused(data, tmp_path, capsys, monkeypatch, no_registration):
    monkeypatch.chdir(tmp_path)
    argv = ["register", "--fixed", data["fixed"], "--moving", data["moving"], "--output-dir", "", "--progress", "none"]
    assert main(argv) == 2
    _one_error(capsys.readouterr().err, "output folder", "empty", "--output-dir")
    assert _contents(tmp_path) == set()


def test_saving_an_inverse_that_was_not_computed_is_an_error(data, tmp_path, monkeypatch):
    import DiffusionRegistrationLib as dr
    from DiffusionRegistrationLib.errors import RegistrationError

    registration = dr.register(data["fixed"], data["moving"], similarity="mse", levels=[1], iterations=[2])
    with pytest.raises(RegistrationError, match=r"inverse inverse.h5: this registration computed no inverse.*"
                                                r"inverse=True"):
        registration.save(tmp_path / "out", inverse="inverse.h5")
    assert _contents(tmp_path / "out") is None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistrationError, match="output folder: the name is empty"):
        registration.save("")
    assert _contents(tmp_path) == set()


def test_the_api_writes_through_the_command_lines_path(data, tmp_path, monkeypatch):
    import DiffusionRegistrationLib as dr
    import DiffusionRegistrationLib.engine.registration as registration
    from DiffusionRegistrationLib.errors import RegistrationError

    quick = {"similarity": "mse", "levels": [1], "iterations": [2]}
    real = registration.register
    monkeypatch.setattr(registration, "register", lambda *a, **k: pytest.fail("registered before the outputs' check"))
    with pytest.raises(RegistrationError, match="warped output .*w.xyz: unknown file type"):
        dr.register(data["fixed"], data["moving"], output_dir=tmp_path / "bad", outputs={"warped": "w.xyz"}, **quick)
    assert _contents(tmp_path / "bad") is None
    monkeypatch.setattr(registration, "register", real)
    done = dr.register(data["fixed"], data["moving"], output_dir=tmp_path / "out", outputs={"warped": None}, **quick)
    assert _contents(tmp_path / "out") == DEFAULT_SET - {"warped.nii.gz"}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["max_displacement_mm"] == pytest.approx(float(np.linalg.norm(done.displacement, axis=-1).max()))


# --- batch: pair names, bad rows, changed rows ---------------------------------------------------------------

BATCH_QUICK = ["--similarity", "mse", "--set", "levels=[1]", "--set", "iterations=[2]", "--progress", "none"]


def test_batch_checks_pair_names_and_a_bad_row_fails_only_its_pair(data, tmp_path, capsys):
    fixed, moving = data["fixed"], data["moving"]
    (tmp_path / "pairs.csv").write_text(
        f"fixed,moving,name\n{fixed},{moving},..\n{fixed},{moving},a/x\n{fixed},{moving},b/x\n{fixed},{moving},good\n"
        f"{fixed},{moving},Good\n{fixed},,empty\n{fixed}\n{fixed},{moving},.hidden\n{fixed},{moving},other\n")
    out = tmp_path / "batch" / "out"
    assert main(["batch", str(tmp_path / "pairs.csv"), "--output-dir", str(out), *BATCH_QUICK]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed: ")]
    expected = {1: "the name '..' is not a plain folder name", 2: "the name 'a/x' is not a plain folder name",
                3: "the name 'b/x' is not a plain folder name", 5: "the name 'Good' is also the name of row 4",
                6: "no moving image", 7: "no moving image", 8: "the name '.hidden' is not a plain folder name"}
    assert len(failed) == len(expected), failed
    for row, fragment in expected.items():
        assert any(f"pairs.csv, row {row} after the header: {fragment}" in line for line in failed), (row, failed)
    assert _contents(out) == {"good", "other", "batch_rank0.json"}
    assert _contents(tmp_path / "batch") == {"out"}
    assert _contents(out / "good") == {"transform.h5", "warped.nii.gz", "result.json"}


def test_batch_registers_a_changed_row_again_and_skips_unchanged_ones(data, tmp_path, capsys):
    shutil.copy(data["moving"], tmp_path / "m.nii.gz")
    pairs, out = tmp_path / "pairs.csv", tmp_path / "out"
    command = ["batch", str(pairs), "--output-dir", str(out), *BATCH_QUICK]

    def statuses(rows: str) -> list:
        pairs.write_text(f"fixed,moving,name\n{rows}")
        assert main(command) == 0
        return [(s["name"], s["status"]) for s in json.loads((out / "batch_rank0.json").read_text())]

    same = f"{data['fixed']},{data['moving']},same\n"
    assert statuses(f"{data['fixed']},{tmp_path / 'm.nii.gz'},changing\n{same}") == [("changing", "done"),
                                                                                    ("same", "done")]
    assert statuses(f"{data['fixed']},{tmp_path / 'm.nii.gz'},changing\n{same}") == [("changing", "skipped"),
                                                                                    ("same", "skipped")]
    assert statuses(f"{data['fixed']},{data['fixed']},changing\n{same}") == [("changing", "done"), ("same", "skipped")]
    assert json.loads((out / "changing" / "result.json").read_text())["moving"] == data["fixed"]
    _save(_blobs((32, 32), shift=3.0), tmp_path / "m.nii.gz")  # the same row, another file content
    assert statuses(f"{data['fixed']},{tmp_path / 'm.nii.gz'},changing\n{same}") == [("changing", "done"),
                                                                                    ("same", "skipped")]
    assert _contents(out) == {"changing", "same", "batch_rank0.json"}


def test_an_unwritable_model_cache_is_an_error_line(hand_placed_hub_model, tmp_path, capsys):
    from DiffusionRegistrationLib.features.weights import STAMP

    entry = hand_placed_hub_model
    (tmp_path / entry.id / STAMP).mkdir()  # the stamp cannot be written: as unwritable as a read-only cache
    before = _contents(tmp_path / entry.id)
    assert main(["models", "verify", entry.id, "--progress", "none"]) == 2
    _one_error(capsys.readouterr().err, STAMP)
    assert _contents(tmp_path / entry.id) == before
