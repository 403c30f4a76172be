"""The Slicer module file, its .ui and its parameter node, checked without the Slicer application.

The .ui and the module source are parsed as text; the panel runs on real Qt (PySide6 through
pythonqt_shim.py: the .ui loaded by QUiLoader, a real QProgressDialog, QTimer and QEventLoop) and real MRML
(slicer-core), with the stand-ins of fake_slicer_app.py only for CTK/qMRML widgets and the application.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import threading
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML library from PyPI) is not installed")

import fake_slicer_app  # noqa: E402
from pythonqt_shim import QT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DiffusionRegistration"
UI_FILE = MODULE / "Resources" / "UI" / "DiffusionRegistration.ui"
SOURCE = MODULE / "DiffusionRegistration.py"

# Which widget classes Slicer's parameterNodeWrapper GUI connectors bind to each parameter type
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py: exact widget types).
# str without a Choice: the module's own PathLineEditToStrConnector.
CONNECTABLE = {int: {"QSpinBox", "QSlider"}, float: {"QDoubleSpinBox", "ctkSliderWidget"},
               bool: {"QCheckBox", "QPushButton"}, str: {"ctkPathLineEdit"}}


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def dynamic_property(widget: ET.Element, name: str):
    for element in widget.findall("property"):
        if element.get("name") == name:
            child = list(element)[0]
            return [s.text for s in child] if child.tag == "stringlist" else child.text
    return None


def names_used_through_ui() -> set[str]:
    """Every `self.ui.<name>` attribute the module source reads or writes."""
    tree = ast.parse(SOURCE.read_text())
    used = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            used.add(node.attr)
    return used


@pytest.fixture()
def module(monkeypatch):
    return fake_slicer_app.import_module_file(monkeypatch, slicer.vtkMRMLScene())


def test_ui_parses_and_has_the_panel_widgets():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.find("widget").get("class") == "qMRMLWidget"
    widgets = ui_widgets()
    for name, cls in {"applyButton": "QPushButton", "progressBar": "QProgressBar", "statusLabel": "QLabel",
                      "logTextEdit": "QPlainTextEdit", "fixedSelector": "qMRMLNodeComboBox",
                      "networkPathLineEdit": "ctkPathLineEdit"}.items():
        assert widgets[name].get("class") == cls, name
    assert dynamic_property(widgets["logTextEdit"], "readOnly") == "true"
    # every node selector follows the panel's scene
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    selectors = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors <= receivers
    assert dynamic_property(widgets["outputTransformSelector"], "addEnabled") == "true"


def test_every_widget_the_module_uses_exists_in_the_ui():
    used = names_used_through_ui()
    assert {"applyButton", "progressBar", "logTextEdit", "statusLabel"} <= used
    missing = used - set(ui_widgets())
    assert not missing, f"DiffusionRegistration.py uses widgets absent from the .ui: {sorted(missing)}"


def test_every_parameter_has_a_bindable_widget(module):
    hints = module.DiffusionRegistrationParameterNode.allParameters
    by_parameter = {}
    for name, widget in ui_widgets().items():
        parameter = dynamic_property(widget, "SlicerParameterName")
        if parameter:
            assert parameter not in by_parameter, f"two widgets bound to {parameter}"
            by_parameter[parameter] = widget
    expected = {"fixed", "moving", "fixedMask", "movingMask", "similarity", "backbone", "mode", "preset", "device",
                "steps", "regularization", "networkCheckpoint", "finetuneSteps", "outputTransform", "outputVolume",
                "checkerboardSquareMm", "agreementMap", "initialTransform", "keepTemporaryFiles"}
    assert set(hints) == expected
    assert set(by_parameter) == expected, set(by_parameter) ^ expected
    for name, annotation in hints.items():
        plain, validators = fake_slicer_app._split(annotation)
        widget = by_parameter[name]
        cls = widget.get("class")
        if fake_slicer_app._is_node_type(plain):
            assert cls == "qMRMLNodeComboBox", name
            assert dynamic_property(widget, "nodeTypes") == list(fake_slicer_app.node_types(plain)), name
            if name.startswith(("output", "initial")) or name.endswith("Mask"):  # subclasses: grid/linear, label maps
                assert dynamic_property(widget, "showChildNodeTypes") == "true", name
        elif any(isinstance(v, fake_slicer_app.Choice) for v in validators):
            assert cls == "QComboBox", name
            choice = next(v for v in validators if isinstance(v, fake_slicer_app.Choice))
            assert module.DiffusionRegistrationParameterNode.defaults[name] in choice.choices, name
        else:
            assert cls in CONNECTABLE[plain], (name, cls)


def test_the_panels_layers_are_the_sessions(module):
    from DiffusionRegistrationLib.slicer.session import LAYERS

    assert module.LAYERS == LAYERS


def test_panel_choices_and_ranges_are_the_declarations(module):
    """Each option is declared once (engine.options): the parameter node's choices and ranges, and the .ui's
    spin boxes (minimum, maximum, decimals, unit) and tooltips are that declaration; "unset" (None) is the choice
    'preset' or one below the declared minimum."""
    from DiffusionRegistrationLib.engine.config import PRESETS
    from DiffusionRegistrationLib.engine.options import OPTION_SETTINGS
    from DiffusionRegistrationLib.features.catalog import load_catalog
    from DiffusionRegistrationLib.similarity.registry import SIMILARITIES

    node = module.DiffusionRegistrationParameterNode

    def validator(name, kind):
        extras = fake_slicer_app._split(node.allParameters[name])[1]
        return next((v for v in extras if isinstance(v, kind)), None)

    assert list(validator("preset", fake_slicer_app.Choice).choices) == list(PRESETS)
    assert list(validator("similarity", fake_slicer_app.Choice).choices) == ["preset", *SIMILARITIES]
    assert list(validator("backbone", fake_slicer_app.Choice).choices) == ["preset", *load_catalog()]
    assert node.defaults["similarity"] == node.defaults["backbone"] == "preset"
    widgets = ui_widgets()
    for parameter, option in (("steps", "steps"), ("regularization", "regularization"),
                              ("finetuneSteps", "finetune_steps"), ("checkerboardSquareMm", "checkerboard_square_mm")):
        setting = OPTION_SETTINGS[option]
        low, high = setting.bounds
        unset = 1 if setting.default is None else 0
        within = validator(parameter, fake_slicer_app.WithinRange)
        assert (within.minimum, within.maximum) == (low - unset, high), parameter
        widget = next(w for w in widgets.values() if dynamic_property(w, "SlicerParameterName") == parameter)
        assert float(dynamic_property(widget, "maximum")) == high, parameter
        assert float(dynamic_property(widget, "minimum")) == low - unset, parameter
        assert dynamic_property(widget, "toolTip").lower().startswith(setting.help.lower()), parameter
        if setting.kind.kind is float:
            assert int(dynamic_property(widget, "decimals")) == setting.decimals, parameter
        assert (dynamic_property(widget, "suffix") or "").strip() == setting.unit, parameter
        assert (dynamic_property(widget, "specialValueText") == "preset") == bool(unset), parameter


def test_parameter_node_round_trips_through_a_saved_scene(module, tmp_path):
    from DiffusionRegistrationLib.slicer import load_scene, save_scene
    scene = slicer.mrmlScene
    volumes = {name: scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
               for name in ("fixed", "moving", "fixedMask", "movingMask", "outputVolume")}
    transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "outputTransform")
    logic = module.DiffusionRegistrationLogic()
    parameters = logic.getParameterNode()
    assert (parameters.preset, parameters.similarity, parameters.steps, parameters.checkerboardSquareMm) == \
        ("default", "preset", -1, 10.0)
    values = dict(similarity="mind", backbone="sd-2-1-base", mode="exact", preset="accurate", device="cpu", steps=123,
                  regularization=0.75, networkCheckpoint="/models/net.pt", finetuneSteps=17,
                  checkerboardSquareMm=12.5, agreementMap=True, outputTransform=transform, **volumes)
    for name, value in values.items():
        setattr(parameters, name, value)
    with pytest.raises(ValueError):
        parameters.similarity = "cosine"
    with pytest.raises(ValueError):
        parameters.steps = -2

    loaded = load_scene(save_scene(scene, tmp_path / "scene.mrml"))
    node = loaded.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")
    again = module.DiffusionRegistrationParameterNode(node)
    for name, value in values.items():
        got = getattr(again, name)
        if hasattr(value, "GetName"):
            assert got is not None and got.GetName() == value.GetName(), name
        else:
            assert got == value, name

    options = module.DiffusionRegistrationLogic.parameterOptions(again)
    config = options.config()
    assert (config.similarity, config.iterations, config.regularization, config.device) == \
        ("mind", (123, 123, 123), 0.75, "cpu")
    assert config.control_spacing == 2.0  # from the 'accurate' preset
    assert (options.network, options.finetune_steps, options.agreement) == ("/models/net.pt", 17, True)


def test_apply_needs_two_different_volumes(module):
    scene = slicer.mrmlScene
    a = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a")
    b = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "b")
    problem = module.DiffusionRegistrationLogic.inputProblem
    assert problem(a, b) is None
    assert problem(a, a) and problem(None, b) and problem(a, None)


def test_importing_the_module_loads_no_heavy_package():
    """Slicer imports every module file at start-up: the module may read the backend's torch-free registries
    but must not pull in torch, diffusers, transformers or SimpleITK (checked in a fresh interpreter)."""
    script = (
        "import sys, slicer, fake_slicer_app\n"
        "from _pytest.monkeypatch import MonkeyPatch\n"
        "fake_slicer_app.import_module_file(MonkeyPatch(), slicer.vtkMRMLScene())\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'SimpleITK') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(MODULE),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_ui_string_lists_are_untranslated_and_only_known_properties_are_set():
    root = ET.parse(UI_FILE).getroot()
    for element in root.iter("property"):
        assert element.get("name") != "visible", "Designer has no 'visible' property; hide widgets in setup()"
        if element.get("name") in ("nodeTypes", "hideChildNodeTypes"):
            assert all(s.get("notr") == "true" for s in element.iter("string")), element.get("name")
    for name in ("fixedMaskSelector", "movingMaskSelector", "outputVolumeSelector"):
        hidden = dynamic_property(ui_widgets()[name], "hideChildNodeTypes")
        assert {"vtkMRMLTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode"} <= set(hidden), name


# -- the panel against the parameterNodeWrapper of Slicer 5.8 (connectGui returns no tag) and 5.10 ----------
CHOICES = dict(preset="accurate", similarity="mind", backbone="sd-2-1-base", mode="exact", device="cpu", steps=77,
               regularization=1.5, networkCheckpoint="/models/net.pt", finetuneSteps=5, checkerboardSquareMm=7.5,
               agreementMap=True)


OPEN_PANELS = []


@pytest.fixture(autouse=True)
def close_panels():
    yield
    while OPEN_PANELS:
        OPEN_PANELS.pop().cleanup()  # as Slicer does on exit: no scene observer outlives the test


def panel(monkeypatch, version, **options):
    module = fake_slicer_app.import_module_file(monkeypatch, slicer.vtkMRMLScene(), slicer_version=version,
                                                **options)
    widget = module.DiffusionRegistrationWidget()
    widget.setup()
    OPEN_PANELS.append(widget)
    return module, widget


def shown(widget, name):
    """The value the panel's widget for parameter `name` shows."""
    control = next(w for w in vars(widget.ui).values() if w.property("SlicerParameterName") == name)
    if type(control) is QT.QComboBox:
        return control.currentText
    if type(control) is fake_slicer_app.ctkPathLineEdit:
        return control.currentPath
    if type(control) is QT.QCheckBox:
        return control.checked
    return control.value


def connectors(widget):
    return {w.name: fake_slicer_app.connectors_of(w) for w in vars(widget.ui).values()
            if w.property("SlicerParameterName")}


@pytest.mark.parametrize("version", fake_slicer_app.SLICER_VERSIONS)
def test_settings_survive_five_entries_and_a_scene_close(monkeypatch, version):
    module, widget = panel(monkeypatch, version)
    parameters = widget._parameterNode
    assert parameters.mode == "preset" and shown(widget, "mode") == "preset"  # unset, as declared
    assert parameters.networkCheckpoint == "" and shown(widget, "networkCheckpoint") == ""  # not "."
    for name, value in CHOICES.items():
        setattr(parameters, name, value)
    widget.parent.isEntered = True
    for _ in range(5):
        widget.exit()
        widget.enter()
        assert {name: getattr(widget._parameterNode, name) for name in CHOICES} == CHOICES
        assert {name: shown(widget, name) for name in CHOICES} == CHOICES
        assert set(connectors(widget).values()) == {1}, connectors(widget)
    slicer.mrmlScene.Clear(0)  # File > Close Scene: the singleton parameter node is reset
    assert {name: getattr(widget._parameterNode, name) for name in CHOICES} == CHOICES
    assert {name: shown(widget, name) for name in CHOICES} == CHOICES
    assert set(connectors(widget).values()) == {1}, connectors(widget)
    widget.ui.presetComboBox.currentIndex = list(module.DiffusionRegistrationParameterNode.allParameters["preset"].__metadata__[0].choices).index("stripped")  # the GUI still writes the node
    assert widget._parameterNode.preset == "stripped"


def test_the_stand_in_shows_the_5_8_reset_of_the_template_pattern(monkeypatch):
    """The scripted-module template's setParameterNode (connectGui + disconnectGui(tag)) under 5.8 stacks
    connectors, and reconnecting resets the combo boxes to their first choice: what the test above guards."""
    module, widget = panel(monkeypatch, "5.8")
    node = module.DiffusionRegistrationLogic().getParameterNode()
    node.mode, node.preset = "fast", "accurate"
    tags = [node.connectGui(widget.ui) for _ in range(2)]
    assert tags == [None, None]
    assert node.mode == "preset" and node.preset == "default"


def test_self_test_without_torch_skips_and_installs_nothing(monkeypatch):
    app = fake_slicer_app.App(testing=True)
    module = fake_slicer_app.import_module_file(monkeypatch, slicer.vtkMRMLScene(), app=app)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails, find_spec finds nothing
    started = []
    monkeypatch.setattr(module.DiffusionRegistrationLogic, "start", lambda *a, **k: started.append(a))
    monkeypatch.setattr(module.DiffusionRegistrationLogic, "ensureDependencies", lambda *a, **k: started.append(a))
    module.DiffusionRegistrationTest().runTest()
    assert not started and not app.calls
    assert any("Skipped" in m and "PyTorch" in m for m in fake_slicer_app.App.messages), fake_slicer_app.App.messages


def test_requirements_file_asks_only_hub_backbones_for_packages(module):
    """The Slicer path runs the backend with --progress json (no tqdm); ADM and the built-in backbones need only
    torch; diffusers and friends are for the hub backbones (Stable Diffusion) alone."""
    base, hub = module.readRequirements(False), module.readRequirements(True)
    assert base == []
    assert {r.split(">")[0] for r in hub} == {"diffusers", "transformers", "safetensors", "huggingface_hub"}
    from DiffusionRegistrationLib.features.catalog import load_catalog

    assert [b for b in load_catalog() if module.isHubBackbone(b)] == ["sd-2-1-base", "sd-2-1"]
    assert not module.isHubBackbone("adm-256-uncond") and not module.isHubBackbone(None)


@pytest.fixture()
def served_backbone(tmp_path, monkeypatch):
    """A catalog whose 'adm-256-uncond' is one file served from a file:// URL, and an empty model cache."""
    data = os.urandom(200_000)
    source = tmp_path / "server" / "weights.pt"
    source.parent.mkdir()
    source.write_bytes(data)
    entry = {"kind": "file", "backbone": "adm", "source": {"url": source.as_uri()}, "licence": "test data",
             "files": [{"name": "weights.pt", "url": source.as_uri(), "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()}],
             "extractor": {"2d": {"tap": "output_blocks.10", "timestep": 60}}}
    catalog = tmp_path / "models.json"
    catalog.write_text(json.dumps({"models": {"adm-256-uncond": entry}}))
    monkeypatch.setenv("DIFFREG_CATALOG", str(catalog))
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "adm-256-uncond" / "weights.pt", data


@pytest.mark.parametrize("how", ["preset", "similarity"])
def test_diffusion_settings_ask_for_the_weights_before_any_backend_run(monkeypatch, served_backbone, how):
    dialogs = {}
    module, widget = panel(monkeypatch, "5.10", dialogs=dialogs)
    torch_utils = types.ModuleType("PyTorchUtils")
    torch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(torchInstalled=lambda: True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torch_utils)
    scene = slicer.mrmlScene
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", n) for n in "fm")
    if how == "preset":
        parameters.preset = "diffusion"
    else:
        parameters.similarity = "diffusion"
    assert widget.ui.backboneComboBox.enabled and widget.ui.modeComboBox.enabled
    events = []
    download = module.DiffusionRegistrationLogic.downloadWeights

    def spy(logic, backbone):
        parameters.steps = 40  # a change to the parameter node re-checks Apply: it must stay disabled
        events.append(("download", backbone, widget.ui.applyButton.enabled))
        return download(logic, backbone)

    monkeypatch.setattr(module.DiffusionRegistrationLogic, "downloadWeights", spy)
    monkeypatch.setattr(module.DiffusionRegistrationLogic, "startJob",
                        lambda logic, node, overwrite=False: events.append(("start", served_backbone[0].is_file())))
    widget.onApplyButton()
    assert [e[0] for e in events] == ["download", "start"], events
    assert events[0][1:] == ("adm-256-uncond", False)  # Apply is disabled while the weights come
    assert events[1] == ("start", True)
    assert served_backbone[0].read_bytes() == served_backbone[1]
    assert "adm-256-uncond" in dialogs["shown"][0]
    progress = dialogs["progress"]
    assert type(progress) is QT.QProgressDialog  # Qt's own dialog: its close() emits canceled()
    assert progress.windowModality == QT.Qt.ApplicationModal and not progress.visible


def diffusion_panel(monkeypatch, dialogs):
    """A 5.10 panel with two volumes, the diffusion preset and a PyTorchUtils that has torch."""
    module, widget = panel(monkeypatch, "5.10", dialogs=dialogs)
    torch_utils = types.ModuleType("PyTorchUtils")
    torch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(torchInstalled=lambda: True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torch_utils)
    parameters = widget._parameterNode
    parameters.fixed, parameters.moving = (slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", n)
                                           for n in "fm")
    parameters.preset = "diffusion"
    started = []
    monkeypatch.setattr(module.DiffusionRegistrationLogic, "startJob",
                        lambda logic, node, overwrite=False: started.append(node))
    return module, widget, started


def test_cancelled_download_removes_the_partial_file_and_starts_nothing(monkeypatch, served_backbone, tmp_path):
    target, data = served_backbone
    source = tmp_path / "server" / "weights.pt"
    source.unlink()
    os.mkfifo(source)  # the server sends 100 kB, then stalls: the download is cut mid-file
    release = threading.Event()

    def serve():
        try:
            with open(source, "wb") as stream:
                stream.write(data[:100_000])
                stream.flush()
                release.wait(60)
        except BrokenPipeError:  # the cancelled reader is gone
            pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    dialogs = {}
    module, widget, started = diffusion_panel(monkeypatch, dialogs)
    model_folder = target.parent
    watcher = QT.QTimer()
    watcher.setInterval(50)

    partial_seen = []

    def cancel_once_partial():
        partial = list(model_folder.glob(".diffreg-*.stage/*.pt"))
        if "progress" in dialogs and partial:
            partial_seen.extend(partial)
            watcher.stop()
            dialogs["progress"].canceled.emit()

    watcher.connect("timeout()", cancel_once_partial)
    watcher.start()
    try:
        widget.onApplyButton()
    finally:
        watcher.stop()
        release.set()
    assert partial_seen and not started
    assert [p for p in model_folder.rglob("*") if p.is_file()] == []
    assert not dialogs["progress"].visible and widget.ui.applyButton.enabled


def test_failed_download_says_why_and_starts_nothing(monkeypatch, served_backbone, tmp_path):
    (tmp_path / "server" / "weights.pt").write_bytes(b"not the weights")
    dialogs = {}
    module, widget, started = diffusion_panel(monkeypatch, dialogs)
    widget.onApplyButton()
    assert not started
    message = dialogs["shown"][-1]
    assert "Downloading the weights of 'adm-256-uncond' failed" in message and "instead of" in message, message


@pytest.mark.parametrize("packaging", [True, False], ids=["pip_ensure", "pip_install"])
def test_missing_packages_are_installed_only_for_what_is_used(monkeypatch, tmp_path, packaging):
    app = fake_slicer_app.App()
    module = fake_slicer_app.import_module_file(monkeypatch, slicer.vtkMRMLScene(), app=app)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1.0\ndiffreg-absent-base>=1.0\n"
                            'diffreg-absent-hub>=2.0; extra == "hub"  # only for a hub backbone\n')
    monkeypatch.setattr(module, "REQUIREMENTS_FILE", requirements)
    torch_utils = types.ModuleType("PyTorchUtils")
    torch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(torchInstalled=lambda: True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torch_utils)
    if packaging:  # Slicer 5.12.3's Base/Python/slicer/packaging.py: a submodule that `import slicer` leaves out
        stand_in = types.ModuleType("slicer.packaging")
        stand_in.pip_ensure = lambda requirements, requester=None: app.calls.append(("pip_ensure", requirements,
                                                                                     requester))
        monkeypatch.setitem(sys.modules, "slicer.packaging", stand_in)
    monkeypatch.setattr(module.DiffusionRegistrationLogic, "ensureWeights", lambda logic, backbone: True)
    logic = module.DiffusionRegistrationLogic()
    assert logic.ensureDependencies(None)
    assert logic.ensureDependencies("adm-256-uncond")  # needs only torch and the base packages
    assert logic.ensureDependencies("sd-2-1-base")
    installed = [call[1] for call in app.calls]
    assert installed == [["diffreg-absent-base>=1.0"], ["diffreg-absent-base>=1.0", "diffreg-absent-hub>=2.0"]]
    if packaging:
        assert {call[0] for call in app.calls} == {"pip_ensure"} and app.calls[0][2] == "DiffusionRegistration"
    else:
        assert {call[0] for call in app.calls} == {"pip_install"}


def test_an_updated_torch_asks_for_a_restart_and_registers_nothing(monkeypatch):
    """PyTorchUtils' torchInstalled() imports the old torch, which stays loaded: after the update Slicer must restart
    (PyTorchUtils.py, torchInstalled and installTorch, SlicerPyTorch at e1c85cc)."""
    dialogs = {}
    app = fake_slicer_app.App()
    module = fake_slicer_app.import_module_file(monkeypatch, slicer.vtkMRMLScene(), app=app, dialogs=dialogs)
    installs = []
    torch_utils = types.ModuleType("PyTorchUtils")
    torch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(
        torchInstalled=lambda: True, installTorch=lambda **options: installs.append(options) or object())
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torch_utils)
    import importlib.metadata
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.1.0" if name == "torch" else real_version(name))
    restarts = []
    monkeypatch.setattr(slicer.util, "restart", lambda: restarts.append(True))
    assert not module.DiffusionRegistrationLogic().ensureDependencies(None)
    assert installs == [{"askConfirmation": False, "torchVersionRequirement": ">=2.4"}]
    assert "2.1.0" in dialogs["shown"][0] and "restart" in dialogs["shown"][1].lower() and restarts == [True]


def test_self_test_with_torch_registers_and_measures_the_overlay(monkeypatch):
    """The module's own self-test, run as Slicer's --testing would: the backend runs, nothing is installed."""
    app = fake_slicer_app.App(testing=True)
    module = fake_slicer_app.import_module_file(monkeypatch, slicer.vtkMRMLScene(), app=app)
    module.DiffusionRegistrationTest().runTest()
    assert not app.calls
    assert any(m.startswith("Test passed: MSE") for m in fake_slicer_app.App.messages), fake_slicer_app.App.messages
