"""The diffusion similarity end to end from the command line, with a small ADM checkpoint the test saves.

Random weights make the features meaningless, so these tests check the plumbing users rely on: the
checkpoint is loaded through the users' code path, both modes run in 2D and 3D on real images, and the
outputs are the same files, honouring the same transform contract, as with intensity similarities.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffusionRegistrationLib.cli.main import main
from DiffusionRegistrationLib.features.adm import ADM_SMALL_FLAGS, build_adm, random_init_
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "adm_small.pt"
    torch.save(random_init_(build_adm(ADM_SMALL_FLAGS, "cpu"), seed=7).state_dict(), path)
    return path


def _run(tmp_path, fixed, moving, similarity_params, extra=()):
    out = tmp_path / "out"
    code = main(["register", "--fixed", fixed, "--moving", moving, "--output-dir", str(out), "--progress", "none",
                 "--similarity", "diffusion", "--set", f"similarity_params={json.dumps(similarity_params)}",
                 "--set", "affine=false", "--set", "levels=[1]", "--set", "iterations=[3]", *extra])
    return code, out


@pytest.mark.parametrize("dim, mode", [(2, "exact"), (2, "fast"), (3, "exact"), (3, "fast")])
def test_diffusion_registration_runs_from_the_command_line_and_writes_the_usual_outputs(
        tmp_path, small_checkpoint, t1_slice, colin_small, write_image_file, dim, mode):
    image = t1_slice if dim == 2 else colin_small
    truth = random_smooth_displacement(image.grid, max_mm=6.0, seed=2, smoothness_mm=30.0)
    fixed = write_image_file(warp_with_displacement(image, truth), tmp_path / "fixed.nii.gz")
    moving = write_image_file(image, tmp_path / "moving.nii.gz")
    spec = {"backbone": "adm", "checkpoint": str(small_checkpoint), "flags": ADM_SMALL_FLAGS}
    params = {"extractor": spec, "mode": mode, "cache_dir": str(tmp_path / "features")}
    if dim == 3 and mode == "fast":
        params["slice_stride"] = 6
    code, out = _run(tmp_path, fixed, moving, params)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["similarity"] == "diffusion"
    assert [h["steps"] for h in report["history"] if h["stage"] == "deformable"] == [3]
    expected = {"transform.h5", "warped.nii.gz", "jacobian.nii.gz", "checkerboard.png", "report.json"}
    assert {p.name for p in out.iterdir()} == expected
    # the written transform, applied by SimpleITK, reproduces the written warped image
    reference = sitk.ReadImage(fixed)
    resampled = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(moving, sitk.sitkFloat32), reference,
                                                     sitk.ReadTransform(str(out / "transform.h5")),
                                                     sitk.sitkLinear, 0.0))
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    interior = tuple(slice(2, -2) for _ in range(dim))
    assert np.abs(resampled - warped)[interior].max() < 1e-3 * np.abs(warped).max()


def test_missing_checkpoint_is_a_clear_error_and_nothing_is_written(tmp_path, t1_slice, write_image_file, capsys):
    path = write_image_file(t1_slice, tmp_path / "image.nii.gz")
    missing = tmp_path / "nowhere" / "adm.pt"
    code, out = _run(tmp_path, path, path, {"extractor": {"backbone": "adm", "checkpoint": str(missing)}})
    assert code == 2 and str(missing) in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []
