"""DiffusionRegistration: deformable registration guided by pre-trained diffusion features, in 3D Slicer.

Slicer only, and thin: the panel (Widget) reads the parameter node and follows a background job; the
Logic turns MRML nodes into a job of DiffusionRegistrationLib (which runs the backend with Slicer's
Python in another process) and shows the result. No heavy package is imported at module level.
"""
import importlib.util
import logging
import pathlib
import shutil
import sys
from typing import Annotated, Callable, Optional, Union

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import (Choice, GuiConnector, WithinRange, parameterNodeGuiConnector,
                                         parameterNodeWrapper, unannotatedType)
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from DiffusionRegistrationLib.engine.config import presets as _presets
from DiffusionRegistrationLib.features.catalog import load_catalog as _load_catalog
from DiffusionRegistrationLib.slicer.panel_settings import PANEL_SETTINGS as _PANEL

README_URL = "https://github.com/DiffusionRegistration/SlicerDiffusionRegistration#readme"

# what the slice views can show of a run (DiffusionRegistrationLib.slicer.session.LAYERS, which imports MRML)
LAYERS = ("fixed", "moving", "warped", "checkerboard", "agreement", "jacobian")
# The panel's choices that are not node references (kept when the scene is closed): the run's options, each
# declared once in the backend (DiffusionRegistrationLib.slicer.panel_settings, torch-free), and the panel's own.
SETTINGS = (*_PANEL, "keepTemporaryFiles")


def _declared(name: str):
    """The parameter node's type for a declared option: its choices or its range."""
    setting = _PANEL[name]
    if setting.choices:
        return Annotated[setting.kind, Choice(setting.choices)]
    if setting.bounds:
        return Annotated[setting.kind, WithinRange(*(setting.kind(b) for b in setting.bounds))]
    return setting.kind
# Python packages the backend needs besides torch (PyTorch extension) and what Slicer bundles (numpy,
# scipy, SimpleITK); entries marked `extra == "hub"` only for a backbone from a model hub.
REQUIREMENTS_FILE = pathlib.Path(__file__).resolve().parent / "Resources" / "requirements.txt"
MINIMUM_TORCH = "2.4"


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

    The run's options, their choices, ranges and defaults come from the backend's declaration (one below a
    range, the choice "preset" or an empty path: unset, as the preset says). The initial transform is the
    user's placement of the moving volume (by default its parent when it is chosen); no output transform means
    a new one per run.
    """

    fixed: vtkMRMLScalarVolumeNode
    moving: vtkMRMLScalarVolumeNode
    fixedMask: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]
    movingMask: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]
    initialTransform: vtkMRMLTransformNode
    preset: _declared("preset") = _PANEL["preset"].default
    similarity: _declared("similarity") = _PANEL["similarity"].default
    backbone: _declared("backbone") = _PANEL["backbone"].default
    mode: _declared("mode") = _PANEL["mode"].default
    device: _declared("device") = _PANEL["device"].default
    steps: _declared("steps") = _PANEL["steps"].default
    regularization: _declared("regularization") = _PANEL["regularization"].default
    networkCheckpoint: _declared("networkCheckpoint") = _PANEL["networkCheckpoint"].default
    finetuneSteps: _declared("finetuneSteps") = _PANEL["finetuneSteps"].default
    outputTransform: vtkMRMLTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    checkerboardSquareMm: _declared("checkerboardSquareMm") = _PANEL["checkerboardSquareMm"].default
    agreementMap: _declared("agreementMap") = _PANEL["agreementMap"].default
    keepTemporaryFiles: bool = False


@parameterNodeGuiConnector
class PathLineEditToStrConnector(GuiConnector):
    """A file path kept as text, so an empty choice stays empty (a pathlib.Path parameter shows ".")."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) == ctk.ctkPathLineEdit and unannotatedType(datatype) == str

    @staticmethod
    def create(widget, datatype):
        return PathLineEditToStrConnector(widget) if PathLineEditToStrConnector.canRepresent(widget, datatype) \
            else None

    def __init__(self, widget) -> None:
        super().__init__()
        self._widget = widget

    def _connect(self) -> None:
        self._widget.currentPathChanged.connect(self.changed)

    def _disconnect(self) -> None:
        self._widget.currentPathChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        return self._widget.currentPath

    def write(self, value: str) -> None:
        self._widget.currentPath = value


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
        self._keptSettings = {}
        self._job = None
        self._preparing = False  # Apply pressed: dependencies or weights are being checked or fetched
        self._timer = None
        self._lastMoving = None  # the moving volume whose default initial transform was last offered

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DiffusionRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.visible = False
        self.logic = DiffusionRegistrationLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        for layer in LAYERS:
            self.ui.layerComboBox.addItem(layer)
        self.ui.layerComboBox.connect("currentIndexChanged(int)", self.onShowLayer)
        self.ui.beforeAfterButton.connect("toggled(bool)", self.onShowLayer)
        self.ui.openFolderButton.connect("clicked(bool)", self.onOpenFolder)
        self.ui.sampleDataButton.connect("clicked(bool)", self.onSampleData)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelJob()
        self._disconnectGui()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.logic.warmUp()

    def exit(self) -> None:
        self._disconnectGui()

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self._keptSettings = {name: getattr(self._parameterNode, name) for name in SETTINGS} \
            if self._parameterNode else {}
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """The closed scene's parameter node was reset: the panel's choices (not its nodes) carry over."""
        kept, self._keptSettings = self._keptSettings, {}
        parameterNode = self.logic.getParameterNode()
        for name, value in kept.items():
            setattr(parameterNode, name, value)
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixed:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.fixed = first

    def setParameterNode(self, inputParameterNode: Optional[DiffusionRegistrationParameterNode]) -> None:
        """Connects the .ui to the node once; a node already connected stays as it is.

        connectParametersToGui returns the connection's tag on every Slicer version (connectGui returns it
        only from 5.10 on; a lost tag leaves connectors behind that reset the combo boxes on reconnection).
        """
        if inputParameterNode is not None and self._parameterNodeGuiTag is not None \
                and self._parameterNode.parameterNode is inputParameterNode.parameterNode:
            return
        self._disconnectGui()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            widgets = [w for w in vars(self.ui).values() if w.property("SlicerParameterName")]
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(
                {w.property("SlicerParameterName"): w for w in widgets})
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _disconnectGui(self) -> None:
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNodeGuiTag = None

    def _checkCanApply(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node and node.moving is not self._lastMoving:  # a newly chosen moving volume: offer its placement
            from DiffusionRegistrationLib.slicer.session import default_initial_transform

            self._lastMoving = node.moving
            node.initialTransform = default_initial_transform(node.moving)
        session = self.logic.session() if self.logic else None
        folder = session.last_folder if session else None
        self.ui.openFolderButton.enabled = folder is not None and folder.is_dir()
        self.ui.layerComboBox.enabled = self.ui.beforeAfterButton.enabled = bool(session and session.current)
        if self._job is not None:
            self.ui.applyButton.enabled = True
            return
        reason = self.logic.parameterProblem(node) if node else _("No parameters.")
        self.ui.applyButton.enabled = reason is None and not self._preparing
        self.ui.applyButton.toolTip = reason or _("Register the moving volume onto the fixed volume.")
        usesDiffusion = bool(node) and self.logic.diffusionBackbone(node) is not None
        self.ui.backboneComboBox.enabled = usesDiffusion
        self.ui.modeComboBox.enabled = usesDiffusion
        self.ui.finetuneStepsSpinBox.enabled = bool(node) and bool(node.networkCheckpoint)
        if node:
            self.ui.presetDescriptionLabel.text = self.logic.settingsDescription(node)

    # -- running -------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            return
        node = self._parameterNode
        problem = self.logic.parameterProblem(node)
        if problem:
            self.ui.statusLabel.text = problem
            return
        self._preparing = True  # no second click while dependencies or weights are fetched
        self._checkCanApply()
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start the registration."), waitCursor=True):
                if not self.logic.ensureDependencies(self.logic.diffusionBackbone(node)):
                    return
                question = self.logic.overwriteQuestion(node)
                if question and not slicer.util.confirmOkCancelDisplay(question):
                    return
                self.ui.logTextEdit.clear()
                self._job = self.logic.startJob(node, overwrite=bool(question))
                self._setRunning(True, _("Registering..."))
                self._timer.start()
        finally:
            self._preparing = False
            self._checkCanApply()

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
        from DiffusionRegistrationLib.errors import Cancelled

        self._job = None
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
                run = self.logic.finishJob(job, self._parameterNode)
            seconds = run.report.get("seconds")
            status = _("Done") + (f" in {seconds:.1f} s." if isinstance(seconds, (int, float)) else ".")
            self.ui.layerComboBox.currentIndex = LAYERS.index("moving")
            self.ui.beforeAfterButton.checked = False
        except Cancelled:
            status = _("Cancelled: the scene was not changed.")
        except Exception as error:  # shown by tryWithErrorDisplay; a timer slot must not raise
            status = _("Registration failed: {error}").format(error=error)
        self._setRunning(False, status)

    def onShowLayer(self, *args) -> None:
        """Layer combo box or before/after button: what the slice views show of the current run."""
        self.logic.showLayer(self.ui.layerComboBox.currentText, after=not self.ui.beforeAfterButton.checked)

    def onOpenFolder(self, *args) -> None:
        folder = self.logic.session().last_folder
        if folder is not None:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onSampleData(self, *args) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the sample pair."), waitCursor=True):
            fixed, moving = self.logic.loadSamplePair()
            self._parameterNode.fixed, self._parameterNode.moving = fixed, moving
            self._parameterNode.preset = "stripped"

    def cancelJob(self) -> None:
        if self._job is None:
            return
        job, self._job = self._job, None
        if self._timer is not None:
            self._timer.stop()
        self.logic.cancel(job)
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


def readRequirements(hub: bool) -> list:
    """The requirement lines of Resources/requirements.txt; those marked `extra == "hub"` only if asked."""
    requirements = []
    for line in REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines():
        requirement, _sep, marker = line.split("#", 1)[0].partition(";")
        if requirement.strip() and (hub or "hub" not in marker):
            requirements.append(requirement.strip())
    return requirements


def isHubBackbone(backbone: Optional[str]) -> bool:
    """Whether the catalog fetches this backbone from a model hub (it then needs diffusers and friends)."""
    entry = _load_catalog().get(backbone) if backbone is not None else None
    return entry is not None and entry.kind == "hub"


def missingRequirements(requirements: list) -> list:
    """The requirements whose distribution is not installed (versions are checked where `packaging` is)."""
    import importlib.metadata
    import re

    missing = []
    for requirement in requirements:
        name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0]
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        try:
            from packaging.requirements import Requirement
        except ImportError:
            continue
        if not Requirement(requirement).specifier.contains(installed, prereleases=True):
            missing.append(requirement)
    return missing


class DiffusionRegistrationLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, a background registration job, MRML nodes out. Usable without the panel."""

    DOWNLOAD_POLL_MS = 200

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._dependenciesChecked = set()
        self._session = None

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

    def parameterProblem(self, parameterNode) -> Optional[str]:
        """Why Apply cannot run with the panel's inputs and outputs (an input chosen as output, ...), or None."""
        session = self.session(parameterNode.fixed.GetScene() if parameterNode.fixed else None)
        p = parameterNode
        session.set_inputs(fixed=p.fixed, moving=p.moving, fixed_mask=p.fixedMask, moving_mask=p.movingMask,
                           initial_transform=p.initialTransform)
        return session.input_problem(p.outputTransform, p.outputVolume)

    def overwriteQuestion(self, parameterNode) -> Optional[str]:
        """The question to ask before chosen output nodes that hold results are refilled, or None."""
        return self.session().overwrite_question(parameterNode.outputTransform, parameterNode.outputVolume)

    @staticmethod
    def settingsDescription(parameterNode) -> str:
        """The registries' one-line descriptions of the chosen preset and similarity."""
        from DiffusionRegistrationLib.similarity.registry import SIMILARITIES

        text = f"{parameterNode.preset}: {_presets().get(parameterNode.preset, '')}"
        similarity = SIMILARITIES.get(parameterNode.similarity)
        return text + (f"\n{parameterNode.similarity}: {similarity.summary}" if similarity else "")

    def showLayer(self, layer: str, after: bool = True) -> None:
        """Shows a layer of the current run (before or after registration) in the slice views."""
        session = self.session()
        if session.current is not None or layer in ("fixed", "moving"):
            self.showView(session.show(layer, after))

    def loadSamplePair(self):
        """The main job's pair (Colin27 skull-stripped onto Colin27 with skull under a known deformation, 2 mm)
        as two volumes; RegistrationError with the fix when the data are not on this computer."""
        from DiffusionRegistrationLib.cli.demo import demo_pair
        from DiffusionRegistrationLib.slicer import volume_node_from_image

        pair = demo_pair()
        return (volume_node_from_image(pair["fixed"], scene=slicer.mrmlScene, name="Colin27 with skull (deformed)"),
                volume_node_from_image(pair["moving"], scene=slicer.mrmlScene, name="Colin27 skull-stripped"))

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (it sets up the libraries' environment), else this interpreter."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def parameterOptions(parameterNode):
        """The run's options (engine.options.RegistrationOptions) for the panel's parameter node."""
        from DiffusionRegistrationLib.slicer.panel_settings import options_from_panel

        return options_from_panel({name: getattr(parameterNode, name) for name in _PANEL})

    @classmethod
    def diffusionBackbone(cls, parameterNode) -> Optional[str]:
        """The catalog id of the diffusion backbone these settings run, from the backend's resolved
        settings (a preset or the similarity box can select it), or None for an intensity similarity."""
        from DiffusionRegistrationLib.errors import RegistrationError

        try:
            return cls.parameterOptions(parameterNode).diffusion_backbone()
        except RegistrationError:
            return None

    def session(self, scene=None):
        """The review session of `scene` (default: Slicer's scene): one per scene, made on first use; its runs'
        files go to Slicer's temporary folder as the application settings say now."""
        from DiffusionRegistrationLib.slicer.session import ReviewSession

        scene = scene or slicer.mrmlScene
        if self._session is None or self._session.scene is not scene:
            if self._session is not None:
                self._session.close()
            self._session = ReviewSession(scene, python=self.pythonExecutable())
        self._session.work_folder = self.temporaryFolder()
        return self._session

    def warmUp(self) -> None:
        """Starts the shared warm backend in the background (it imports torch there), so that the first Apply
        does not wait for it either; nothing happens before torch is installed."""
        from DiffusionRegistrationLib.slicer.job import warm_up

        warm_up(self.pythonExecutable())

    @staticmethod
    def temporaryFolder() -> Optional[str]:
        """Slicer's temporary folder (Application settings), where the job's files go; None outside Slicer."""
        app = getattr(slicer, "app", None)
        return getattr(app, "temporaryPath", None) or None

    def startJob(self, parameterNode: DiffusionRegistrationParameterNode, overwrite: bool = False):
        """Starts a background run for the panel's parameters; returns its job at once."""
        from DiffusionRegistrationLib.errors import RegistrationError

        p = parameterNode
        problem = self.parameterProblem(p)
        if problem:
            raise RegistrationError(problem)
        session = self._session
        session.keep_files = bool(p.keepTemporaryFiles)
        return session.start(self.parameterOptions(p), p.outputTransform, p.outputVolume, overwrite=overwrite)

    def start(self, fixed, moving, options=None, fixedMask=None, movingMask=None, outputTransform=None,
              outputVolume=None, overwrite: bool = False):
        """Starts a run of the session of the volumes' scene; returns its job at once."""
        from DiffusionRegistrationLib.errors import RegistrationError

        problem = self.inputProblem(fixed, moving)
        if problem:
            raise RegistrationError(problem)
        from DiffusionRegistrationLib.engine.options import RegistrationOptions

        session = self.session(fixed.GetScene())
        session.set_inputs(fixed=fixed, moving=moving, fixed_mask=fixedMask, moving_mask=movingMask)
        return session.start(options or RegistrationOptions(), outputTransform, outputVolume, overwrite=overwrite)

    def finishJob(self, job=None, parameterNode: Optional[DiffusionRegistrationParameterNode] = None):
        """Records the finished run in the session (new output nodes unless chosen) and shows it."""
        run = self.session(job.scene if job is not None else None).finish()
        self.showView(self._session.view)
        return run

    def cancel(self, job) -> None:
        """Cancels `job` at once (its process ends in the background); the scene is not changed."""
        if self._session is not None and self._session.job is job:
            self._session.cancel()
        else:
            job.cancel()

    def process(self, fixed, moving, options=None, fixedMask=None, movingMask=None, outputTransform=None,
                outputVolume=None, progress: Optional[Callable] = None):
        """Registers `moving` onto `fixed` (scalar volume nodes) with `options` (a RegistrationOptions; default:
        the default preset) and waits, for scripts and tests: calls `progress(event)` for every
        Progress/LogLine/Finished event and returns the session's Run (transform, warped, checkerboard,
        agreement, jacobian, report). start() returns the running job instead."""
        self.start(fixed, moving, options, fixedMask, movingMask, outputTransform, outputVolume)
        session = self._session
        try:
            run = session.wait(progress)
        except BaseException:
            session.cancel()
            raise
        self.showView(session.view)
        return run

    @staticmethod
    def showView(view) -> None:
        """Shows the session's view in Slicer's slice views (nothing without the application)."""
        if view is None or getattr(slicer, "app", None) is None:
            return
        slicer.util.setSliceViewerLayers(background=view.background, foreground=view.foreground,
                                         foregroundOpacity=view.opacity, fit=True)

    # -- dependencies --------------------------------------------------------------------------------
    def ensureDependencies(self, backbone: Optional[str] = None) -> bool:
        """Makes sure torch, the backend's packages and, for a diffusion backbone, its packages and
        weights are there, asking the user before anything is installed or downloaded.

        torch comes only through the PyTorch extension (PyTorchUtils); other packages are read from
        Resources/requirements.txt (the hub packages only for a hub backbone) and installed with
        slicer.packaging.pip_ensure where Slicer has it, else slicer.util.pip_install. Returns False when the
        user declines, or when Slicer must restart first.
        """
        hub = isHubBackbone(backbone)
        if hub not in self._dependenciesChecked:
            if not self._ensureTorch() or not self._ensurePipPackages(readRequirements(hub)):
                return False
            self._dependenciesChecked.add(hub)
        return self.ensureWeights(backbone) if backbone is not None else True

    @staticmethod
    def _ensureTorch() -> bool:
        """torch, at least MINIMUM_TORCH, through the PyTorch extension (it picks the CPU or CUDA build)."""
        import importlib.metadata
        import re

        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(_("This module needs the PyTorch extension. Install 'PyTorch' from the "
                                       "Extensions Manager, restart Slicer, and press Apply again."))
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            installed = importlib.metadata.version("torch")
            if tuple(int(part) for part in re.findall(r"\d+", installed)[:2]) >= \
                    tuple(int(part) for part in MINIMUM_TORCH.split(".")):
                return True
            question = _("DiffusionRegistration needs PyTorch {version} or newer; {installed} is installed. The "
                         "PyTorch extension will now update it (restart Slicer afterwards). Continue?")
        else:
            question = _("DiffusionRegistration needs PyTorch {version} or newer. The PyTorch extension will now "
                         "download and install it (about 1-3 GB; it picks the CPU or CUDA build for this computer). "
                         "Continue?")
            installed = ""
        if not slicer.util.confirmOkCancelDisplay(question.format(version=MINIMUM_TORCH, installed=installed)):
            return False
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=f">={MINIMUM_TORCH}") is None:
            return False
        if not installed:
            return True
        # torchInstalled() imported the old torch: it stays loaded (and its files in use on Windows) until Slicer
        # restarts, so the registration must not run now
        if slicer.util.confirmOkCancelDisplay(_("PyTorch was updated. Slicer must restart before registering, "
                                                "because the old version stays loaded until then. Restart now?")):
            slicer.util.restart()
        return False

    @staticmethod
    def _ensurePipPackages(requirements: list) -> bool:
        missing = missingRequirements(requirements)
        if not missing:
            return True
        try:  # Slicer 5.12 and later (Base/Python/slicer/packaging.py); `import slicer` does not import it
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if packaging is not None:
            try:
                packaging.pip_ensure(missing, requester="DiffusionRegistration")
            except RuntimeError:  # the user declined
                return False
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
        """Makes sure the backbone's weights are in the user cache, offering to download them.

        The cache status is read in-process (cheap, no hashing). A download runs `diffreg models download`
        in a background process (it verifies the SHA-256 of every file and writes to the user cache
        folder) behind a modal progress dialog updated by a timer; Cancel kills it and removes the
        partial file.
        """
        from DiffusionRegistrationLib.features import weights

        # present (the backend verifies on load), or a built-in backbone without weights
        if weights.status(backbone) in ("verified", "unverified", "not checked", "built in"):
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("The weights of the diffusion network '{backbone}' are not in the model cache ({folder}). "
                  "Download them now?").format(backbone=backbone, folder=weights.model_dir(backbone))):
            return False
        return self.downloadWeights(backbone)

    def downloadWeights(self, backbone: str) -> bool:
        """Runs the download in a background process behind a modal progress dialog; True when it succeeded."""
        from DiffusionRegistrationLib.features import weights
        from DiffusionRegistrationLib.io.atomic import recover
        from DiffusionRegistrationLib.slicer.job import LIBRARY_PARENT
        from DiffusionRegistrationLib.slicer.process_runner import Finished, ProcessRunner, backend_environment
        from DiffusionRegistrationLib.progress import Progress

        runner = ProcessRunner([self.pythonExecutable(), "-m", "DiffusionRegistrationLib", "models", "download",
                                backbone, "--progress", "json"], env=backend_environment(LIBRARY_PARENT)).start()
        dialog = slicer.util.createProgressDialog(labelText=_("Downloading {backbone}...").format(backbone=backbone),
                                                  maximum=100)
        dialog.setWindowModality(qt.Qt.ApplicationModal)
        loop, timer, outcome = qt.QEventLoop(), qt.QTimer(), {}

        def poll() -> None:
            for event in runner.poll():
                if isinstance(event, Progress):
                    dialog.value = int(100 * min(max(event.fraction, 0.0), 1.0))
                    dialog.labelText = event.message or event.stage
                elif isinstance(event, Finished):
                    outcome["returncode"] = event.returncode
                    loop.quit()

        def cancel() -> None:
            runner.cancel()
            recover(weights.model_dir(backbone), recursive=True)
            outcome["cancelled"] = True
            loop.quit()

        timer.setInterval(self.DOWNLOAD_POLL_MS)
        timer.connect("timeout()", poll)
        dialog.connect("canceled()", cancel)
        timer.start()
        try:
            loop.exec_()  # PythonQt names QEventLoop::exec exec_ (Slicer 5.8 and 5.10 alike)
        finally:
            timer.stop()
            # QProgressDialog::closeEvent emits canceled(): disconnect first, or a finished download counts as
            # cancelled (Qt's qprogressdialog.cpp, closeEvent)
            dialog.disconnect("canceled()", cancel)
            dialog.close()
        if outcome.get("cancelled"):
            return False
        if outcome.get("returncode") != 0:
            slicer.util.errorDisplay(_("Downloading the weights of '{backbone}' failed: {error}").format(
                backbone=backbone, error=runner.error_message()))
            return False
        return True


#
# DiffusionRegistrationTest
#


class DiffusionRegistrationTest(ScriptedLoadableModuleTest):
    """Slicer self-test: registers a small shifted pair with an intensity similarity.

    It never installs or downloads anything: without torch (the PyTorch extension installs it) or
    the backend's packages it says so and skips.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RegistrationImprovesOverlay()

    @staticmethod
    def skipReason() -> Optional[str]:
        """Why the registration cannot run in this Slicer, or None."""
        if importlib.util.find_spec("torch") is None:
            return _("PyTorch is not installed (install it with the PyTorch extension)")
        missing = missingRequirements(readRequirements(hub=False))
        if missing:
            return _("missing Python packages: {packages}").format(packages=", ".join(missing))
        return None

    def test_RegistrationImprovesOverlay(self):
        reason = self.skipReason()
        if reason:
            self.delayDisplay(_("Skipped the registration test: {reason}.").format(reason=reason))
            return
        import numpy as np
        from DiffusionRegistrationLib.core.image import Grid, Image
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
        from DiffusionRegistrationLib.engine.options import RegistrationOptions

        options = RegistrationOptions(preset="fast", similarity="mse", device="cpu")
        result = logic.process(fixed, moving, options, outputVolume=warped)
        fixedArray = image_from_volume_node(fixed).array
        before = float(np.mean((image_from_volume_node(moving, include_parent_transform=False).array
                                - fixedArray) ** 2))
        after = float(np.mean((image_from_volume_node(warped).array - fixedArray) ** 2))
        logging.info(f"MSE before {before:.3f}, after {after:.3f}")
        self.assertLess(after, 0.25 * before)
        self.assertEqual(moving.GetTransformNodeID(), result.transform.GetID())
        self.assertIsNotNone(result.transform.GetStorageNode())
        self.delayDisplay(f"Test passed: MSE {before:.1f} before, {after:.1f} after registration")
