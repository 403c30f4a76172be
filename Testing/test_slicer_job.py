"""The Slicer job's settings and agreement map, on real MRML nodes (slicer-core) and a real image pair.

- The job writes job.json (a RegistrationConfig from RegistrationOptions.config()) and runs `diffreg register --config`;
  the same settings given as command-line flags give a bit-identical transform.
- The agreement map of a registered pair (Colin27 at 6 mm under a known smooth deformation) is higher
  inside the brain after registration than before, and loads as a volume on the fixed volume's grid.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML library from PyPI) is not installed")

from DiffusionRegistrationLib.cli.main import main as diffreg  # noqa: E402
from DiffusionRegistrationLib.engine.agreement import agreement_map  # noqa: E402
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement  # noqa: E402
from DiffusionRegistrationLib.core.image import Image  # noqa: E402
from DiffusionRegistrationLib.slicer import image_from_volume_node, volume_node_from_image  # noqa: E402
from DiffusionRegistrationLib.slicer import job as job_module  # noqa: E402
from DiffusionRegistrationLib.slicer.job import JOB_FILE, RegistrationJob  # noqa: E402
from DiffusionRegistrationLib.engine.options import RegistrationOptions  # noqa: E402

QUICK = {"threads": 1, "affine_iterations": (10, 5)}


@pytest.fixture(scope="module")
def deformed_pair(colin_small):
    field = random_smooth_displacement(colin_small.grid, max_mm=8.0, seed=1, smoothness_mm=25.0)
    return colin_small, Image(warp_with_displacement(colin_small, field).array, colin_small.grid)


def nodes(pair):
    scene = slicer.vtkMRMLScene()
    fixed, moving = pair
    return scene, volume_node_from_image(fixed, scene=scene, name="fixed"), \
        volume_node_from_image(moving, scene=scene, name="moving")


def test_job_json_gives_the_same_transform_as_the_flags(deformed_pair, tmp_path, monkeypatch):
    scene, fixed, moving = nodes(deformed_pair)
    options = RegistrationOptions(preset="fast", similarity="mse", steps=8, regularization=0.5, device="cpu", seed=3,
                                  overrides=QUICK)
    commands = []
    monkeypatch.setattr(job_module.ProcessRunner, "start", lambda runner: commands.append(runner.command) or runner)
    job = RegistrationJob(scene, fixed, moving, options, work_folder=str(tmp_path), warm=False).start().prepared()
    try:
        command = commands[0]
        assert command[command.index("--config") + 1] == str(job.folder / JOB_FILE)
        assert "--preset" not in command and "--similarity" not in command
        inputs = ["--fixed", str(job.folder / "fixed.nrrd"), "--moving", str(job.folder / "moving.nrrd"),
                  "--progress", "none", "--transform", "transform.nii.gz"]
        assert diffreg(["register", *inputs, "--output-dir", str(tmp_path / "json"),
                        "--config", str(job.folder / JOB_FILE)]) == 0
        assert diffreg(["register", *inputs, "--output-dir", str(tmp_path / "flags"), "--preset", "fast",
                        "--similarity", "mse", "--steps", "8", "--regularization", "0.5", "--device", "cpu",
                        "--seed", "3", "--set", "threads=1", "--set", "affine_iterations=[10,5]"]) == 0
    finally:
        job.cancel()
    by_json, by_flags = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / run / "transform.nii.gz")))
                         for run in ("json", "flags"))
    assert np.abs(by_flags).max() > 0.5  # it did register
    assert np.array_equal(by_json, by_flags)


def test_agreement_map_is_higher_after_registration_and_lies_on_the_fixed_grid(deformed_pair, tmp_path):
    scene, fixed_node, moving_node = nodes(deformed_pair)
    options = RegistrationOptions(preset="fast", similarity="lncc", steps=30, device="cpu", agreement=True,
                                  overrides=QUICK)
    result = RegistrationJob(scene, fixed_node, moving_node, options, work_folder=str(tmp_path)).start().wait()
    node = result.agreement
    assert node is not None and node.IsA("vtkMRMLScalarVolumeNode")
    assert node.GetImageData().GetDimensions() == fixed_node.GetImageData().GetDimensions()
    matrices = [vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()]
    node.GetIJKToRASMatrix(matrices[0])
    fixed_node.GetIJKToRASMatrix(matrices[1])
    assert np.allclose([[matrices[0].GetElement(i, j) for j in range(4)] for i in range(4)],
                       [[matrices[1].GetElement(i, j) for j in range(4)] for i in range(4)])
    assert node.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"

    fixed, moving = deformed_pair
    brain = fixed.array > 0.2 * fixed.array.max()
    after = image_from_volume_node(node).array[brain].mean()
    before = agreement_map(fixed, moving, {"similarity": "lncc"}).array[brain].mean()
    assert 1.0 - after < 0.7 * (1.0 - before), (before, after)  # disagreement inside the brain down by > 30%
    assert -1.0 <= image_from_volume_node(node).array.min() and image_from_volume_node(node).array.max() <= 1.0


def test_result_keeps_the_placement_the_users_linear_transform_gave(colin_small, tmp_path):
    """The moving volume lies 10 mm off and the user's linear transform puts it back: the registration sees it
    through that (initial) transform, and the result (which the session makes the volume's parent) must keep
    that placement."""
    grid = colin_small.grid
    moved = type(grid)(grid.size, grid.spacing, (grid.origin[0] + 10.0, *grid.origin[1:]), grid.direction)
    scene, fixed, moving = nodes((colin_small, Image(colin_small.array, moved)))
    user = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "manual alignment")
    to_parent = vtk.vtkMatrix4x4()
    to_parent.SetElement(0, 3, 10.0)  # RAS +10 = LPS -10: back onto the fixed volume
    user.SetMatrixTransformToParent(to_parent)
    moving.SetAndObserveTransformNodeID(user.GetID())
    options = RegistrationOptions(preset="fast", similarity="mse", steps=5, device="cpu", overrides=QUICK)
    result = RegistrationJob(scene, fixed, moving, options, initial_transform=user,
                             work_folder=str(tmp_path)).start().wait()
    assert moving.GetParentTransformNode() is user  # the job changes no existing node
    assert user.GetScene() is scene and user.GetMatrixTransformToParent().GetElement(0, 3) == 10.0  # untouched
    to_volume = vtk.vtkGeneralTransform()
    result.transform.GetTransformFromWorld(to_volume)
    ijk_to_ras = vtk.vtkMatrix4x4()
    fixed.GetIJKToRASMatrix(ijk_to_ras)
    world = np.array(ijk_to_ras.MultiplyPoint([*np.asarray(fixed.GetImageData().GetDimensions()) / 2, 1.0])[:3])
    local = np.array(to_volume.TransformPoint(*world))
    assert np.linalg.norm(local - (world - [10.0, 0.0, 0.0])) < 1.5, local - world
