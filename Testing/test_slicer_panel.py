"""The Slicer panel in real use, on real Qt (PySide6 through pythonqt_shim) and real MRML (slicer-core), with the
real backend in its background process: the buttons are clicked, Qt's timer polls the run, and what lands in
the scene is checked against known shifts of small blob volumes.
"""
from __future__ import annotations

import stat
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import vtk

slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML library from PyPI) is not installed")

import fake_slicer_app  # noqa: E402
from pythonqt_shim import APPLICATION  # noqa: E402
from blob_volumes import GRID, blobs  # noqa: E402

from DiffusionRegistrationLib.core.image import Image  # noqa: E402
from DiffusionRegistrationLib.slicer import (displacement_from_grid_transform, image_from_volume_node,  # noqa: E402
                                             volume_node_from_image)

QUICK = dict(preset="fast", similarity="mse", device="cpu", steps=15)
OPEN = []


@pytest.fixture(autouse=True)
def close_panels():
    yield
    while OPEN:
        OPEN.pop().cleanup()


@pytest.fixture()
def panel(monkeypatch):
    """A 5.10 panel on a new scene, a PyTorchUtils that has torch, quick settings; the user answers 'OK'."""
    dialogs = {}
    module = fake_slicer_app.import_module_file(monkeypatch, slicer.vtkMRMLScene(), dialogs=dialogs)
    torch_utils = types.ModuleType("PyTorchUtils")
    torch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(torchInstalled=lambda: True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torch_utils)
    original = module.DiffusionRegistrationLogic.parameterOptions

    def quick(node):
        options = original(node)
        options.overrides = {"threads": 1, "affine_iterations": (15, 5)}
        return options

    monkeypatch.setattr(module.DiffusionRegistrationLogic, "parameterOptions", staticmethod(quick))
    widget = module.DiffusionRegistrationWidget()
    widget.setup()
    widget.parent.isEntered = True
    OPEN.append(widget)
    for name, value in QUICK.items():
        setattr(widget._parameterNode, name, value)
    return module, widget, dialogs


def volume(name, shift=(0.0, 0.0, 0.0)):
    return volume_node_from_image(Image(blobs(shift), GRID), scene=slicer.mrmlScene, name=name)


def apply_and_wait(widget, timeout: float = 120.0) -> None:
    """Clicks Apply and waits for the end of the run."""
    widget.ui.applyButton.click()
    wait_for_the_run(widget, timeout)


def wait_for_the_run(widget, timeout: float = 120.0) -> None:
    """Lets Qt's event loop run (the panel's QTimer polls the job) until the run ended."""
    deadline = time.monotonic() + timeout
    while widget._job is not None:
        assert time.monotonic() < deadline, "the run did not end"
        APPLICATION.processEvents()
        time.sleep(0.02)


def field(transform) -> np.ndarray:
    return displacement_from_grid_transform(transform)[0]


def node_ids() -> set:
    scene = slicer.mrmlScene
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_a_second_pair_leaves_the_first_result_unchanged(panel):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    fixed, a, b = volume("F"), volume("A", (2, 0, 0)), volume("B", (0, -2, 0))
    parameters.fixed, parameters.moving = fixed, a
    apply_and_wait(widget)
    first = a.GetParentTransformNode()
    assert first is not None, widget.ui.statusLabel.text
    first_field = field(first).copy()
    parameters.moving = b
    apply_and_wait(widget)
    second = b.GetParentTransformNode()
    assert second is not None and second is not first
    assert a.GetParentTransformNode() is first  # A still sits under its own result ...
    np.testing.assert_array_equal(field(first), first_field)  # ... which is unchanged
    assert parameters.outputTransform is None  # the next run makes a new transform again


def test_the_users_transform_is_the_initial_transform_and_comes_back(panel):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    fixed, moving = volume("F"), volume("M", (3, 0, 0))
    user = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "manual alignment")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 7.5)
    user.SetMatrixTransformToParent(matrix)
    moving.SetAndObserveTransformNodeID(user.GetID())
    parameters.fixed, parameters.moving = fixed, moving
    assert parameters.initialTransform is user and widget.ui.initialTransformSelector.currentNode() is user
    apply_and_wait(widget)
    result = moving.GetParentTransformNode()
    assert result is not user and result.GetNodeReference("InitialTransform") is user
    widget.ui.beforeAfterButton.click()  # "before": the user's placement
    assert moving.GetParentTransformNode() is user
    widget.ui.beforeAfterButton.click()
    assert moving.GetParentTransformNode() is result
    apply_and_wait(widget)  # a re-run starts from the user's transform again, not from the result
    again = moving.GetParentTransformNode()
    assert again is not result and again.GetNodeReference("InitialTransform") is user
    assert user.GetMatrixTransformToParent().GetElement(0, 3) == 7.5


def test_an_input_cannot_be_the_output_volume(panel):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = volume("F"), volume("M", (1, 0, 0))
    before = image_from_volume_node(parameters.moving).array.copy()
    parameters.outputVolume = parameters.moving
    assert not widget.ui.applyButton.enabled and "'M'" in widget.ui.applyButton.toolTip
    widget.onApplyButton()  # even when called directly, nothing runs
    assert widget._job is None
    np.testing.assert_array_equal(image_from_volume_node(parameters.moving).array, before)


def first_run(widget):
    """Registers M (2 voxels off) onto F through the panel: (M, its result transform, that field)."""
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = volume("F"), volume("M", (2, 0, 0))
    apply_and_wait(widget)
    earlier = parameters.moving.GetParentTransformNode()
    return parameters.moving, earlier, field(earlier).copy()


def test_a_chosen_output_transform_in_use_is_overwritten_only_after_a_confirmation(panel):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    moving, earlier, saved = first_run(widget)
    parameters.outputTransform = earlier
    dialogs["confirm"] = False
    ids = node_ids()
    widget.ui.applyButton.click()
    assert widget._job is None and node_ids() == ids
    assert "'M'" in dialogs["shown"][-1] and earlier.GetName() in dialogs["shown"][-1]
    np.testing.assert_array_equal(field(earlier), saved)
    dialogs["confirm"] = True
    parameters.moving = volume("N", (0, 2, 0))
    apply_and_wait(widget)
    assert parameters.moving.GetParentTransformNode() is earlier  # refilled, as confirmed
    assert np.abs(field(earlier) - saved).max() > 1.0


def write_backend_without_warped(folder: Path) -> str:
    """A 'Python' that runs the real backend, then deletes the warped output: the run fails while importing."""
    script = folder / "python-without-warped"
    script.write_text(f"#!{sys.executable}\n"
                      "import pathlib, subprocess, sys\n"
                      "code = subprocess.call([sys.executable, *sys.argv[1:]])\n"
                      "output = pathlib.Path(sys.argv[sys.argv.index('--output-dir') + 1])\n"
                      "(output / 'warped.nii.gz').unlink(missing_ok=True)\n"
                      "sys.exit(code)\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_a_run_failing_while_importing_leaves_the_chosen_output_as_it_was(panel, monkeypatch, tmp_path):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    moving, earlier, saved = first_run(widget)
    ids = node_ids()
    monkeypatch.setattr(module.DiffusionRegistrationLogic, "pythonExecutable",
                        staticmethod(lambda: write_backend_without_warped(tmp_path)))
    widget.logic._session = None  # the next session runs the backend through that Python, as a process of its own
    widget.logic.session().warm = False
    parameters.outputTransform = earlier  # confirmed (the user answers OK) for another pair: another field
    other = volume("N", (0, 2, 0))
    parameters.moving = other
    ids.update(node_ids() - ids)
    apply_and_wait(widget)
    assert "warped" in widget.ui.statusLabel.text.lower() or any("warped" in m for m in dialogs["shown"])
    np.testing.assert_array_equal(field(earlier), saved)
    assert node_ids() == ids and moving.GetParentTransformNode() is earlier and other.GetParentTransformNode() is None


def test_a_volume_deleted_during_the_run_is_reported_and_nothing_is_added(panel):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = volume("F"), volume("M", (1, 0, 0))
    moving = parameters.moving
    widget.ui.applyButton.click()
    slicer.mrmlScene.RemoveNode(moving)
    ids = node_ids()
    wait_for_the_run(widget)
    assert node_ids() == ids
    assert "'M' was removed from the scene during the run" in widget.ui.statusLabel.text


def test_closing_the_scene_during_a_run_cancels_it(panel):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = volume("F"), volume("M", (1, 0, 0))
    widget.ui.applyButton.click()
    job = widget._job
    slicer.mrmlScene.Clear(0)
    assert widget._job is None and widget.ui.applyButton.text == "Apply"
    assert job.stopped(timeout=30)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == 0


def test_leaving_and_entering_the_module_during_a_run_keeps_the_run(panel):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = volume("F"), volume("M", (2, 0, 0))
    widget.ui.applyButton.click()
    widget.exit()
    widget.parent.isEntered = False
    APPLICATION.processEvents()
    widget.parent.isEntered = True
    widget.enter()
    wait_for_the_run(widget)
    assert parameters.moving.GetParentTransformNode() is not None, widget.ui.statusLabel.text
    assert widget.ui.applyButton.text == "Apply" and widget.ui.applyButton.enabled


def test_cancel_gives_the_panel_back_at_once(panel):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = volume("F"), volume("M", (1, 0, 0))
    ids = node_ids()
    widget.ui.applyButton.click()
    job = widget._job
    widget.ui.applyButton.click()  # Cancel
    assert widget._job is None and widget.ui.applyButton.text == "Apply"
    assert job.stopped(timeout=30) and node_ids() == ids


def test_inputs_are_written_uncompressed_in_slicers_temporary_folder(panel, tmp_path):
    module, widget, dialogs = panel
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = volume("F"), volume("M", (1, 0, 0))
    slicer.app.temporaryPath = str(tmp_path)  # Application settings > General > Temporary directory
    parameters.keepTemporaryFiles = True
    apply_and_wait(widget)
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("diffreg-slicer-")
    header = (folders[0] / "moving.nrrd").read_bytes().split(b"\n\n", 1)[0].decode()
    assert "encoding: raw" in header, header
    assert widget.ui.openFolderButton.enabled
