"""Fault suite, hostile inputs (issue 17): files that are not files, headers that lie, structured files
nested or numbered to break their parsers, parameters out of range, downloads that do not stop, and the
messages each gets. Like Testing/test_faults.py, every case asserts the exit code, the one `error:` line
(naming the file or setting) and the exact contents of the output folder afterwards.

Cases that hung or ran away before (a named pipe, a decompression bomb, an endless download) run in a
child process with a time, memory or file-size limit, so they fail instead of hanging the suite.
"""
from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import DiffusionRegistrationLib
from DiffusionRegistrationLib.cli.main import main
from DiffusionRegistrationLib.errors import RegistrationError
from test_faults import _blobs, _contents, _one_error, data  # noqa: F401 (data: the fixture of the same images)

QUICK = ["--set", "similarity=mse", "--set", "levels=[1]", "--set", "iterations=[2]", "--set", "affine_levels=[1]",
         "--set", "affine_iterations=[2]"]
DEFAULT_SET = {"transform.h5", "warped.nii.gz", "jacobian.nii.gz", "checkerboard.png", "report.json"}
LIB = Path(DiffusionRegistrationLib.__file__).resolve().parents[1]  # the code under test, for child processes
DEEP = 100_000  # nesting levels: far beyond Python's recursion limit
HUGE = "9" * 400  # an integer of 400 digits


def _save(array: np.ndarray, path: Path, spacing: float = 1.0, origin: float = 0.0) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([spacing] * image.GetDimension())
    image.SetOrigin([origin] * image.GetDimension())
    sitk.WriteImage(image, str(path))
    return str(path)


def _register(data, out: Path, *extra: str, fixed: str = "", moving: str = "") -> list[str]:
    return ["register", "--fixed", fixed or data["fixed"], "--moving", moving or data["moving"], "--output-dir",
            str(out), "--progress", "none", *QUICK, *extra]


DIFFREG = "import sys; from DiffusionRegistrationLib.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _child(args: list[str], timeout: float = 120, env: dict | None = None, limits: dict | None = None,
           code: str = DIFFREG) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` (by default `diffreg ARGS`) in a child process with a timeout and optional
    resource limits; a child that outlives the timeout fails the test instead of hanging it."""
    def limit():
        for name, value in (limits or {}).items():
            resource.setrlimit(name, (value, value))

    command = [sys.executable, "-c", code, *args]
    environment = {**os.environ, "PYTHONPATH": str(LIB), **(env or {})}
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args or code[:80]} still ran after {timeout} s (it hangs)")


# --- inputs that are not regular files --------------------------------------------------------------------

def test_a_named_pipe_as_image_is_refused_without_opening_it(data, tmp_path):
    pipe = tmp_path / "fixed.nii.gz"
    os.mkfifo(pipe)
    out = tmp_path / "out"
    done = _child(_register(data, out, fixed=str(pipe)), timeout=60)
    assert done.returncode == 2, done.stderr
    _one_error(done.stderr, "fixed image", str(pipe), "named pipe")
    assert _contents(out) is None


def test_a_named_pipe_as_transform_is_refused_without_opening_it(data, tmp_path):
    pipe = tmp_path / "transform.h5"
    os.mkfifo(pipe)
    output = tmp_path / "out" / "warped.nii.gz"
    output.parent.mkdir()
    done = _child(["apply", "--transform", str(pipe), "--input", data["moving"], "--reference", data["fixed"],
                   "--output", str(output)], timeout=60)
    assert done.returncode == 2, done.stderr
    _one_error(done.stderr, "transform", str(pipe), "named pipe")
    assert _contents(output.parent) == set()


def test_a_device_as_image_is_refused(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_register(data, out, moving="/dev/zero")) == 2
    _one_error(capsys.readouterr().err, "moving image /dev/zero", "a device")
    assert _contents(out) is None


def test_a_folder_as_config_is_called_a_folder_not_missing(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_register(data, out, "--config", str(tmp_path))) == 2
    _one_error(capsys.readouterr().err, f"config file {tmp_path}", "is a folder")
    assert _contents(out) is None


def test_a_named_pipe_as_landmarks_is_called_a_pipe(data, tmp_path, capsys):
    pipe = tmp_path / "points.mrk.json"
    os.mkfifo(pipe)
    transform = _identity_transform(tmp_path)
    assert main(["evaluate", "--transform", transform, "--reference", data["fixed"], "--fixed-landmarks", str(pipe),
                 "--moving-landmarks", str(pipe)]) == 2
    _one_error(capsys.readouterr().err, "landmark file", "named pipe")


def _identity_transform(folder: Path) -> str:
    path = folder / "identity.tfm"
    sitk.WriteTransform(sitk.TranslationTransform(2), str(path))
    return str(path)


# --- headers that lie --------------------------------------------------------------------------------------

BOMB_READER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from DiffusionRegistrationLib.io.images import read_image
image = read_image(sys.argv[1])
print(image.grid.size, float(image.array.max()))
"""


def test_a_decompression_bomb_is_read_within_the_header_size(tmp_path):
    """A 1 MB MetaImage whose zlib stream inflates to 1 GiB, under a 1 GiB address-space limit: only the
    header's 16^3 voxels are ever inflated (the check used to inflate 4 MB of input at once, 1 GiB)."""
    rng = np.random.default_rng(0)
    stream = zlib.compress(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes() + b"\0" * (1 << 30), 9)
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"CompressedData = True\nCompressedDataSize = {len(stream)}\nDimSize = 16 16 16\n"
              "ElementSpacing = 1 1 1\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    bomb = tmp_path / "bomb.mha"
    bomb.write_bytes(header.encode() + stream)
    done = _child([str(bomb)], code=BOMB_READER, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:3] == ["(16,", "16,", "16)"]


def _nifti_with_offset(path: Path, offset: float) -> str:
    """A valid 16^3 float NIfTI-1 file whose vox_offset field is then set to `offset`."""
    _save(_blobs((16, 16, 16)), path)
    raw = bytearray(path.read_bytes())
    raw[108:112] = struct.pack("<f", offset)
    path.write_bytes(bytes(raw))
    return str(path)


@pytest.mark.parametrize("offset", [0.0, -352.0, 100.0])
def test_a_nifti_vox_offset_inside_the_header_is_refused(data, tmp_path, capsys, offset):
    moving = _nifti_with_offset(tmp_path / "moving.nii", offset)
    out = tmp_path / "out"
    assert main(_register(data, out, fixed=data["fixed3d"], moving=moving)) == 2
    _one_error(capsys.readouterr().err, f"moving image {moving}", f"vox_offset is {int(offset)}", "352")
    assert _contents(out) is None


def test_nifti2_is_read_like_the_same_image_in_nifti1(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    from DiffusionRegistrationLib.io.images import read_image

    array = np.random.default_rng(1).random((8, 9, 10)).astype(np.float32)
    affine = np.array([[0, 0, 4, 10], [-3, 0, 0, 20], [0, 2, 0, -5], [0, 0, 0, 1.0]])
    nibabel.save(nibabel.Nifti1Image(array, affine), tmp_path / "one.nii.gz")
    nibabel.save(nibabel.Nifti2Image(array, affine), tmp_path / "two.nii.gz")
    one, two = read_image(tmp_path / "one.nii.gz"), read_image(tmp_path / "two.nii.gz")  # one: through ITK
    assert np.array_equal(one.array, two.array)
    assert two.grid.size == one.grid.size and np.allclose(two.grid.spacing, one.grid.spacing)
    assert np.allclose(two.grid.origin, one.grid.origin) and np.allclose(two.grid.direction, one.grid.direction)


def test_nifti2_without_nibabel_is_refused_naming_nifti2(tmp_path, monkeypatch):
    nibabel = pytest.importorskip("nibabel")
    from DiffusionRegistrationLib.io.images import read_image

    nibabel.save(nibabel.Nifti2Image(_blobs((16, 16, 16)), np.eye(4)), tmp_path / "two.nii")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(RegistrationError, match="NIfTI-2.*nibabel"):
        read_image(tmp_path / "two.nii")


def _colour_nrrd(path: Path, shape: tuple[int, ...]) -> str:
    """An RGB NRRD as teem writes it: the colour axis first, its spacing NaN."""
    dim = len(shape)
    voxels = np.random.default_rng(2).integers(0, 255, (*shape, 3), dtype=np.uint8)
    header = (f"NRRD0004\ntype: unsigned char\ndimension: {dim + 1}\nsizes: 3 {' '.join(map(str, shape[::-1]))}\n"
              f"spacings: NaN {' '.join(['0.5'] * dim)}\nkinds: RGB-color {' '.join(['domain'] * dim)}\n"
              "encoding: raw\n\n")
    path.write_bytes(header.encode() + voxels.tobytes())
    return str(path)


def test_a_colour_nrrd_slice_is_read_as_grey_with_its_spacing(tmp_path):
    from DiffusionRegistrationLib.io.images import read_image

    image = read_image(_colour_nrrd(tmp_path / "rgb.nrrd", (32, 32)))
    assert image.grid.size == (32, 32) and image.grid.spacing == (0.5, 0.5)


def test_a_colour_nrrd_volume_is_refused_as_colour_not_as_bad_spacing(data, tmp_path, capsys):
    moving = _colour_nrrd(tmp_path / "rgb.nrrd", (16, 16, 16))
    out = tmp_path / "out"
    assert main(_register(data, out, fixed=data["fixed3d"], moving=moving)) == 2
    line = _one_error(capsys.readouterr().err, f"moving image {moving}", "3 components per voxel", "colour")
    assert "spacing" not in line
    assert _contents(out) is None


@pytest.mark.parametrize("dim", [2, 3])
def test_images_apart_in_space_with_init_none_are_refused(data, tmp_path, capsys, dim):
    shape = (32, 32) if dim == 2 else (16, 16, 16)
    far = _save(_blobs(shape), tmp_path / "far.nii.gz", origin=500.0)
    out = tmp_path / "out"
    fixed = data["fixed"] if dim == 2 else data["fixed3d"]
    assert main(_register(data, out, "--set", "init=none", fixed=fixed, moving=far)) == 2
    _one_error(capsys.readouterr().err, "do not overlap in physical space", "init=none")
    assert _contents(out) is None


def test_images_apart_in_space_are_aligned_first_and_the_report_says_so(data, tmp_path, capsys):
    far = _save(_blobs((16, 16, 16), shift=1.0), tmp_path / "far.nii.gz", origin=500.0)
    out = tmp_path / "out"
    assert main(_register(data, out, fixed=data["fixed3d"], moving=far)) == 0
    assert "do not overlap in physical space as given" in capsys.readouterr().err
    assert _contents(out) == DEFAULT_SET
    report = json.loads((out / "report.json").read_text())
    assert any("do not overlap" in warning for warning in report["warnings"])


def test_rgb_and_complex_simpleitk_images_are_refused_by_the_api(data):
    import DiffusionRegistrationLib as dr

    rgb = sitk.GetImageFromArray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8),
                                 isVector=True)
    complex_image = sitk.GetImageFromArray(_blobs((32, 32)) * (1 + 1j))
    for image, fragment in ((rgb, "3 components"), (complex_image, "complex")):
        with pytest.raises(RegistrationError, match=fragment):
            dr.register(image, data["moving"])


# --- structured files nested or numbered to break their parsers ---------------------------------------------

def _deep_json() -> str:
    return '{"lr": ' + "[" * DEEP + "]" * DEEP + "}"


def _deep_toml() -> str:
    return "lr = " + "[" * DEEP + "]" * DEEP + "\n"


@pytest.mark.parametrize("name, text, fragment", [
    ("deep.json", _deep_json(), "nested more than"), ("deep.toml", _deep_toml(), "nested more than"),
    ("seed.json", '{"seed": ' + HUGE + "}", "400 digits"), ("lr.json", '{"lr": ' + HUGE + "}", "400 digits"),
    ("seed.toml", "seed = " + HUGE + "\n", "400 digits"),
])
def test_a_config_file_nested_or_numbered_to_break_parsers_is_refused(data, tmp_path, capsys, name, text, fragment):
    config = tmp_path / name
    config.write_text(text)
    out = tmp_path / "out"
    assert main(_register(data, out, "--config", str(config))) == 2
    _one_error(capsys.readouterr().err, f"config file {config}", fragment)
    assert _contents(out) is None


@pytest.mark.parametrize("flags, fragment", [
    (["--set", "levels=" + "[" * DEEP + "]" * DEEP], "option levels: is nested more than"),
    (["--set", "seed=" + HUGE], "option seed: holds an integer of 400 digits"),
    (["--set", "lr=" + HUGE], "option lr: holds an integer"),
    (["--seed", HUGE], "setting seed=<an integer of 1329 bits>: is out of range"),
    (["--set", "iterations=[" + HUGE + "]"], "option iterations: holds an integer"),
])
def test_a_setting_nested_or_numbered_to_break_parsers_is_refused(data, tmp_path, capsys, flags, fragment):
    out = tmp_path / "out"
    assert main(_register(data, out, *flags)) == 2
    _one_error(capsys.readouterr().err, fragment)
    assert _contents(out) is None


def test_a_cfg_toml_with_upper_case_suffix_is_read_as_toml(data, tmp_path, capsys):
    config = tmp_path / "cfg.TOML"
    config.write_text("lr = 0.3\n")
    out = tmp_path / "out"
    assert main(_register(data, out, "--config", str(config))) == 0
    assert json.loads((out / "report.json").read_text())["config"]["lr"] == 0.3
    assert _contents(out) == DEFAULT_SET


@pytest.mark.parametrize("name, text, fragment", [
    ("deep.mrk.json", '{"markups": ' + "[" * DEEP + "]" * DEEP + "}", "nested more than"),
    ("huge.mrk.json", json.dumps({"markups": [{"controlPoints": [{"position": [1, 2, 3]}]}]}).replace("1,", HUGE + ","),
     "holds an integer of 400 digits"),
    ("field.csv", "x,y\n1," + "9" * 200_000 + "\n", "cannot be read as CSV"),
])
def test_a_landmark_file_nested_or_numbered_to_break_parsers_is_refused(data, tmp_path, capsys, name, text, fragment):
    points = tmp_path / name
    points.write_text(text)
    assert main(["evaluate", "--transform", _identity_transform(tmp_path), "--reference", data["fixed"],
                 "--fixed-landmarks", str(points), "--moving-landmarks", str(points)]) == 2
    _one_error(capsys.readouterr().err, f"landmark file {points}", fragment)


# --- similarity parameters out of range ---------------------------------------------------------------------

@pytest.mark.parametrize("setting, fragment", [
    ('similarity_params={"sigma": Infinity}', "parameter sigma=inf"),
    ('similarity_params={"eps": 1e300}', "parameter eps=1e+300"),
    ('similarity_params={"radius": 100000000}', "parameter radius=100000000"),
    ('similarity_params={"sigma": "wide"}', "parameter sigma='wide'"),
    ('similarity_params={"no_such": 1}', "has no parameter 'no_such'"),
])
def test_a_similarity_parameter_out_of_range_is_refused_before_any_work(data, tmp_path, capsys, setting, fragment):
    out = tmp_path / "out"
    assert main(_register(data, out, "--set", "similarity=lncc", "--set", setting)) == 2
    _one_error(capsys.readouterr().err, "similarity 'lncc'", fragment, "allowed:")
    assert _contents(out) is None


def test_mutual_information_with_a_hundred_million_bins_is_refused(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_register(data, out, "--set", "affine_similarity=mi", "--set",
                          'affine_similarity_params={"bins": 100000000}')) == 2
    _one_error(capsys.readouterr().err, "affine_similarity_params", "similarity 'mi'", "bins=100000000", "1024")
    assert _contents(out) is None


# --- training settings and checkpoints ---------------------------------------------------------------------

@pytest.mark.parametrize("flags, fragment", [
    (["--lr", "nan"], "setting lr=nan: is not finite"), (["--lr", "-1"], "setting lr=-1"),
    (["--finetune-lr", "-0.001"], "setting finetune_lr=-0.001"), (["--threads", "0"], "setting threads=0"),
    (["--regularization", "inf"], "setting regularization=inf"),
    (["--similarity-params", '{"sigma": -1}'], "parameter sigma=-1"),
])
def test_a_bad_training_setting_is_refused_before_training(data, tmp_path, capsys, flags, fragment):
    out = tmp_path / "checkpoints"
    assert main(["train", "--synthetic", data["fixed"], "--checkpoint-dir", str(out), "--steps", "1",
                 "--batch-size", "1", "--grid", "32,32", "--stages", "2,1", "--channels", "4,4", "--device", "cpu",
                 "--progress", "none", *flags]) == 2
    _one_error(capsys.readouterr().err, fragment)
    assert _contents(out) is None


def _checkpoint(path: Path, config: dict, nan: bool = False) -> str:
    import torch

    from DiffusionRegistrationLib.network.inference import CHECKPOINT_FORMAT
    from DiffusionRegistrationLib.network.model import NetworkSpec, RegistrationNetwork

    spec = NetworkSpec(dim=2, size=(32, 32), stages=(2, 1), channels=(4, 4))
    state = RegistrationNetwork(spec).state_dict()
    if nan:
        state = {key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
                 for key, value in state.items()}
    torch.save({"format": CHECKPOINT_FORMAT, "model": state, "network": spec.to_dict(), "config": config,
                "step": 1}, path)
    return str(path)


@pytest.mark.parametrize("config, fragment", [
    ({"similarity": "mse", "regularization": "strong"}, "setting regularization=strong"),
    ({"similarity": "mse", "finetune_lr": -1.0}, "setting finetune_lr=-1"),
    ({"similarity": ["mse"]}, "is not a known choice"),
    ({"similarity": "lncc", "similarity_params": {"sigma": float("inf")}}, "parameter sigma=inf"),
    ({"similarity": "mse", "percentiles": "all"}, "setting percentiles=all"),
])
def test_a_checkpoint_with_crafted_settings_is_refused(data, tmp_path, capsys, config, fragment):
    checkpoint = _checkpoint(tmp_path / "crafted.pt", config)
    out = tmp_path / "out"
    assert main(["register", "--fixed", data["fixed"], "--moving", data["moving"], "--output-dir", str(out),
                 "--progress", "none", "--network", checkpoint, "--finetune-steps", "1"]) == 2
    _one_error(capsys.readouterr().err, f"network checkpoint {checkpoint}", "stored settings are malformed", fragment)
    assert _contents(out) in (None, set())


def test_a_network_that_produces_nan_is_blamed_not_the_disk(data, tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "nan.pt", {"similarity": "mse"}, nan=True)
    out = tmp_path / "out"
    assert main(["register", "--fixed", data["fixed"], "--moving", data["moving"], "--output-dir", str(out),
                 "--progress", "none", "--network", checkpoint]) == 2
    line = _one_error(capsys.readouterr().err, f"network {checkpoint}", "produced NaN")
    assert "disk" not in line
    assert _contents(out) in (None, set())


# --- catalog, stamp, settings file, download ---------------------------------------------------------------

def _catalog(tmp_path: Path, entry: dict, **top) -> dict:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": {"m": entry}, **top}))
    return {"DIFFREG_CATALOG": str(path), "DIFFREG_CACHE": str(tmp_path / "cache")}


GOOD_ENTRY = {"kind": "file", "backbone": "adm", "licence": "test", "source": {"url": "file:///dev/zero"},
              "files": [{"name": "w.pt", "url": "file:///dev/zero", "size": 1000, "sha256": None, "reason": "test"}]}


@pytest.mark.parametrize("change, fragment", [
    ({"extractor": "tap"}, "'extractor' that is not an object"), ({"description": 3}, "'description' that is not"),
    ({"source": {"url": ["x"]}}, "'source' whose values are not all texts"),
    ({"files": [{**GOOD_ENTRY["files"][0], "size": True}]}, "bad size True"),
    ({"files": [{**GOOD_ENTRY["files"][0], "reason": ["a"]}]}, "'reason' that is not a text"),
    ({"files": [{**GOOD_ENTRY["files"][0], "url": 5}]}, "'url' that is not a text"),
])
def test_a_malformed_catalog_entry_is_refused(tmp_path, capsys, monkeypatch, change, fragment):
    for key, value in _catalog(tmp_path, {**GOOD_ENTRY, **change}).items():
        monkeypatch.setenv(key, value)
    assert main(["models", "list"]) == 2
    _one_error(capsys.readouterr().err, "model catalog", "model 'm'", fragment)


@pytest.mark.parametrize("text, fragment", [
    ('{"models": ' + "[" * DEEP + "]" * DEEP + "}", "nested more than"),
    ('{"models": {"m": {"files": [{"size": ' + HUGE + "}]}}}", "of 400 digits"),
])
def test_a_catalog_nested_or_numbered_to_break_parsers_is_refused(tmp_path, capsys, monkeypatch, text, fragment):
    path = tmp_path / "catalog.json"
    path.write_text(text)
    monkeypatch.setenv("DIFFREG_CATALOG", str(path))
    assert main(["models", "list"]) == 2
    _one_error(capsys.readouterr().err, f"model catalog {path}", fragment)


def test_a_catalog_default_backbone_of_the_wrong_type_is_refused(tmp_path, monkeypatch):
    from DiffusionRegistrationLib.features.catalog import default_backbone_id

    for key, value in _catalog(tmp_path, GOOD_ENTRY, default_backbone=["m"]).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RegistrationError, match="default_backbone"):
        default_backbone_id()


@pytest.mark.parametrize("stamp", ["[1, 2]", '{"w.pt": "verified"}', "[" * DEEP + "]" * DEEP])
def test_a_crafted_stamp_counts_as_no_check(tmp_path, capsys, monkeypatch, stamp):
    for key, value in _catalog(tmp_path, GOOD_ENTRY).items():
        monkeypatch.setenv(key, value)
    folder = tmp_path / "cache" / "m"
    folder.mkdir(parents=True)
    (folder / "w.pt").write_bytes(b"\0" * 1000)
    (folder / ".diffreg-verified.json").write_text(stamp)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "not checked" in out.splitlines()[1]


@pytest.mark.parametrize("text, fragment", [('{"model_cache": 5}', '"model_cache" must be a text'),
                                            ("[1]", "must hold a JSON object"),
                                            ("[" * DEEP + "]" * DEEP, "nested more than")])
def test_a_malformed_settings_file_is_refused(tmp_path, capsys, monkeypatch, text, fragment):
    settings = tmp_path / "settings.json"
    settings.write_text(text)
    monkeypatch.delenv("DIFFREG_CACHE", raising=False)
    monkeypatch.setenv("DIFFREG_SETTINGS", str(settings))
    assert main(["models", "list"]) == 2
    _one_error(capsys.readouterr().err, f"settings file {settings}", fragment)


def test_a_download_stops_at_the_catalog_size(tmp_path):
    """The source never ends (/dev/zero); the download stops one byte past the catalog's 1000 bytes and
    keeps nothing. A 50 MB file-size limit turns the old unbounded write into a failure, not a full disk."""
    env = _catalog(tmp_path, GOOD_ENTRY)
    done = _child(["models", "download", "m", "--progress", "none"], env=env, timeout=120,
                  limits={resource.RLIMIT_FSIZE: 50 << 20})
    assert done.returncode == 2, done.stderr[-2000:]
    _one_error(done.stderr, "file:///dev/zero", "more than the catalog's 1,000 bytes")
    assert _contents(tmp_path / "cache" / "m") == set()


# --- messages ---------------------------------------------------------------------------------------------

WARNING_THEN_ERROR = """
import sys
import numpy as np
from DiffusionRegistrationLib.cli.main import main
from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.io import images

real = images.read_image

def warning_then_error(path, role="image", **kwargs):
    if role == "moving image":
        np.float32(0) / np.float32(0)  # RuntimeWarning: invalid value encountered
        raise RegistrationError(f"{role} {path}: unreadable for this test.")
    return real(path, role, **kwargs)

images.read_image = warning_then_error
sys.exit(main(sys.argv[1:]))
"""


def test_library_warnings_do_not_reach_the_console_above_the_error(data, tmp_path):
    """A numpy warning raised while a run fails (here: in reading the moving image) is not printed; a child
    process, because pytest records warnings itself."""
    out = tmp_path / "out"
    done = _child(_register(data, out), code=WARNING_THEN_ERROR, timeout=120)
    assert done.returncode == 2, done.stderr
    _one_error(done.stderr, "unreadable for this test")
    assert _contents(out) is None


def test_a_negative_fine_tuning_rate_given_to_the_api_is_refused(data):
    from DiffusionRegistrationLib.io.images import read_image
    from DiffusionRegistrationLib.network.inference import TrainedNetwork, register_with_network
    from DiffusionRegistrationLib.network.model import NetworkSpec, RegistrationNetwork

    spec = NetworkSpec(dim=2, size=(32, 32), stages=(2, 1), channels=(4, 4))
    network = TrainedNetwork(RegistrationNetwork(spec), spec, {"similarity": "mse"}, 0)
    fixed, moving = read_image(data["fixed"]), read_image(data["moving"])
    with pytest.raises(RegistrationError, match="setting finetune_lr=-0.001"):
        register_with_network(fixed, moving, network, finetune_steps=1, device="cpu", finetune_lr=-0.001)
