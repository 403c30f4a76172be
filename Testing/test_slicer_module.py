"""The Slicer module file, its .ui and its parameter node, checked without the Slicer application.

The .ui and the module source are parsed as text; the parameter node round-trip stores values in a real
vtkMRMLScriptedModuleNode (slicer-core) through the hand-made Qt/app stand-in in fake_slicer_app.py.
"""
from __future__ import annotations

import ast
import pathlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML library from PyPI) is not installed")

import fake_slicer_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DiffusionRegistration"
UI_FILE = MODULE / "Resources" / "UI" / "DiffusionRegistration.ui"
SOURCE = MODULE / "DiffusionRegistration.py"

# Which widget classes Slicer's parameterNodeWrapper GUI connectors bind to each parameter type
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py: exact widget types).
CONNECTABLE = {int: {"QSpinBox", "QSlider"}, float: {"QDoubleSpinBox", "ctkSliderWidget"},
               bool: {"QCheckBox", "QPushButton"}, pathlib.Path: {"ctkPathLineEdit", "ctkDirectoryButton"}}


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
                "checkerboardSquareMm"}
    assert set(hints) == expected
    assert set(by_parameter) == expected, set(by_parameter) ^ expected
    for name, annotation in hints.items():
        plain, validators = fake_slicer_app._split(annotation)
        widget = by_parameter[name]
        cls = widget.get("class")
        if fake_slicer_app._is_node_type(plain):
            assert cls == "qMRMLNodeComboBox", name
            assert dynamic_property(widget, "nodeTypes") == [plain.__name__], name
        elif any(isinstance(v, fake_slicer_app.Choice) for v in validators):
            assert cls == "QComboBox", name
            choice = next(v for v in validators if isinstance(v, fake_slicer_app.Choice))
            assert module.DiffusionRegistrationParameterNode.defaults[name] in choice.choices, name
        else:
            assert cls in CONNECTABLE[plain], (name, cls)


def test_choices_match_what_the_backend_accepts(module):
    from DiffusionRegistrationLib.features.catalog import default_backbone_id, load_catalog
    from DiffusionRegistrationLib.engine.config import PRESETS
    assert set(module.PRESETS) == set(PRESETS)
    assert set(module.BACKBONES) == set(load_catalog())
    assert module.DiffusionRegistrationParameterNode.defaults["backbone"] == default_backbone_id()
    assert {"mse", "ncc", "lncc", "mi", "ngf", "mind", "diffusion"} <= set(module.SIMILARITIES)


def test_parameter_node_round_trips_through_a_saved_scene(module, tmp_path):
    from DiffusionRegistrationLib.slicer import load_scene, save_scene
    scene = slicer.mrmlScene
    volumes = {name: scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
               for name in ("fixed", "moving", "fixedMask", "movingMask", "outputVolume")}
    transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "outputTransform")
    logic = module.DiffusionRegistrationLogic()
    parameters = logic.getParameterNode()
    assert (parameters.preset, parameters.similarity, parameters.steps, parameters.checkerboardSquareMm) == \
        ("default", "preset", 0, 10.0)
    values = dict(similarity="mind", backbone="sd-2-1-base", mode="fast", preset="accurate", device="cpu", steps=123,
                  regularization=0.75, networkCheckpoint=pathlib.Path("/models/net.pt"), finetuneSteps=17,
                  checkerboardSquareMm=12.5, outputTransform=transform, **volumes)
    for name, value in values.items():
        setattr(parameters, name, value)
    with pytest.raises(ValueError):
        parameters.similarity = "cosine"
    with pytest.raises(ValueError):
        parameters.steps = -1

    loaded = load_scene(save_scene(scene, tmp_path / "scene.mrml"))
    node = loaded.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")
    again = module.DiffusionRegistrationParameterNode(node)
    for name, value in values.items():
        got = getattr(again, name)
        if hasattr(value, "GetName"):
            assert got is not None and got.GetName() == value.GetName(), name
        else:
            assert got == value, name

    options = module.DiffusionRegistrationLogic.options(
        again.preset, again.similarity, again.backbone, again.mode, again.device, again.steps, again.regularization,
        again.networkCheckpoint, again.finetuneSteps, again.checkerboardSquareMm)
    assert options.arguments() == ["--preset", "accurate", "--device", "cpu", "--similarity", "mind", "--steps",
                                   "123", "--regularization", "0.75", "--network", "/models/net.pt",
                                   "--finetune-steps", "17"]


def test_apply_needs_two_different_volumes(module):
    scene = slicer.mrmlScene
    a = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a")
    b = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "b")
    problem = module.DiffusionRegistrationLogic.inputProblem
    assert problem(a, b) is None
    assert problem(a, a) and problem(None, b) and problem(a, None)


def test_module_source_has_no_heavy_imports_at_top_level():
    tree = ast.parse(SOURCE.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add((node.module or "").split(".")[0])
    assert not top & {"torch", "diffusers", "transformers", "SimpleITK", "numpy", "DiffusionRegistrationLib"}, top
