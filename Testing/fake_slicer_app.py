"""A hand-made stand-in for the parts of the Slicer *application* that slicer-core lacks: Qt widgets loaded
from the .ui, the ScriptedLoadableModule base classes, slicer.i18n and slicer.parameterNodeWrapper.

It exists only so DiffusionRegistration.py can be imported and its Widget and Logic run by pytest.
Everything MRML stays real: parameters are stored in a real vtkMRMLScriptedModuleNode of a real
vtkMRMLScene (a singleton node, as ScriptedLoadableModuleLogic makes it), and VTKObservationMixin and
NodeModify are slicer-core's own. It is never used for MRML geometry or transforms.

The wrapper reproduces Slicer's Base/Python/slicer/parameterNodeWrapper/wrapper.py and guiConnectors.py
(read at tags v5.8.0 and v5.10.0) where the panel depends on them:
- `_connectParametersToGui` stores the connectors under a new tag, writes each parameter into its
  widget, then connects the widget; it adds an observer on the node that writes every connected
  parameter into its widget on each change, and never removes that observer. It returns the tag.
- `connectGui` returns that tag from 5.10 on and None in 5.8 (`slicer_version` picks the behaviour);
  `disconnectGui(tag)` drops the connectors of a known tag and ignores anything else (None).
- The QComboBox connector clears the combo box and adds the choices in its constructor; a combo box
  that had items emits currentIndexChanged(-1) on clear() and currentIndexChanged(0) on the first
  addItem(), so connectors still connected to it read a choice and write it into their node.
- The node combo box connector sets `nodeTypes` from the annotation (the .ui's list is replaced);
  `showChildNodeTypes`/`hideChildNodeTypes` stay as the .ui sets them. A node the combo box does not
  list cannot become its current node (the combo box shows None).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import sys
import time
import types
import typing
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Optional

import slicer
import slicer.util

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "DiffusionRegistration" / "DiffusionRegistration.py"
SLICER_VERSIONS = ("5.8", "5.10")


# ---------------------------------------------------------------------------------------------------------
# Qt stand-ins
class Signal:
    """A Qt signal: slots get as many of the emitted arguments as they accept, as PythonQt does."""

    def __init__(self) -> None:
        self.slots: list[Callable] = []

    def connect(self, slot: Callable) -> None:
        self.slots.append(slot)

    def disconnect(self, slot: Callable) -> None:
        self.slots.remove(slot)

    def emit(self, *args) -> None:
        for slot in list(self.slots):
            try:
                parameters = inspect.signature(slot).parameters.values()
                count = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
                if any(p.kind == p.VAR_POSITIONAL for p in parameters):
                    count = len(args)
            except (TypeError, ValueError):
                count = len(args)
            slot(*args[:count])


class QWidget:
    SIGNALS: tuple[str, ...] = ()

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.children: list[QWidget] = []
        self.dynamicProperties: dict[str, Any] = {}
        self.enabled, self.visible, self.toolTip, self.text = True, True, "", ""
        for signal in self.SIGNALS:
            setattr(self, signal, Signal())

    def isWidgetType(self) -> bool:
        return True

    def property(self, name: str):
        return self.dynamicProperties.get(name)

    def setProperty(self, name: str, value) -> None:
        self.dynamicProperties[name] = value

    def findChildren(self, kind=None) -> list:
        found = []
        for child in self.children:
            found.append(child)
            found += child.findChildren(kind)
        return [w for w in found if kind is None or isinstance(w, kind)]

    def connect(self, signature: str, slot: Callable) -> None:
        getattr(self, signature.split("(")[0]).connect(slot)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False


class QComboBox(QWidget):
    SIGNALS = ("currentIndexChanged",)

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.items: list[str] = []
        self._index = -1

    @property
    def currentIndex(self) -> int:
        return self._index

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        index = index if 0 <= index < len(self.items) else -1
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)

    @property
    def currentText(self) -> str:
        return self.items[self._index] if self._index >= 0 else ""

    @property
    def count(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items = []
        self.currentIndex = -1

    def addItem(self, text: str) -> None:
        self.items.append(text)
        if self._index == -1:
            self.currentIndex = 0


class _ValueWidget(QWidget):
    SIGNALS = ("valueChanged",)
    kind: type = int

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.minimum, self.maximum, self._value = 0, 99, self.kind(0)

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value) -> None:
        value = self.kind(min(max(value, self.minimum), self.maximum))
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)


class QSpinBox(_ValueWidget):
    kind = int


class QDoubleSpinBox(_ValueWidget):
    kind = float


class ctkPathLineEdit(QWidget):
    SIGNALS = ("currentPathChanged",)

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._path = ""

    @property
    def currentPath(self) -> str:
        return self._path

    @currentPath.setter
    def currentPath(self, path: str) -> None:
        if path != self._path:
            self._path = path
            self.currentPathChanged.emit(path)


class qMRMLNodeComboBox(QWidget):
    """Lists the scene's nodes of `nodeTypes` (subclasses too when showChildNodeTypes, Qt's default)."""

    SIGNALS = ("currentNodeChanged",)

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.nodeTypes: list[str] = []
        self.showChildNodeTypes, self.hideChildNodeTypes, self.noneEnabled = True, [], False
        self.mrmlScene, self._current = None, None

    def lists(self, node) -> bool:
        if node is None or self.mrmlScene is None or node.GetScene() is not self.mrmlScene:
            return False
        if any(node.IsA(hidden) for hidden in self.hideChildNodeTypes):
            return False
        if self.showChildNodeTypes:
            return any(node.IsA(kind) for kind in self.nodeTypes)
        return node.GetClassName() in self.nodeTypes

    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene
        self.setCurrentNode(self._current)

    def currentNode(self):
        return self._current

    def setCurrentNode(self, node) -> None:
        node = node if self.lists(node) else None
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)


class QCheckBox(QWidget):
    SIGNALS = ("stateChanged",)

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._checked = False

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value: bool) -> None:
        if bool(value) != self._checked:
            self._checked = bool(value)
            self.stateChanged.emit(2 if value else 0)


class QPushButton(QWidget):
    SIGNALS = ("clicked",)


class QProgressBar(QWidget):
    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.value = 0


class QPlainTextEdit(QWidget):
    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.lines: list[str] = []

    def clear(self) -> None:
        self.lines = []

    def appendPlainText(self, text: str) -> None:
        self.lines.append(text)


class qMRMLWidget(QWidget):
    SIGNALS = ("mrmlSceneChanged",)

    def setMRMLScene(self, scene) -> None:
        self.mrmlSceneChanged.emit(scene)


WIDGET_CLASSES = {cls.__name__: cls for cls in (QWidget, QComboBox, QSpinBox, QDoubleSpinBox, ctkPathLineEdit, QCheckBox,
                                                 qMRMLNodeComboBox, QPushButton, QProgressBar, QPlainTextEdit,
                                                 qMRMLWidget)}
WIDGET_CLASSES.update(QLabel=QWidget, ctkCollapsibleButton=QWidget)


class QTimer:
    """Never fires by itself: tests (and QEventLoop.exec) call fire() in place of Qt's event loop."""

    active: list["QTimer"] = []

    def __init__(self) -> None:
        self.timeout, self.interval = Signal(), 0

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def connect(self, signature: str, slot: Callable) -> None:
        getattr(self, signature.split("(")[0]).connect(slot)

    def start(self) -> None:
        if self not in QTimer.active:
            QTimer.active.append(self)

    def stop(self) -> None:
        if self in QTimer.active:
            QTimer.active.remove(self)

    def isActive(self) -> bool:
        return self in QTimer.active

    def fire(self) -> None:
        self.timeout.emit()


class QEventLoop:
    """Runs the active timers (sleeping their interval between rounds) until quit()."""

    AllEvents = 0

    def __init__(self) -> None:
        self._running = False

    def exec_(self) -> int:  # PythonQt's name for QEventLoop::exec
        self._running = True
        while self._running and QTimer.active:
            for timer in list(QTimer.active):
                timer.fire()
            time.sleep(min(t.interval for t in QTimer.active) / 1000 if QTimer.active else 0)
        self._running = False
        return 0

    def quit(self) -> None:
        self._running = False


class ProgressDialog(QWidget):
    SIGNALS = ("canceled",)

    def __init__(self, labelText: str = "", maximum: int = 100, **kwargs) -> None:
        super().__init__("progressDialog")
        self.labelText, self.maximum, self.value, self.modality, self.closed = labelText, maximum, 0, None, False

    def setWindowModality(self, modality) -> None:
        self.modality = modality

    def close(self) -> None:
        self.closed, self.visible = True, False


def _property_value(element: ET.Element):
    child = list(element)[0]
    if child.tag == "stringlist":
        return [s.text or "" for s in child]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "double":
        return float(child.text)
    return child.text or ""


def load_ui(path) -> qMRMLWidget:
    """Widgets of a Qt Designer file with their properties and the top widget's signal connections."""
    root = ET.parse(path).getroot()
    widgets: dict[str, QWidget] = {}

    def build(element: ET.Element, parent: Optional[QWidget]) -> QWidget:
        widget = WIDGET_CLASSES.get(element.get("class"), QWidget)(element.get("name"))
        widget.className = element.get("class")
        for prop in element.findall("property"):
            name, value = prop.get("name"), _property_value(prop)
            if prop.get("stdset") == "0":
                widget.setProperty(name, value)
            else:
                setattr(widget, name, value)
        widgets[widget.name] = widget
        if parent is not None:
            parent.children.append(widget)
        for child in element.iter("widget"):
            if child is not element and _direct_widget_child(element, child):
                build(child, widget)
        return widget

    top = build(root.find("widget"), None)
    for connection in root.iter("connection"):
        sender, receiver = widgets[connection.findtext("sender")], widgets[connection.findtext("receiver")]
        signal, slot = connection.findtext("signal").split("(")[0], connection.findtext("slot").split("(")[0]
        getattr(sender, signal).connect(getattr(receiver, slot))
    return top


def _direct_widget_child(parent: ET.Element, child: ET.Element) -> bool:
    """Whether no other <widget> lies between `parent` and `child` (layouts and items may)."""
    def search(element: ET.Element) -> bool:
        for sub in element:
            if sub is child:
                return True
            if sub.tag != "widget" and search(sub):
                return True
        return False
    return search(parent)


def child_widget_variables(widget: QWidget):
    ui = type("", (), {})()
    for child in widget.findChildren():
        if child.name:
            setattr(ui, child.name, child)
    return ui


# ---------------------------------------------------------------------------------------------------------
# slicer.parameterNodeWrapper stand-in
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


class GuiConnector:
    """guiConnectors.GuiConnector: onChanged(None) disconnects the widget, onChanged(callback) connects it."""

    def __init__(self) -> None:
        self._callback = None

    def onChanged(self, callback) -> None:
        self._callback = callback
        if callback is None:
            self._disconnect()
        else:
            self._connect()

    def changed(self) -> None:
        if self._callback:
            self._callback()


class SignalConnector(GuiConnector):
    """A built-in connector listening to one change signal of its widget."""

    signal = ""

    def __init__(self, widget) -> None:
        super().__init__()
        self._widget = widget

    def _connect(self) -> None:
        getattr(self._widget, self.signal).connect(self.changed)

    def _disconnect(self) -> None:
        getattr(self._widget, self.signal).disconnect(self.changed)


class ComboBoxConnector(SignalConnector):
    signal = "currentIndexChanged"

    def __init__(self, widget, choices) -> None:
        super().__init__(widget)
        self._choices = choices
        widget.clear()
        for choice in choices:
            widget.addItem(str(choice))

    def read(self):
        return self._choices[self._widget.currentIndex]

    def write(self, value) -> None:
        if value not in self._choices:
            raise ValueError(f"Unable to find value {value} in choices {self._choices}")
        self._widget.currentIndex = self._choices.index(value)


class ValueConnector(SignalConnector):
    signal = "valueChanged"

    def __init__(self, widget, kind) -> None:
        super().__init__(widget)
        self._kind = kind

    def read(self):
        return self._kind(self._widget.value)

    def write(self, value) -> None:
        self._widget.value = value


class CheckBoxConnector(SignalConnector):
    signal = "stateChanged"

    def read(self) -> bool:
        return self._widget.checked

    def write(self, value) -> None:
        self._widget.checked = value


class NodeConnector(SignalConnector):
    signal = "currentNodeChanged"

    def __init__(self, widget, kind) -> None:
        super().__init__(widget)
        widget.nodeTypes = [kind.__name__]

    def read(self):
        return self._widget.currentNode()

    def write(self, value) -> None:
        self._widget.setCurrentNode(value)


registered_connectors: list[type] = []


def parameterNodeGuiConnector(cls):
    registered_connectors.append(cls)
    return cls


def create_connector(widget, annotation) -> GuiConnector:
    """guiConnectors.createGuiConnector: the built-in connectors first, then those registered later."""
    plain, validators = _split(annotation)
    if isinstance(widget, qMRMLNodeComboBox) and _is_node_type(plain):
        return NodeConnector(widget, plain)
    if isinstance(widget, QComboBox):
        choice = next((v for v in validators if isinstance(v, Choice)), None)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        return ComboBoxConnector(widget, choice.choices)
    if isinstance(widget, QCheckBox) and plain is bool:
        return CheckBoxConnector(widget)
    if isinstance(widget, _ValueWidget) and plain in (int, float):
        return ValueConnector(widget, plain)
    for custom in registered_connectors:
        if custom.canRepresent(widget, annotation):
            return custom.create(widget, annotation)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{annotation}' to widget type "
                       f"'{type(widget).__name__}'.")


def parameterNodeWrapper(cls, slicer_version: str = "5.10"):
    """Typed properties over a vtkMRMLScriptedModuleNode: nodes as references, other values as strings,
    plus the GUI connection of wrapper.py at `slicer_version`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name) for name in hints if hasattr(cls, name)}

    def make_property(name, annotation):
        plain, validators = _split(annotation)

        def getter(self):
            node = self.parameterNode
            if _is_node_type(plain):
                return node.GetNodeReference(name)
            if name not in list(node.GetParameterNames()):
                setter(self, defaults.get(name, plain()))  # wrapper.py: _Parameter.read writes the default
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
        self._parameterGUIs, self._nextParameterGUIsTag, self._updatingGUIFromParameterNode = {}, 0, False
        for name, value in defaults.items():
            if name not in list(parameterNode.GetParameterNames()):
                setattr(self, name, value)

    def getValue(self, name):
        return getattr(self, name)

    def setValue(self, name, value):
        setattr(self, name, value)

    def update_gui(self):
        if self._updatingGUIFromParameterNode:
            return
        try:
            self._updatingGUIFromParameterNode = True
            with slicer.util.NodeModify(self.parameterNode):
                for mapping in self._parameterGUIs.values():
                    for name, connector in mapping.items():
                        connector.write(self.getValue(name))
        finally:
            self._updatingGUIFromParameterNode = False

    def gui_to_parameter(self, name, connector):
        def callback():
            with slicer.util.NodeModify(self.parameterNode):
                if not self._updatingGUIFromParameterNode:
                    self.setValue(name, connector.read())
        return callback

    def connectParametersToGui(self, mapping):
        for name in mapping:
            if name not in hints:
                raise ValueError(f"Cannot find a param with the given name: {name}")
        connectors = {name: create_connector(widget, hints[name]) for name, widget in mapping.items()}
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = connectors
        for name, connector in connectors.items():
            connector.write(self.getValue(name))
            connector.onChanged(gui_to_parameter(self, name, connector))
        self.parameterNode.AddObserver(33, lambda caller, event: update_gui(self))  # 33: vtkCommand.ModifiedEvent
        return tag

    def connectGui(self, gui):
        widgets = gui.findChildren(QWidget) if getattr(gui, "isWidgetType", None) else list(vars(gui).values())
        mapping = {w.property("SlicerParameterName"): w for w in widgets if w.property("SlicerParameterName")}
        tag = connectParametersToGui(self, mapping)
        return tag if slicer_version != "5.8" else None

    def disconnectGui(self, tag):
        if tag in self._parameterGUIs:
            for connector in self._parameterGUIs[tag].values():
                connector.onChanged(None)
            del self._parameterGUIs[tag]

    namespace = {"__init__": __init__, "allParameters": hints, "defaults": defaults, "__doc__": cls.__doc__,
                 "getValue": getValue, "setValue": setValue, "connectParametersToGui": connectParametersToGui,
                 "connectGui": connectGui, "disconnectGui": disconnectGui,
                 "AddObserver": lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
                     event, callback, priority),
                 "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag)}
    namespace.update({name: make_property(name, annotation) for name, annotation in hints.items()})
    return type(cls.__name__, (), namespace)


def connectors_of(widget) -> int:
    """How many parameter-node connectors listen to the widget's change signal."""
    signal = {QComboBox: "currentIndexChanged", QSpinBox: "valueChanged", QDoubleSpinBox: "valueChanged",
              ctkPathLineEdit: "currentPathChanged", qMRMLNodeComboBox: "currentNodeChanged",
              QCheckBox: "stateChanged"}[type(widget)]
    return sum(isinstance(getattr(slot, "__self__", None), GuiConnector) for slot in getattr(widget, signal).slots)


# ---------------------------------------------------------------------------------------------------------
# ScriptedLoadableModule and slicer.app stand-ins
class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ModuleParent:
    """What the module's widget sees as `self.parent`: whether the module is shown."""

    def __init__(self) -> None:
        self.isEntered = False


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else ModuleParent()
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

    def setup(self) -> None:
        pass

    def resourcePath(self, filename: str) -> str:
        return str(MODULE_FILE.parent / "Resources" / filename)


class ScriptedLoadableModuleLogic:
    """Finds or creates the module's singleton parameter node in slicer.mrmlScene, as Slicer's base class does."""

    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[:-len("Logic")]

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        return scene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    """As Slicer's: a unittest.TestCase whose messages go to the application (here: App.messages)."""

    def delayDisplay(self, message, msec=1000):
        App.messages.append(message)


class App:
    """slicer.app: records what the module asked the user and what it tried to install."""

    messages: list[str] = []

    def __init__(self, testing: bool = False, confirm: bool = True) -> None:
        self.testing, self.confirm = testing, confirm
        self.calls: list[tuple] = []
        App.messages = []

    def testingEnabled(self) -> bool:
        return self.testing

    def processEvents(self, *args) -> None:
        pass

    def setOverrideCursor(self, *args) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass


def fake_modules() -> dict[str, types.ModuleType]:
    """sys.modules entries to install (e.g. with monkeypatch.setitem) before importing the module file."""
    qt = types.ModuleType("qt")
    for cls in (QWidget, QComboBox, QSpinBox, QDoubleSpinBox, QCheckBox, QPushButton, QProgressBar, QPlainTextEdit,
                QTimer, QEventLoop):
        setattr(qt, cls.__name__, cls)
    qt.Qt = types.SimpleNamespace(ApplicationModal=2, WindowModal=1, WaitCursor=3)
    qt.QApplication = types.SimpleNamespace(setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None)
    ctk = types.ModuleType("ctk")
    ctk.ctkPathLineEdit = ctkPathLineEdit
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    for item in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                 ScriptedLoadableModuleTest):
        setattr(base, item.__name__, item)
    return {"qt": qt, "ctk": ctk, "slicer.i18n": i18n, "slicer.ScriptedLoadableModule": base}


def wrapper_module(slicer_version: str) -> types.ModuleType:
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: parameterNodeWrapper(cls, slicer_version)
    wrapper.Choice, wrapper.WithinRange = Choice, WithinRange
    wrapper.GuiConnector, wrapper.parameterNodeGuiConnector = GuiConnector, parameterNodeGuiConnector
    wrapper.unannotatedType = lambda annotation: _split(annotation)[0]
    return wrapper


def import_module_file(monkeypatch, scene, slicer_version: str = "5.10", app: Optional[App] = None,
                       dialogs: Optional[dict] = None) -> types.ModuleType:
    """Imports DiffusionRegistration.py with the stand-ins installed and slicer.mrmlScene = `scene`.

    `dialogs` answers confirmOkCancelDisplay (key "confirm", default True) and collects every dialog
    text under "shown"; `app.calls` records pip installs.
    """
    app = app or App()
    dialogs = dialogs if dialogs is not None else {}
    dialogs.setdefault("confirm", True)
    dialogs.setdefault("shown", [])
    for name, module in fake_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper_module(slicer_version))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.delattr(slicer, "packaging", raising=False)
    util = slicer.util

    def confirm(text, *args, **kwargs):
        dialogs["shown"].append(text)
        return dialogs["confirm"]

    def progress_dialog(parent=None, value=0, maximum=100, labelText="", **kwargs):
        dialogs["progress"] = ProgressDialog(labelText, maximum)
        return dialogs["progress"]

    for name, replacement in {
            "loadUI": load_ui, "childWidgetVariables": child_widget_variables,
            "confirmOkCancelDisplay": confirm, "errorDisplay": lambda text, *a, **k: dialogs["shown"].append(text),
            "createProgressDialog": progress_dialog, "setSliceViewerLayers": lambda *a, **k: None,
            "pip_install": lambda requirements: app.calls.append(("pip_install", requirements))}.items():
        monkeypatch.setattr(util, name, replacement)
    spec = importlib.util.spec_from_file_location("DiffusionRegistration", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "DiffusionRegistration", module)
    spec.loader.exec_module(module)
    return module
