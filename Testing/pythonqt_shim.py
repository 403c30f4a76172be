"""The `qt` module as PythonQt shows Qt to Slicer's Python, built on real Qt classes (PySide6 from PyPI).

Every class is the real PySide6 class, subclassed only to add what PythonQt adds (PythonQt's documentation,
"Qt properties" and "Signals and slots"):
- Qt properties read and write as attributes (`button.enabled = False`, `bar.value`), as PythonQt's
  property access does; methods of other names stay as they are;
- `obj.connect("signal(args)", slot)` and `obj.disconnect(...)`, PythonQt's string form of a connection;
- `exec_()`, the name PythonQt gives QDialog/QEventLoop/QMessageBox::exec in Slicer 5.8 and 5.10.
Widgets that the .ui loader creates are built from these classes too, so a panel loaded with
slicer.util.loadUI (slicer-core's own util.py) behaves as in Slicer. Headless: QT_QPA_PLATFORM=offscreen.
"""
from __future__ import annotations

import os
import types

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402

APPLICATION = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["pytest"])


def _connect(self, signature: str, slot) -> bool:
    """PythonQt's obj.connect("clicked(bool)", slot)."""
    getattr(self, signature.split("(")[0]).connect(slot)
    return True


def _disconnect(self, signature: str, slot) -> bool:
    """PythonQt's obj.disconnect("canceled()", slot)."""
    getattr(self, signature.split("(")[0]).disconnect(slot)
    return True


def _property_accessor(base: type, name: str) -> property | None:
    """The Qt property `name` as an attribute, through the C++ getter and setter (as PythonQt does). PySide's own
    property read/write on a Python subclass would come back to this attribute."""
    capital = name[0].upper() + name[1:]
    getter = next((getattr(base, n) for n in (name, "is" + capital, "has" + capital)
                   if callable(getattr(base, n, None))), None)
    setter = getattr(base, "set" + capital, None)
    if getter is None:
        return None
    return property(lambda self: getter(self), (lambda self, value: setter(self, value)) if setter else None)


def pythonqt_class(base: type, extra: dict | None = None) -> type:
    """A subclass of the PySide6 class `base` with PythonQt's attribute access to its Qt properties."""
    namespace = {"connect": _connect, "disconnect": _disconnect, "__module__": "qt"}
    meta = base.staticMetaObject
    for index in range(meta.propertyCount()):
        name = meta.property(index).name()
        accessor = None if isinstance(getattr(base, name, None), QtCore.Property) else _property_accessor(base, name)
        if accessor is not None:  # (a property declared in Python already is an attribute)
            namespace[name] = accessor
    namespace["name"] = property(QtCore.QObject.objectName, QtCore.QObject.setObjectName)  # PythonQt's alias
    if hasattr(base, "exec"):
        namespace["exec_"] = lambda self, *args: base.exec(self, *args)
    namespace.update(extra or {})
    return type(base.__name__, (base,), namespace)


QT_CLASSES = ("QObject", "QTimer", "QEventLoop", "QFile", "QSettings", "QUrl")
GUI_CLASSES = ("QDesktopServices", "QPixmap", "QImage")
WIDGET_CLASSES = ("QWidget", "QLabel", "QPushButton", "QToolButton", "QComboBox", "QSpinBox", "QDoubleSpinBox",
                  "QCheckBox", "QProgressBar", "QProgressDialog", "QPlainTextEdit", "QLineEdit", "QMessageBox",
                  "QDialog", "QFrame", "QGroupBox", "QVBoxLayout", "QHBoxLayout", "QFormLayout", "QScrollArea",
                  "QButtonGroup", "QRadioButton", "QSlider", "QTextBrowser", "QFileDialog")


def build() -> types.ModuleType:
    """The `qt` module: PythonQt-style subclasses of the real classes, the namespaces as they are."""
    module = types.ModuleType("qt")
    module.__doc__ = __doc__
    for names, source in ((QT_CLASSES, QtCore), (GUI_CLASSES, QtGui), (WIDGET_CLASSES, QtWidgets)):
        for name in names:
            cls = getattr(source, name)
            if isinstance(getattr(cls, "staticMetaObject", None), QtCore.QMetaObject) and \
                    issubclass(cls, QtCore.QObject):
                cls = pythonqt_class(cls)
            setattr(module, name, cls)
    module.Qt = QtCore.Qt
    module.QApplication = QtWidgets.QApplication
    module.QCursor = QtGui.QCursor
    module.QSize = QtCore.QSize
    module.QUiLoader = UiLoader
    return module


class UiLoader(QtUiTools.QUiLoader):
    """QUiLoader that builds the PythonQt-style classes (and the registered stand-ins of custom widgets)."""

    custom: dict[str, type] = {}

    def createWidget(self, className, parent=None, name=""):
        cls = UiLoader.custom.get(className) or getattr(QT, className, None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, QtWidgets.QWidget):
            return super().createWidget(className, parent, name)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget


QT = build()
