"""Stand-ins for the parts of the Slicer *application* that no package provides: the CTK and qMRML widgets of
the .ui, the ScriptedLoadableModule base classes, slicer.app, slicer.i18n and slicer.parameterNodeWrapper.

Qt is real: `qt` is pythonqt_shim (PySide6 classes with PythonQt's attribute access), the .ui is loaded by
slicer-core's own slicer.util.loadUI through QUiLoader, and dialogs, timers and event loops are Qt's. MRML is
real: parameters live in a vtkMRMLScriptedModuleNode of a vtkMRMLScene (slicer-core), and VTKObservationMixin,
NodeModify, childWidgetVariables and createProgressDialog are slicer-core's own. What stands in for the user
is `dialogs` (answers to confirmation boxes). It exists only so DiffusionRegistration.py runs under pytest.

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
import sys
import tempfile
import types
import typing
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import slicer
import slicer.util

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "DiffusionRegistration" / "DiffusionRegistration.py"
SLICER_VERSIONS = ("5.8", "5.10")


# ---------------------------------------------------------------------------------------------------------
# CTK and qMRML widget stand-ins (no package provides them): real QWidget subclasses with the properties and
# signals the panel and its .ui use, each behaviour copied from the C++ source named in its docstring.
from PySide6 import QtCore, QtWidgets  # noqa: E402

import pythonqt_shim  # noqa: E402

QT = pythonqt_shim.QT


def _string_list_property(attribute: str):
    return QtCore.Property("QStringList", lambda self: list(getattr(self, attribute)),
                           lambda self, value: setattr(self, attribute, list(value)))


def _bool_property(attribute: str):
    return QtCore.Property(bool, lambda self: getattr(self, attribute),
                           lambda self, value: setattr(self, attribute, bool(value)))


class _qMRMLWidget(QtWidgets.QWidget):
    """Libs/MRML/Widgets/qMRMLWidget.cxx: setMRMLScene(scene) stores the scene and emits mrmlSceneChanged(scene),
    which the .ui connects to every node selector's setMRMLScene."""

    mrmlSceneChanged = QtCore.Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class _qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Libs/MRML/Widgets/qMRMLNodeComboBox.cxx (with qMRMLSceneModel/qMRMLNodeFactory): lists the scene's nodes of
    `nodeTypes`, their subclasses too when showChildNodeTypes (the default, true), none of `hideChildNodeTypes`
    and no node hidden from editors; a "None" entry first when noneEnabled; a node it does not list cannot be
    current (setCurrentNode leaves None); when the current node leaves the scene, the current node becomes None;
    currentNodeChanged(vtkMRMLNode*) is emitted on every change of the current node."""

    currentNodeChanged = QtCore.Signal(object)

    def _set_node_types(self, value) -> None:
        self._nodeTypes = list(value)
        self._refresh()

    nodeTypes = QtCore.Property("QStringList", lambda self: list(self._nodeTypes), _set_node_types)
    hideChildNodeTypes = _string_list_property("_hideChildNodeTypes")
    showChildNodeTypes = _bool_property("_showChildNodeTypes")
    noneEnabled = _bool_property("_noneEnabled")
    addEnabled = _bool_property("_addEnabled")
    removeEnabled = _bool_property("_removeEnabled")
    renameEnabled = _bool_property("_renameEnabled")
    selectNodeUponCreation = _bool_property("_selectNodeUponCreation")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._nodeTypes, self._hideChildNodeTypes = [], []
        self._showChildNodeTypes, self._noneEnabled = True, False
        self._addEnabled = self._removeEnabled = self._renameEnabled = self._selectNodeUponCreation = False
        self._scene, self._current = None, None

    def lists(self, node) -> bool:
        if node is None or self._scene is None or node.GetScene() is not self._scene or node.GetHideFromEditors():
            return False
        if any(node.IsA(hidden) for hidden in self._hideChildNodeTypes):
            return False
        if self._showChildNodeTypes:
            return any(node.IsA(kind) for kind in self._nodeTypes)
        return node.GetClassName() in self._nodeTypes

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def nodes(self) -> list:
        if self._scene is None:
            return []
        all_nodes = self._scene.GetNodes()
        return [n for n in (all_nodes.GetItemAsObject(i) for i in range(all_nodes.GetNumberOfItems())) if self.lists(n)]

    def _refresh(self) -> None:
        self._set(self._current if self.lists(self._current) else None)

    def currentNode(self):
        return self._current if self.lists(self._current) else None

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node) -> None:
        self._set(node if self.lists(node) else None)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene is not None and node_id else None)

    def _set(self, node) -> None:
        """Lists the scene's nodes (the list is rebuilt when asked: the stand-in does not observe the scene) and
        makes `node` current."""
        nodes = self.nodes()
        self.blockSignals(True)
        self.clear()
        if self._noneEnabled:
            self.addItem("None")
        for listed in nodes:
            self.addItem(listed.GetName())
        ids = [n.GetID() for n in nodes]
        self.setCurrentIndex(ids.index(node.GetID()) + int(self._noneEnabled) if node is not None
                             else (0 if self._noneEnabled else -1))
        self.blockSignals(False)
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)


class _ctkPathLineEdit(QtWidgets.QWidget):
    """CTK Libs/Widgets/ctkPathLineEdit.cpp: a line edit and a browse button; `currentPath` property,
    currentPathChanged(QString) emitted when it changes; `filters` and `nameFilters` choose what the browse
    dialog offers."""

    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._edit, self._filters, self._nameFilters = QtWidgets.QLineEdit(self), 0, []
        layout.addWidget(self._edit)
        layout.addWidget(QtWidgets.QToolButton(self, text="..."))
        self._edit.textChanged.connect(self.currentPathChanged.emit)

    def _get_path(self) -> str:
        return self._edit.text

    currentPath = QtCore.Property(str, lambda self: self._edit.text(), lambda self, path: self._edit.setText(path))
    nameFilters = _string_list_property("_nameFilters")
    filters = QtCore.Property(int, lambda self: self._filters, lambda self, value: setattr(self, "_filters", value))


class _ctkCollapsibleButton(QtWidgets.QGroupBox):
    """CTK Libs/Widgets/ctkCollapsibleButton.cpp: a titled box (`text`) whose contents hide when `collapsed`."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._collapsed = False

    def _set_collapsed(self, value: bool) -> None:
        self._collapsed = bool(value)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)

    text = QtCore.Property(str, QtWidgets.QGroupBox.title, QtWidgets.QGroupBox.setTitle)
    collapsed = QtCore.Property(bool, lambda self: self._collapsed, _set_collapsed)


qMRMLWidget = pythonqt_shim.pythonqt_class(_qMRMLWidget)
qMRMLNodeComboBox = pythonqt_shim.pythonqt_class(_qMRMLNodeComboBox)
ctkPathLineEdit = pythonqt_shim.pythonqt_class(_ctkPathLineEdit)
ctkCollapsibleButton = pythonqt_shim.pythonqt_class(_ctkCollapsibleButton)
for _cls in (qMRMLWidget, qMRMLNodeComboBox, ctkPathLineEdit, ctkCollapsibleButton):
    _cls.__name__ = _cls.__name__.lstrip("_")
    pythonqt_shim.UiLoader.custom[_cls.__name__] = _cls


def connect_ui_signals(top, ui_file) -> None:
    """Qt's form builder (QAbstractFormBuilder::createConnections) connects each <connection> of the .ui by its
    signature; a signal with an MRML argument type exists only in Slicer's C++ widgets, so these are connected
    here by name, sender's signal to receiver's slot, as the form builder would."""
    root = ET.parse(ui_file).getroot()
    named = {QtCore.QObject.objectName(w): w for w in [top, *top.findChildren(QtWidgets.QWidget)]}
    for connection in root.iter("connection"):
        signal = connection.findtext("signal")
        if "vtkMRML" not in signal:
            continue
        sender, receiver = named[connection.findtext("sender")], named[connection.findtext("receiver")]
        getattr(sender, signal.split("(")[0]).connect(getattr(receiver, connection.findtext("slot").split("(")[0]))


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


def node_types(plain) -> tuple:
    """The MRML class names of a node type or of a Union of node types and None (parameterNodeWrapper/util.py,
    v5.8.0, getNodeTypes); () for any other type."""
    members = typing.get_args(plain) if typing.get_origin(plain) is typing.Union else (plain,)
    names = tuple(m.__name__ for m in members if isinstance(m, type) and m.__name__.startswith("vtkMRML"))
    others = [m for m in members if m is not type(None) and m.__name__ not in names] if names else members
    return names if not others else ()


def _is_node_type(plain) -> bool:
    return bool(node_types(plain))


class GuiConnector:
    """guiConnectors.GuiConnector: onChanged(None) disconnects the widget, onChanged(callback) connects it."""

    def __init__(self) -> None:
        self._callback = None

    connected: list = []  # every connector whose widget is connected (for connectors_of)

    def onChanged(self, callback) -> None:
        self._callback = callback
        if callback is None:
            self._disconnect()
            GuiConnector.connected.remove(self)
        else:
            self._connect()
            GuiConnector.connected.append(self)

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

    def widget(self):
        return self._widget


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
        widget.nodeTypes = list(node_types(kind))

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
    if type(widget) is qMRMLNodeComboBox and _is_node_type(plain):
        return NodeConnector(widget, plain)
    if type(widget) is QT.QComboBox:
        choice = next((v for v in validators if isinstance(v, Choice)), None)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        return ComboBoxConnector(widget, choice.choices)
    if type(widget) is QT.QCheckBox and plain is bool:
        return CheckBoxConnector(widget)
    if type(widget) in (QT.QSpinBox, QT.QDoubleSpinBox) and plain in (int, float):
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
                if value is not None and not any(value.IsA(kind) for kind in node_types(plain)):
                    raise ValueError(f"{name}: expected one of {node_types(plain)}, got {value.GetClassName()}")
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
        widgets = gui.findChildren(QtWidgets.QWidget) if isinstance(gui, QtWidgets.QWidget) else list(vars(gui).values())
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
    """How many parameter-node connectors are connected to the widget."""
    return sum(connector.widget() is widget for connector in GuiConnector.connected)


# ---------------------------------------------------------------------------------------------------------
# ScriptedLoadableModule and slicer.app stand-ins
class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    """Base/Python/slicer/ScriptedLoadableModule.py (v5.8.0, lines 89-108): without a parent, the panel is a new
    qMRMLWidget with a QVBoxLayout, and `layout` is that layout. `isEntered` (a property of Slicer's
    qSlicerAbstractModuleWidget) is False until the test enters the module."""

    def __init__(self, parent=None):
        if parent is None:
            parent = qMRMLWidget()
            parent.setLayout(QT.QVBoxLayout())
            parent.setMRMLScene(slicer.mrmlScene)
            parent.isEntered = False
        self.parent = parent
        self.layout = self.parent.layout()

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
        # Base/QTCore/qSlicerCoreApplication.h (v5.8.0 to v5.12.3, line 78): Q_PROPERTY(QString temporaryPath ...)
        self.temporaryPath = tempfile.gettempdir()
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
    """sys.modules entries to install (e.g. with monkeypatch.setitem) before importing the module file: `qt` is
    the real-Qt shim; `ctk` and slicer's widget classes are the stand-ins above."""
    ctk = types.ModuleType("ctk")
    ctk.ctkPathLineEdit, ctk.ctkCollapsibleButton = ctkPathLineEdit, ctkCollapsibleButton
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    for item in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                 ScriptedLoadableModuleTest):
        setattr(base, item.__name__, item)
    return {"qt": QT, "ctk": ctk, "slicer.i18n": i18n, "slicer.ScriptedLoadableModule": base}


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

    `dialogs` stands in for the user: it answers confirmOkCancelDisplay (key "confirm", default True) and
    collects every message text under "shown"; the progress dialog (a real QProgressDialog) is kept under
    "progress"; `app.calls` records pip installs.
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

    create_progress_dialog = util.createProgressDialog  # slicer-core's own, on a real QProgressDialog

    def progress_dialog(*args, **kwargs):
        dialogs["progress"] = create_progress_dialog(*args, **kwargs)
        return dialogs["progress"]

    load = util.loadUI  # slicer-core's own: QUiLoader of the shim

    def load_ui(path):
        widget = load(path)
        connect_ui_signals(widget, path)
        return widget

    for name, replacement in {
            "loadUI": load_ui, "mainWindow": lambda *a, **k: None,
            "confirmOkCancelDisplay": confirm, "errorDisplay": lambda text, *a, **k: dialogs["shown"].append(text),
            "createProgressDialog": progress_dialog, "setSliceViewerLayers": lambda *a, **k: None,
            "pip_install": lambda requirements: app.calls.append(("pip_install", requirements))}.items():
        monkeypatch.setattr(util, name, replacement)
    spec = importlib.util.spec_from_file_location("DiffusionRegistration", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "DiffusionRegistration", module)
    spec.loader.exec_module(module)
    return module
