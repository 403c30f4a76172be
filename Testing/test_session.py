"""The GUI-free review session (slicer/session.py) in real workflows, on real MRML (slicer-core) and the real
backend in its background process.

Volumes are small blob images shifted by known amounts, so what a run did is checked against the known
shift, not against the code's own numbers. Each run takes a few seconds (process start and torch import).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import vtk

slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML library from PyPI) is not installed")

from blob_volumes import GRID, blobs  # noqa: E402
from DiffusionRegistrationLib.core.image import Grid, Image  # noqa: E402
from DiffusionRegistrationLib.errors import RegistrationError  # noqa: E402
from DiffusionRegistrationLib.slicer import (displacement_from_grid_transform, image_from_volume_node,  # noqa: E402
                                             load_scene, volume_node_from_image)
from DiffusionRegistrationLib.engine.options import RegistrationOptions  # noqa: E402
from DiffusionRegistrationLib.slicer.session import ReviewSession, Run  # noqa: E402

QUICK = RegistrationOptions(preset="fast", similarity="mse", device="cpu", steps=15, seed=0,
                            overrides={"threads": 1, "affine_iterations": (15, 5)})
@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def volume(scene, name, shift=(0.0, 0.0, 0.0)):
    return volume_node_from_image(Image(blobs(shift), GRID), scene=scene, name=name)


def field(transform) -> np.ndarray:
    return displacement_from_grid_transform(transform)[0]


def mean_displacement_mm(run: Run) -> np.ndarray:
    """The run's fixed->moving displacement (LPS) averaged over the fixed volume's brightest voxels."""
    fixed = image_from_volume_node(run.fixed).array
    return field(run.transform)[fixed > 0.3 * fixed.max()].mean(0)


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_two_pairs_onto_one_fixed_volume_keep_the_first_result(scene):
    fixed, a, b = volume(scene, "F"), volume(scene, "A", (2, 0, 0)), volume(scene, "B", (0, -2, 0))
    session = ReviewSession(scene)
    session.set_inputs(fixed=fixed, moving=a)
    session.start(QUICK)
    first = session.wait()
    field_a = field(first.transform).copy()
    session.set_inputs(moving=b)
    session.start(QUICK)
    second = session.wait()

    assert second.transform is not first.transform and {n.GetID() for n in first.nodes()}.isdisjoint(
        {n.GetID() for n in second.nodes()})
    np.testing.assert_array_equal(field(first.transform), field_a)  # the first result is unchanged
    assert a.GetParentTransformNode() is first.transform and b.GetParentTransformNode() is second.transform
    assert (first.moving, second.moving) == (a, b) and first.fixed is second.fixed is fixed
    # each field is the known shift of its own pair: A moved +2 voxels (6 mm) along x (LPS: R->L), B along y
    np.testing.assert_allclose(mean_displacement_mm(first), [6.0, 0.0, 0.0], atol=1.5)
    np.testing.assert_allclose(mean_displacement_mm(second), [0.0, -6.0, 0.0], atol=1.5)
    assert session.runs == [first, second]


def test_the_users_linear_transform_is_kept_and_restored(scene):
    """The moving volume lies 9 mm off; the user's linear transform puts it roughly back. The run starts from it,
    the result places the volume, 'before' and a re-run go back to the user's transform, which is never changed."""
    fixed, moving = volume(scene, "F"), volume(scene, "M", (3, 0, 0))
    user = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "manual alignment")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 7.5)  # RAS +7.5 mm = LPS -7.5 mm along x: most of the 9 mm back
    user.SetMatrixTransformToParent(matrix)
    moving.SetAndObserveTransformNodeID(user.GetID())
    session = ReviewSession(scene)
    session.set_inputs(fixed=fixed, moving=moving)
    assert session.initial_transform is user
    session.start(QUICK)
    run = session.wait()
    assert run.initial_transform is user and moving.GetParentTransformNode() is run.transform
    # the result alone maps fixed points to the moving volume's own frame: the whole 9 mm
    np.testing.assert_allclose(mean_displacement_mm(run), [9.0, 0.0, 0.0], atol=1.5)
    session.show("moving", after=False)
    assert moving.GetParentTransformNode() is user
    session.show("checkerboard", after=True)
    assert moving.GetParentTransformNode() is run.transform
    session.set_inputs(moving=moving)  # re-run: the default initial transform is the user's again
    assert session.initial_transform is user
    session.start(QUICK)
    again = session.wait()
    assert again.initial_transform is user and again.transform is not run.transform
    assert user.GetMatrixTransformToParent().GetElement(0, 3) == 7.5


def test_an_input_as_output_is_refused(scene):
    fixed, moving = volume(scene, "F"), volume(scene, "M", (1, 0, 0))
    mask = volume_node_from_image(Image((blobs() > 5).astype(np.uint8), GRID), scene=scene, name="mask")
    session = ReviewSession(scene)
    session.set_inputs(fixed=fixed, moving=moving, fixed_mask=mask)
    before = image_from_volume_node(moving).array.copy()
    for output in (fixed, moving, mask):
        with pytest.raises(RegistrationError, match="output volume is the"):
            session.start(QUICK, output_volume=output)
    np.testing.assert_array_equal(image_from_volume_node(moving).array, before)
    assert session.job is None


def write_failing_backend(folder: Path) -> str:
    """A 'Python' that prints the backend's error line and exits 2, as diffreg does on bad input."""
    script = folder / "failing-python"
    script.write_text("#!/bin/sh\necho 'error: moving image: every voxel is 0' >&2\nexit 2\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.mark.skipif(os.name == "nt", reason="the failing backend is a shell script")
def test_a_failed_run_changes_nothing_even_with_outputs_chosen(scene, tmp_path):
    fixed, moving = volume(scene, "F"), volume(scene, "M", (1, 0, 0))
    session = ReviewSession(scene)
    session.set_inputs(fixed=fixed, moving=moving)
    session.start(QUICK)
    earlier = session.wait()
    saved_field = field(earlier.transform).copy()
    warped_before = image_from_volume_node(earlier.warped).array.copy()
    ids = node_ids(scene)
    session.python, session.warm = write_failing_backend(tmp_path), False  # a process of its own
    question = session.overwrite_question(earlier.transform, earlier.warped)
    assert "'M'" in question and earlier.transform.GetName() in question  # names the volume that uses it
    with pytest.raises(RegistrationError, match="Overwrite|confirm"):
        session.start(QUICK, output_transform=earlier.transform)
    session.start(QUICK, output_transform=earlier.transform, output_volume=earlier.warped, overwrite=True)
    with pytest.raises(RegistrationError, match="every voxel is 0"):
        session.wait()
    assert node_ids(scene) == ids
    np.testing.assert_array_equal(field(earlier.transform), saved_field)
    np.testing.assert_array_equal(image_from_volume_node(earlier.warped).array, warped_before)
    assert moving.GetParentTransformNode() is earlier.transform and session.runs == [earlier]


def test_a_node_removed_during_the_run_is_reported_and_nothing_is_added(scene):
    fixed, moving = volume(scene, "F"), volume(scene, "M", (1, 0, 0))
    session = ReviewSession(scene)
    session.set_inputs(fixed=fixed, moving=moving)
    session.start(QUICK)
    scene.RemoveNode(moving)
    ids = node_ids(scene)
    with pytest.raises(RegistrationError, match="'M' was removed from the scene during the run"):
        session.wait()
    assert node_ids(scene) == ids and session.runs == [] and session.job is None


def test_closing_the_scene_during_the_run_adds_nothing(scene, tmp_path):
    session = ReviewSession(scene, work_folder=str(tmp_path))
    session.set_inputs(fixed=volume(scene, "F"), moving=volume(scene, "M", (1, 0, 0)))
    session.start(QUICK)
    scene.Clear(0)
    with pytest.raises(RegistrationError, match="was removed from the scene during the run"):
        session.wait()
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 0 and session.runs == []
    assert list(tmp_path.iterdir()) == []


def test_close_cancels_at_once_and_the_process_ends_in_the_background(scene, tmp_path):
    session = ReviewSession(scene, work_folder=str(tmp_path))
    session.set_inputs(fixed=volume(scene, "F"), moving=volume(scene, "M", (1, 0, 0)))
    job = session.start(QUICK)
    session.close()
    assert session.job is None
    assert job.stopped(timeout=30)
    assert list(tmp_path.iterdir()) == [] and (job.runner is None or not job.runner.running)


def test_the_runs_come_back_from_a_saved_bundle(scene, tmp_path):
    session = ReviewSession(scene)
    session.set_inputs(fixed=volume(scene, "F"), moving=volume(scene, "M", (2, 0, 0)))
    session.start(QUICK)
    run = session.wait()
    run.set_review(True, "good on the ventricles")
    saved_field = field(run.transform).copy()
    loaded = load_scene(session.save(tmp_path / "review.mrb"))
    again = ReviewSession(loaded)
    assert [r.number for r in again.runs] == [1]
    back = again.runs[0]
    assert back.moving.GetName() == "M" and back.fixed.GetName() == "F" and again.moving is back.moving
    assert back.report["review"] == {"accepted": True, "comment": "good on the ventricles"}
    assert back.checkerboard is not None and back.checkerboard_before is not None and back.jacobian is not None
    np.testing.assert_allclose(field(back.transform), saved_field, atol=1e-4)


def test_a_coronal_slice_is_registered_in_its_own_plane(scene):
    """One-slice coronal volumes (a scout): the field must lie in the coronal plane (no A-P component) and
    equal the known in-plane shift; the backend alone would place it as if the slice were axial."""
    plane = Grid((24, 20, 1), (3.0, 3.0, 3.0), (-36.0, 5.0, 30.0),
                 (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))  # columns: i -> L, j -> -S, k -> P
    ys, xs = np.meshgrid(np.arange(20, dtype=np.float32), np.arange(24, dtype=np.float32), indexing="ij")

    def slice_blobs(dx, dy):
        value = np.zeros((20, 24), np.float32)
        for cx, cy, r in ((8, 7, 3), (15, 12, 4), (12, 15, 2.5)):
            value += np.exp(-((xs - cx - dx) ** 2 + (ys - cy - dy) ** 2) / (2 * r * r))
        return (100 * value)[None]

    fixed = volume_node_from_image(Image(slice_blobs(0, 0), plane), scene=scene, name="F")
    moving = volume_node_from_image(Image(slice_blobs(2, 0), plane), scene=scene, name="M")
    session = ReviewSession(scene)
    session.set_inputs(fixed=fixed, moving=moving)
    session.start(QUICK)
    run = session.wait()
    displacement, grid = displacement_from_grid_transform(run.transform)
    assert grid.same_as(plane, 1e-3)
    bright = slice_blobs(0, 0)[0] > 30
    mean = displacement.reshape(20, 24, 3)[bright].mean(0)
    # moving = fixed shifted +2 voxels along i (LPS +x): the fixed->moving field is +6 mm in x, 0 in y (A-P)
    np.testing.assert_allclose(mean, [6.0, 0.0, 0.0], atol=1.5)
    assert np.abs(displacement[..., 1]).max() < 1e-4  # nothing out of the coronal plane
    assert image_from_volume_node(run.warped).grid.same_as(plane, 1e-3)


def test_a_segmentation_is_a_mask_on_its_volumes_voxels(scene, tmp_path):
    """A segmentation as the moving mask gives the same mask file as the label map it was made from."""
    import SimpleITK as sitk
    from slicer import vtkSlicerSegmentationsModuleLogic

    fixed, moving = volume(scene, "F"), volume(scene, "M", (1, 0, 0))
    inside = (blobs((1, 0, 0)) > 30).astype(np.uint8)
    labels = volume_node_from_image(Image(inside, GRID), scene=scene, name="brain labels",
                                    class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain")
    assert vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    ids = node_ids(scene)
    session = ReviewSession(scene, work_folder=str(tmp_path))
    session.set_inputs(fixed=fixed, moving=moving, moving_mask=segmentation)
    job = session.start(QUICK).prepared()
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(job.folder / "moving_mask.nrrd")))
    session.cancel()
    np.testing.assert_array_equal(written > 0, inside > 0)
    # the label map the export needed is gone again (the subject hierarchy it made is the scene's, as in Slicer)
    assert {i for i in node_ids(scene) if not i.startswith("vtkMRMLSubjectHierarchyNode")} == ids


def test_a_refilled_transform_keeps_no_reference_to_the_earlier_agreement_map(scene):
    """Run 1 with an agreement map; run 2 refills run 1's transform (confirmed) without one: the transform must
    not point at run 1's map any more (the job once left that reference, and the next review showed it)."""
    from dataclasses import replace

    session = ReviewSession(scene)
    session.set_inputs(fixed=volume(scene, "F"), moving=volume(scene, "M", (2, 0, 0)))
    session.start(replace(QUICK, agreement=True))
    first = session.wait()
    assert first.agreement is not None
    session.start(QUICK, output_transform=first.transform, overwrite=True)
    second = session.wait()
    assert second.transform is first.transform and second.agreement is None
    assert first.transform.GetNodeReference("Agreement") is None
