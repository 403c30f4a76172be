"""A hand-made stand-in for the parts of the Slicer *application* that slicer-core lacks: Qt, the
ScriptedLoadableModule base classes, slicer.i18n and slicer.parameterNodeWrapper.

It exists only so DiffusionRegistration.py can be imported and its Logic run by pytest. Everything
MRML stays real: parameters are stored in a real vtkMRMLScriptedModuleNode of a real vtkMRMLScene, the
way Slicer's wrapper stores them (string parameters and node references), and validators reject values
outside Choice / WithinRange as Slicer's do. It is never used for MRML geometry or transforms.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
import typing
from pathlib import Path

import slicer

MODULE_FILE = Path(__file__).resolve().parents[1] / "DiffusionRegistration" / "DiffusionRegistration.py"


@dataclasses.dataclass(frozen=True)
class Choice:
    choices: tuple

    def __init__(self, choices):
        object.__setattr__(self, "choices", tuple(choices))


@dataclasses.dataclass(frozen=True)
class WithinRange:
    minimum: float
    maximum: float


def _split(annotation):
    """(plain type, validators) of a possibly Annotated type."""
    if typing.get_origin(annotation) is typing.Annotated:
        plain, *extras = typing.get_args(annotation)
        return plain, extras
    return annotation, []


def _is_node_type(plain) -> bool:
    return isinstance(plain, type) and plain.__name__.startswith("vtkMRML")


def parameterNodeWrapper(cls):
    """Typed properties over a vtkMRMLScriptedModuleNode: nodes as references, other values as strings."""
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name) for name in hints if hasattr(cls, name)}

    def make_property(name, annotation):
        plain, validators = _split(annotation)

        def getter(self):
            node = self.parameterNode
            if _is_node_type(plain):
                return node.GetNodeReference(name)
            if name not in list(node.GetParameterNames()):
                return defaults.get(name, plain())
            text = node.GetParameter(name)
            if plain is bool:
                return text == "True"
            return plain(text)

        def setter(self, value):
            node = self.parameterNode
            if _is_node_type(plain):
                if value is not None and not value.IsA(plain.__name__):
                    raise ValueError(f"{name}: expected a {plain.__name__}, got {value.GetClassName()}")
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            value = plain(value)
            for validator in validators:
                if isinstance(validator, Choice) and value not in validator.choices:
                    raise ValueError(f"{name}: {value!r} is not one of {validator.choices}")
                if isinstance(validator, WithinRange) and not validator.minimum <= value <= validator.maximum:
                    raise ValueError(f"{name}: {value!r} is outside [{validator.minimum}, {validator.maximum}]")
            node.SetParameter(name, str(value))

        return property(getter, setter)

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for name, value in defaults.items():
            if name not in list(parameterNode.GetParameterNames()):
                setattr(self, name, value)

    namespace = {"__init__": __init__, "allParameters": hints, "defaults": defaults, "__doc__": cls.__doc__}
    namespace.update({name: make_property(name, annotation) for name, annotation in hints.items()})
    return type(cls.__name__, (), namespace)


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    """Finds or creates the module's parameter node in slicer.mrmlScene, as Slicer's base class does."""

    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        scene = slicer.mrmlScene
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == self.moduleName:
                return node
        node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest:
    pass


def fake_modules() -> dict[str, types.ModuleType]:
    """sys.modules entries to install (e.g. with monkeypatch.setitem) before importing the module file."""
    qt = types.ModuleType("qt")
    qt.QTimer = type("QTimer", (), {})
    qt.QEventLoop = type("QEventLoop", (), {"AllEvents": 0})
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper, wrapper.Choice, wrapper.WithinRange = parameterNodeWrapper, Choice, WithinRange
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    for item in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                 ScriptedLoadableModuleTest):
        setattr(base, item.__name__, item)
    return {"qt": qt, "ctk": types.ModuleType("ctk"), "slicer.i18n": i18n, "slicer.parameterNodeWrapper": wrapper,
            "slicer.ScriptedLoadableModule": base}


def import_module_file(monkeypatch, scene) -> types.ModuleType:
    """Imports DiffusionRegistration.py with the stand-ins installed and slicer.mrmlScene = `scene`."""
    for name, module in fake_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location("DiffusionRegistration", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "DiffusionRegistration", module)
    spec.loader.exec_module(module)
    return module
