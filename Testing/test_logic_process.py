"""The Slicer logic end to end on real MRML nodes: background backend process in, transform node out.

The pair is Colin27 (skull-stripped) at 8 mm and a copy deformed by a known smooth field. Success is
measured independently of the backend: the transform node is written by MRML's own storage node and
SimpleITK resamples the moving volume with it (MSE against the fixed volume), and known landmark pairs
are mapped through it (target registration error).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML library from PyPI) is not installed")

import fake_slicer_app  # noqa: E402
from DiffusionRegistrationLib.io.data import COLIN_BET, data_root  # noqa: E402
from DiffusionRegistrationLib.core.image import Image  # noqa: E402
from DiffusionRegistrationLib.engine.options import RegistrationOptions  # noqa: E402
from DiffusionRegistrationLib.slicer import image_from_volume_node, volume_node_from_image  # noqa: E402
from DiffusionRegistrationLib.slicer.process_runner import Finished  # noqa: E402
from DiffusionRegistrationLib.progress import Progress  # noqa: E402

SPACING = 8.0
# small and quick: few steps, one torch thread (torch's thread pool thrashes on a shared 2-core machine)
EXTRA = {"affine_iterations": (30, 10), "threads": 1}
FAST = RegistrationOptions(preset="fast", similarity="mse", device="cpu", steps=30, seed=0, overrides=EXTRA)


def source_path() -> Path:
    path = data_root() / COLIN_BET
    if not path.is_file():
        pytest.skip(f"{path} is missing: run `bash scripts/setup.sh` to fetch the test data")
    return path


def known_deformation(fixed: sitk.Image) -> np.ndarray:
    """w(y) in LPS mm on the fixed grid: the moving image is M(y) = F(y + w(y))."""
    size = fixed.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(size)], indexing="ij"), -1)[..., ::-1]
    points = index * np.asarray(fixed.GetSpacing()) @ np.asarray(fixed.GetDirection()).reshape(3, 3).T \
        + np.asarray(fixed.GetOrigin())
    centre = points.reshape(-1, 3).mean(0)
    field = np.zeros(points.shape)
    field[..., 0] = 6.0 + 3.0 * np.sin((points[..., 1] - centre[1]) / 25.0)
    field[..., 1] = -5.0 + 2.0 * np.cos((points[..., 2] - centre[2]) / 30.0)
    field[..., 2] = 4.0
    return field


@pytest.fixture(scope="module")
def pair():
    original = sitk.ReadImage(str(source_path()), sitk.sitkFloat32)
    size = [int(round(s * sp / SPACING)) for s, sp in zip(original.GetSize(), original.GetSpacing())]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing([SPACING] * 3)
    reference.SetOrigin(original.GetOrigin())
    reference.SetDirection(original.GetDirection())
    fixed = sitk.Resample(sitk.SmoothingRecursiveGaussian(original, SPACING / 2), reference, sitk.Transform(),
                          sitk.sitkLinear, 0.0)
    field = known_deformation(fixed)
    field_image = sitk.GetImageFromArray(field, isVector=True)
    field_image.CopyInformation(fixed)
    moving = sitk.Resample(fixed, fixed, sitk.DisplacementFieldTransform(field_image), sitk.sitkLinear, 0.0)
    return fixed, moving, field


def nodes_for(scene, pair):
    fixed, moving, _ = pair
    return (volume_node_from_image(Image.from_sitk(fixed), scene=scene, name="fixed"),
            volume_node_from_image(Image.from_sitk(moving), scene=scene, name="moving"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_process_registers_and_the_transform_overlays_moving_on_fixed(monkeypatch, tmp_path, pair):
    scene = slicer.vtkMRMLScene()
    module = fake_slicer_app.import_module_file(monkeypatch, scene)
    fixed_node, moving_node = nodes_for(scene, pair)
    warped_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    events = []
    before_nodes = scene.GetNumberOfNodes()
    result = module.DiffusionRegistrationLogic().process(fixed_node, moving_node, FAST, outputVolume=warped_node,
                                                         progress=events.append)
    assert any(isinstance(e, Progress) for e in events) and isinstance(events[-1], Finished)
    transform = result.transform
    assert transform.IsA("vtkMRMLGridTransformNode")
    assert moving_node.GetTransformNodeID() == transform.GetID()
    assert transform.GetNodeReference("Fixed") is fixed_node and transform.GetNodeReference("Moving") is moving_node
    assert scene.GetNumberOfNodes() > before_nodes

    # independent check 1: MRML writes the transform, SimpleITK resamples the moving volume with it
    storage = transform.GetStorageNode()
    storage.SetFileName(str(tmp_path / "written_by_mrml.h5"))
    assert storage.WriteData(transform)
    written = sitk.ReadTransform(str(tmp_path / "written_by_mrml.h5"))
    fixed, moving, field = pair
    resampled = sitk.Resample(moving, fixed, written, sitk.sitkLinear, 0.0)
    f, m, r = (sitk.GetArrayFromImage(i) for i in (fixed, moving, resampled))
    brain = f > 0.2 * f.max()
    mse_before, mse_after = float(np.mean((m - f)[brain] ** 2)), float(np.mean((r - f)[brain] ** 2))
    print(f"MSE in the brain before {mse_before:.1f}, after {mse_after:.1f}")
    assert mse_after < 0.5 * mse_before

    # independent check 2: landmarks. Moving point y corresponds to fixed point y + w(y).
    index = np.argwhere(brain)[::7]
    fixed_grid = Image.from_sitk(fixed).grid
    ys = np.array([fixed.TransformIndexToPhysicalPoint([int(i) for i in ijk[::-1]]) for ijk in index])
    xs = ys + field[tuple(index.T)]
    inside = [k for k, x in enumerate(xs) if all(0 <= c <= s - 1 for c, s in zip(
        fixed.TransformPhysicalPointToContinuousIndex(x.tolist()), fixed_grid.size))]
    mapped = np.array([written.TransformPoint(xs[k].tolist()) for k in inside])
    tre_before = np.linalg.norm(xs[inside] - ys[inside], axis=1).mean()
    tre_after = np.linalg.norm(mapped - ys[inside], axis=1).mean()
    print(f"landmark error over {len(inside)} points: before {tre_before:.2f} mm, after {tre_after:.2f} mm")
    assert tre_after < 0.5 * tre_before

    # the warped output and the checkerboard lie on the fixed grid
    assert image_from_volume_node(warped_node).grid.same_as(image_from_volume_node(fixed_node).grid, 1e-3)
    assert image_from_volume_node(result.checkerboard).grid.same_as(image_from_volume_node(fixed_node).grid, 1e-3)

    # Apply again: the moving volume, now under this result, is registered without it (no error)
    again = module.DiffusionRegistrationLogic().start(fixed_node, moving_node, FAST).prepared()
    written_moving = sitk.ReadImage(str(again.folder / "moving.nrrd"))
    np.testing.assert_allclose(written_moving.GetOrigin(), moving.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(written_moving), sitk.GetArrayFromImage(moving), atol=1e-5)
    again.cancel()


def test_cancelled_run_leaves_no_nodes_files_or_process(monkeypatch, tmp_path, pair):
    scene = slicer.vtkMRMLScene()
    module = fake_slicer_app.import_module_file(monkeypatch, scene)
    fixed_node, moving_node = nodes_for(scene, pair)
    node_ids = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    monkeypatch.setattr(slicer.app, "temporaryPath", str(tmp_path))  # Slicer's temporary folder: the job's goes here
    job = module.DiffusionRegistrationLogic().start(fixed_node, moving_node, FAST).prepared()
    folder = job.folder
    assert folder.parent == tmp_path and (folder / "fixed.nrrd").is_file()
    deadline = time.monotonic() + 60
    while not any(isinstance(e, Progress) for e in job.poll()):  # the backend is really running
        assert job.running and time.monotonic() < deadline
        time.sleep(0.05)
    pid = job.runner.pid
    job.cancel()  # returns at once; the process is ended in the background
    assert job.stopped(timeout=30)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert not folder.exists() and list(tmp_path.iterdir()) == []
    assert {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())} == node_ids
    assert moving_node.GetTransformNodeID() is None


def test_backend_error_becomes_a_registration_error_and_leaves_nothing(monkeypatch, tmp_path, pair):
    from DiffusionRegistrationLib.errors import RegistrationError
    scene = slicer.vtkMRMLScene()
    module = fake_slicer_app.import_module_file(monkeypatch, scene)
    fixed_node, moving_node = nodes_for(scene, pair)
    count = scene.GetNumberOfNodes()
    monkeypatch.setattr(slicer.app, "temporaryPath", str(tmp_path))
    with pytest.raises(RegistrationError, match="setting preset=sharpest: is not a known choice"):
        module.DiffusionRegistrationLogic().process(fixed_node, moving_node,
                                                        RegistrationOptions(preset="sharpest", device="cpu"))
    assert scene.GetNumberOfNodes() == count and list(tmp_path.iterdir()) == []


def test_mask_on_another_grid_is_refused_before_anything_runs(monkeypatch, tmp_path, pair):
    from DiffusionRegistrationLib.errors import RegistrationError
    scene = slicer.vtkMRMLScene()
    module = fake_slicer_app.import_module_file(monkeypatch, scene)
    fixed_node, moving_node = nodes_for(scene, pair)
    coarse = Image.from_sitk(pair[0]).grid.scaled(5.0)
    small = Image(np.ones(coarse.shape, np.uint8), coarse)
    mask = volume_node_from_image(small, scene=scene, name="brain mask")
    monkeypatch.setattr(slicer.app, "temporaryPath", str(tmp_path))
    with pytest.raises(RegistrationError, match="fixed mask 'brain mask': lies on another voxel grid"):
        module.DiffusionRegistrationLogic().process(fixed_node, moving_node, FAST, fixedMask=mask)
    assert list(tmp_path.iterdir()) == []


def test_a_mask_on_the_moving_grid_is_taken_wherever_the_volume_is_placed(monkeypatch, tmp_path, pair):
    """A moving mask drawn on the moving volume's voxels follows the volume: under the user's linear transform
    while the mask has none (once refused as 'another voxel grid'), and on a re-run with both under the
    previous result (once refused with 'harden the transform')."""
    scene = slicer.vtkMRMLScene()
    module = fake_slicer_app.import_module_file(monkeypatch, scene)
    fixed_node, moving_node = nodes_for(scene, pair)
    moving = Image.from_sitk(pair[1])
    mask = volume_node_from_image(moving.with_array((moving.array > 0.2 * moving.array.max()).astype(np.uint8)),
                                  scene=scene, name="brain mask")
    user = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "manual alignment")
    import vtk
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(1, 3, 5.0)
    user.SetMatrixTransformToParent(shift)
    moving_node.SetAndObserveTransformNodeID(user.GetID())
    logic = module.DiffusionRegistrationLogic()
    monkeypatch.setattr(slicer.app, "temporaryPath", str(tmp_path))

    def written_grids(job):
        job.prepared()
        grids = [Image.from_sitk(sitk.ReadImage(str(job.folder / name))).grid for name in
                 ("moving.nrrd", "moving_mask.nrrd")]
        logic.cancel(job)
        return grids

    moving_grid, mask_grid = written_grids(logic.start(fixed_node, moving_node, FAST, movingMask=mask))
    assert mask_grid.same_as(moving_grid, 1e-4)
    np.testing.assert_allclose(moving_grid.origin[1], moving.grid.origin[1] - 5.0, atol=1e-4)  # RAS +5 = LPS -5
    result = logic.process(fixed_node, moving_node, FAST)
    mask.SetAndObserveTransformNodeID(result.transform.GetID())  # the user put the mask under the result too
    moving_grid, mask_grid = written_grids(logic.start(fixed_node, moving_node, FAST, movingMask=mask))
    assert mask_grid.same_as(moving_grid, 1e-4)
