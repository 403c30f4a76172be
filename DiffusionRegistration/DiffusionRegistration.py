"""DiffusionRegistration: deformable registration guided by pre-trained diffusion features, in 3D Slicer.

Slicer only, and thin: the panel (Widget) reads the parameter node and follows a background job; the
Logic turns MRML nodes into a job of DiffusionRegistrationLib (which runs the backend with Slicer's
Python in another process) and shows the result. No heavy package is imported at module level.
"""
import logging
import pathlib
import shutil
import sys
from typing import Annotated, Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

README_URL = "https://github.com/DiffusionRegistration/SlicerDiffusionRegistration#readme"

PRESETS = ("default", "fast", "accurate", "stripped", "multimodal", "diffusion")
SIMILARITIES = ("preset", "lncc", "ncc", "mse", "mi", "ngf", "mind", "diffusion")
BACKBONES = ("adm-256-uncond", "sd-2-1-base", "sd-2-1")  # model catalog ids (Resources/models.json)
MODES = ("exact", "fast")
DEVICES = ("auto", "cpu", "cuda")
# Packages the backend needs besides what Slicer bundles; torch comes from the PyTorch extension and
# SimpleITK, numpy, scipy from Slicer itself, so they are never installed or replaced here.
PIP_REQUIREMENTS = {"diffusers": "diffusers>=0.30", "transformers": "transformers>=4.40",
                    "safetensors": "safetensors>=0.4", "huggingface_hub": "huggingface_hub>=0.23",
                    "tqdm": "tqdm>=4.66"}


#
# DiffusionRegistration
#


class DiffusionRegistration(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Diffusion Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["DiffusionRegistration developers"]
        self.parent.helpText = _(
            "Deformable registration of a moving volume onto a fixed volume. Besides intensity similarities "
            "(MSE, NCC, LNCC, MI, NGF, MIND) it can compare features of a pre-trained image diffusion network, "
            "which match anatomy even when structures are visible in only one image (for example skull-stripped "
            "against with skull). The registration runs in a background process: Slicer stays responsive and "
            "Cancel stops it. The result is a grid transform applied to the moving volume and a checkerboard "
            "preview. See the <a href=\"{url}\">README</a> for set-up, the command line and the method."
        ).format(url=README_URL)
        self.parent.acknowledgementText = _(
            "The method follows 'Guiding Registration with Emergent Similarity from Pre-Trained Diffusion "
            "Models' (MICCAI 2025, reference code uncbiag/dgir). The panel follows 3D Slicer's scripted-module "
            "template and the background-process design of the MONAIAuto3DSeg extension."
        )


#
# DiffusionRegistrationParameterNode
#


@parameterNodeWrapper
class DiffusionRegistrationParameterNode:
    """The panel's state, saved with the scene.

    steps and regularization at 0 mean "as the preset says"; an empty network checkpoint means none.
    """

    fixed: vtkMRMLScalarVolumeNode
    moving: vtkMRMLScalarVolumeNode
    fixedMask: vtkMRMLScalarVolumeNode
    movingMask: vtkMRMLScalarVolumeNode
    preset: Annotated[str, Choice(PRESETS)] = "default"
    similarity: Annotated[str, Choice(SIMILARITIES)] = "preset"
    backbone: Annotated[str, Choice(BACKBONES)] = "adm-256-uncond"
    mode: Annotated[str, Choice(MODES)] = "fast"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    steps: Annotated[int, WithinRange(0, 5000)] = 0
    regularization: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    networkCheckpoint: pathlib.Path
    finetuneSteps: Annotated[int, WithinRange(0, 5000)] = 0
    outputTransform: vtkMRMLTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    checkerboardSquareMm: Annotated[float, WithinRange(1.0, 200.0)] = 10.0


def _checkpointPath(path) -> str:
    """The checkpoint as a string, or "" when the path widget is empty (Path("") reads as ".")."""
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


#
# DiffusionRegistrationWidget
#


class DiffusionRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node, starts and cancels jobs, shows their progress."""

    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        """Nothing is installed or downloaded here: dependencies are checked when Apply is pressed."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DiffusionRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DiffusionRegistrationLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelJob()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixed:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.fixed = first

    def setParameterNode(self, inputParameterNode: Optional[DiffusionRegistrationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._job is not None:
            self.ui.applyButton.enabled = True
            return
        node = self._parameterNode
        reason = DiffusionRegistrationLogic.inputProblem(node.fixed, node.moving) if node else _("No parameters.")
        self.ui.applyButton.enabled = reason is None
        self.ui.applyButton.toolTip = reason or _("Register the moving volume onto the fixed volume.")
        usesDiffusion = bool(node) and self.logic.usesDiffusion(node.preset, node.similarity)
        self.ui.backboneComboBox.enabled = usesDiffusion
        self.ui.modeComboBox.enabled = usesDiffusion
        self.ui.finetuneStepsSpinBox.enabled = bool(node) and bool(_checkpointPath(node.networkCheckpoint))

    # -- running -------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the registration."), waitCursor=True):
            node = self._parameterNode
            if not self.logic.ensureDependencies(self.logic.usesDiffusion(node.preset, node.similarity),
                                                 node.backbone):
                return
            self.ui.logTextEdit.clear()
            self._job = self.logic.startJob(node)
            self._setRunning(True, _("Registering..."))
            self._timer.start()

    def onPollJob(self) -> None:
        """Timer slot: drains the job's events without blocking; imports the result when it ended."""
        from DiffusionRegistrationLib.slicer.process_runner import Finished
        from DiffusionRegistrationLib.progress import Progress

        job = self._job
        if job is None:
            self._timer.stop()
            return
        for event in job.poll():
            if isinstance(event, Progress):
                self.ui.progressBar.value = int(round(100 * min(max(event.fraction, 0.0), 1.0)))
                self.ui.statusLabel.text = f"{event.stage}: {event.message}" if event.message else event.stage
            elif isinstance(event, Finished):
                self._timer.stop()
                self._finishJob(job)
                return
            else:
                self.ui.logTextEdit.appendPlainText(event.text)

    def _finishJob(self, job) -> None:
        self._job = None
        status = _("Registration failed; see the log.")
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
                result = self.logic.finishJob(job, self._parameterNode)
                seconds = result.report.get("seconds")
                status = _("Done") + (f" in {seconds:.1f} s." if isinstance(seconds, (int, float)) else ".")
        finally:
            self._setRunning(False, status)

    def cancelJob(self) -> None:
        if self._job is None:
            return
        job, self._job = self._job, None
        if self._timer is not None:
            self._timer.stop()
        job.cancel()
        self._setRunning(False, _("Cancelled: the scene was not changed."))

    def _setRunning(self, running: bool, status: str) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.value = 0
        self.ui.statusLabel.text = status
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.methodCollapsibleButton.enabled = not running
        self.ui.outputsCollapsibleButton.enabled = not running
        self._checkCanApply()


#
# DiffusionRegistrationLogic
#


class DiffusionRegistrationLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, a background registration job, MRML nodes out. Usable without the panel."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._dependenciesChecked = False

    def getParameterNode(self):
        return DiffusionRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def inputProblem(fixed, moving) -> Optional[str]:
        """Why Apply cannot run with these inputs, or None when it can."""
        if not fixed or not moving:
            return _("Select a fixed and a moving volume.")
        if fixed.GetID() == moving.GetID():
            return _("The fixed and the moving volume must be two different volumes.")
        return None

    @staticmethod
    def usesDiffusion(preset: str, similarity: str) -> bool:
        return similarity == "diffusion"

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (it sets up the libraries' environment), else this interpreter."""
        return shutil.which("PythonSlicer") or sys.executable

    @classmethod
    def options(cls, preset: str = "default", similarity: str = "preset", backbone: str = "adm-256-uncond",
                mode: str = "exact", device: str = "auto", steps: int = 0, regularization: float = 0.0,
                networkCheckpoint=None, finetuneSteps: int = 0, checkerboardSquareMm: float = 10.0,
                seed: Optional[int] = None):
        """The backend options for these panel values (backbone and mode only with a diffusion similarity)."""
        from DiffusionRegistrationLib.slicer.job import RegistrationOptions

        diffusion = cls.usesDiffusion(preset, similarity)
        return RegistrationOptions(
            preset=preset, similarity="" if similarity == "preset" else similarity,
            backbone=backbone if diffusion else "", mode=mode if diffusion else "", device=device,
            steps=int(steps), regularization=float(regularization), network=_checkpointPath(networkCheckpoint),
            finetune_steps=int(finetuneSteps), seed=seed, checkerboard_square_mm=float(checkerboardSquareMm))

    def startJob(self, parameterNode: DiffusionRegistrationParameterNode):
        """Starts a background job for the panel's parameters; returns it at once."""
        p = parameterNode
        options = self.options(p.preset, p.similarity, p.backbone, p.mode, p.device, p.steps, p.regularization,
                               p.networkCheckpoint, p.finetuneSteps, p.checkerboardSquareMm)
        return self.start(p.fixed, p.moving, options, p.fixedMask, p.movingMask, p.outputTransform, p.outputVolume)

    def start(self, fixed, moving, options=None, fixedMask=None, movingMask=None, outputTransform=None,
              outputVolume=None, python: Optional[str] = None):
        """Writes the inputs to a temporary folder and starts the backend process; returns the job."""
        from DiffusionRegistrationLib.errors import RegistrationError
        from DiffusionRegistrationLib.slicer.job import RegistrationJob

        problem = self.inputProblem(fixed, moving)
        if problem:
            raise RegistrationError(problem)
        job = RegistrationJob(fixed.GetScene(), fixed, moving, options or self.options(), fixedMask, movingMask,
                              outputTransform, outputVolume, python=python or self.pythonExecutable())
        return job.start()

    def finishJob(self, job, parameterNode: Optional[DiffusionRegistrationParameterNode] = None):
        """Imports a finished job's outputs, records the new transform, and shows the result."""
        result = job.finish()
        if parameterNode is not None:
            parameterNode.outputTransform = result.transform
        self.showResult(job.fixed, job.moving)
        return result

    def process(self, fixed, moving, fixedMask=None, movingMask=None, outputTransform=None, outputVolume=None,
                preset: str = "default", similarity: str = "preset", backbone: str = "adm-256-uncond",
                mode: str = "exact",
                device: str = "auto", steps: int = 0, regularization: float = 0.0, networkCheckpoint=None,
                finetuneSteps: int = 0, checkerboardSquareMm: float = 10.0, seed: Optional[int] = None,
                progress: Optional[Callable] = None, wait: bool = True, python: Optional[str] = None):
        """Registers `moving` onto `fixed` (scalar volume nodes), for scripts and tests.

        With wait=True, follows the run (calling `progress(event)` for every Progress/LogLine/Finished
        event) and returns the JobResult (transform, warped, checkerboard, report). With wait=False,
        returns the running job: poll() it, then finishJob(job) or job.cancel().
        """
        options = self.options(preset, similarity, backbone, mode, device, steps, regularization,
                               networkCheckpoint, finetuneSteps, checkerboardSquareMm, seed)
        job = self.start(fixed, moving, options, fixedMask, movingMask, outputTransform, outputVolume, python)
        if not wait:
            return job
        try:
            result = job.wait(progress)
        except BaseException:
            job.cancel()
            raise
        self.showResult(fixed, moving)
        return result

    @staticmethod
    def showResult(fixed, moving) -> None:
        """Fixed in the slice views' background, the (transformed) moving volume in the foreground."""
        if getattr(slicer, "app", None) is None:  # no views without the application (headless MRML)
            return
        slicer.util.setSliceViewerLayers(background=fixed, foreground=moving, foregroundOpacity=0.5, fit=True)

    # -- dependencies --------------------------------------------------------------------------------
    def ensureDependencies(self, needDiffusion: bool = False, backbone: str = "adm-256-uncond") -> bool:
        """Checks, once per session, that torch and the backend's packages are importable.

        torch comes through the PyTorch extension (PyTorchUtils, which asks the user and shows what it
        installs); other missing packages are listed and installed with slicer.util.pip_install after
        the user agrees. Slicer's own SimpleITK and torch are never replaced. Returns False if declined.
        """
        if not self._dependenciesChecked:
            if not self._ensureTorch() or not self._ensurePipPackages():
                return False
            self._dependenciesChecked = True
        return self.ensureWeights(backbone) if needDiffusion else True

    @staticmethod
    def _ensureTorch() -> bool:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(_("This module needs the PyTorch extension. Install 'PyTorch' from the "
                                       "Extensions Manager, restart Slicer, and press Apply again."))
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("DiffusionRegistration needs PyTorch. The PyTorch extension will now download and install it "
                  "(about 1-3 GB; it picks the CPU or CUDA build for this computer). Continue?")):
            return False
        return torchLogic.installTorch(askConfirmation=False) is not None

    @staticmethod
    def _ensurePipPackages() -> bool:
        import importlib.util

        missing = [requirement for module, requirement in PIP_REQUIREMENTS.items()
                   if importlib.util.find_spec(module) is None]
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("DiffusionRegistration needs these Python packages, which will be installed now:\n\n{packages}"
                  "\n\nSlicer's own SimpleITK and PyTorch are left as they are. Continue?").format(
                    packages="\n".join(missing))):
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(missing)
        return True

    def ensureWeights(self, backbone: str) -> bool:
        """Makes sure the backbone's weights are in the user cache; downloads them through the catalog.

        The cache status is read in-process (cheap, no hashing); a download runs `diffreg models download`
        in a background process (it verifies the SHA-256 of every file and writes to the user cache
        folder, never the install folder) behind a progress dialog whose Cancel kills it.
        """
        from DiffusionRegistrationLib import weights
        from DiffusionRegistrationLib.slicer.job import LIBRARY_PARENT
        from DiffusionRegistrationLib.slicer.process_runner import Finished, ProcessRunner, backend_environment
        from DiffusionRegistrationLib.progress import Progress

        if weights.status(backbone) in ("verified", "not verified"):  # present: the backend verifies on load
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("The weights of the diffusion network '{backbone}' are not in the model cache ({folder}). "
                  "Download them now?").format(backbone=backbone, folder=weights.model_dir(backbone))):
            return False
        runner = ProcessRunner([self.pythonExecutable(), "-m", "DiffusionRegistrationLib.cli.main", "models", "download",
                                backbone, "--progress", "json"], env=backend_environment(LIBRARY_PARENT)).start()
        dialog = slicer.util.createProgressDialog(labelText=_("Downloading {backbone}...").format(backbone=backbone),
                                                  maximum=100)
        try:
            while True:
                slicer.app.processEvents(qt.QEventLoop.AllEvents, 100)
                if dialog.wasCanceled:
                    runner.cancel()
                    return False
                for event in runner.poll():
                    if isinstance(event, Progress):
                        dialog.value = int(100 * min(max(event.fraction, 0.0), 1.0))
                        dialog.labelText = event.message or event.stage
                    elif isinstance(event, Finished):
                        if event.returncode != 0:
                            slicer.util.errorDisplay(_("Download failed: {error}").format(error=runner.error_message()))
                        return event.returncode == 0
        finally:
            dialog.close()


#
# DiffusionRegistrationTest
#


class DiffusionRegistrationTest(ScriptedLoadableModuleTest):
    """Slicer self-test: registers a small shifted pair with an intensity similarity."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RegistrationImprovesOverlay()

    def test_RegistrationImprovesOverlay(self):
        import numpy as np
        from DiffusionRegistrationLib.io.images import Grid, Image
        from DiffusionRegistrationLib.slicer import image_from_volume_node, volume_node_from_image

        self.delayDisplay("Creating a blob volume and a copy shifted by (3, -2, 2) voxels")
        grid = Grid((40, 40, 32), (2.0, 2.0, 2.0), (-40.0, -40.0, -32.0), tuple(np.eye(3).ravel()))
        z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in grid.shape], indexing="ij")

        def blobs(dx, dy, dz):
            value = np.zeros(grid.shape, np.float32)
            for cx, cy, cz, r in ((14, 16, 12, 5), (26, 22, 18, 7), (20, 28, 14, 4)):
                value += np.exp(-((x - cx - dx) ** 2 + (y - cy - dy) ** 2 + (z - cz - dz) ** 2) / (2 * r * r))
            return 100 * value

        fixed = volume_node_from_image(Image(blobs(0, 0, 0), grid), scene=slicer.mrmlScene, name="fixed")
        moving = volume_node_from_image(Image(blobs(3, -2, 2), grid), scene=slicer.mrmlScene, name="moving")
        warped = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")

        self.delayDisplay("Registering with MSE")
        logic = DiffusionRegistrationLogic()
        self.assertTrue(logic.ensureDependencies())
        result = logic.process(fixed, moving, outputVolume=warped, preset="fast", similarity="mse", device="cpu")
        fixedArray = image_from_volume_node(fixed).array
        before = float(np.mean((image_from_volume_node(moving, include_parent_transform=False).array
                                - fixedArray) ** 2))
        after = float(np.mean((image_from_volume_node(warped).array - fixedArray) ** 2))
        logging.info(f"MSE before {before:.3f}, after {after:.3f}")
        self.assertLess(after, 0.25 * before)
        self.assertEqual(moving.GetTransformNodeID(), result.transform.GetID())
        self.assertIsNotNone(result.transform.GetStorageNode())
        self.delayDisplay("Test passed")
