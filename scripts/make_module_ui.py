"""Writes DiffusionRegistration/Resources/UI/DiffusionRegistration.ui (Qt Designer XML) from one table.

The panel is described once here so every widget gets its SlicerParameterName (for connectGui) and the
node selectors their scene connection; the option widgets' labels, tooltips, ranges, decimals and units come
from the backend's declaration (DiffusionRegistrationLib.slicer.panel_settings). Open the result in Slicer's
Qt Designer to adjust the layout.
Run: python scripts/make_module_ui.py
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DiffusionRegistration"))
from DiffusionRegistrationLib.slicer.panel_settings import PANEL_SETTINGS, UNSET  # noqa: E402

UI = Path(__file__).resolve().parents[1] / "DiffusionRegistration" / "Resources" / "UI" / "DiffusionRegistration.ui"


def prop(parent: ET.Element, name: str, kind: str, value: str, stdset: bool = True) -> None:
    element = ET.SubElement(parent, "property", {"name": name} if stdset else {"name": name, "stdset": "0"})
    if kind == "stringlist":
        holder = ET.SubElement(element, "stringlist")
        for item in value.split(","):
            ET.SubElement(holder, "string", {"notr": "true"}).text = item
    else:
        ET.SubElement(element, kind).text = value


def widget(parent: ET.Element, cls: str, name: str, parameter: str = "", **properties) -> ET.Element:
    element = ET.SubElement(parent, "widget", {"class": cls, "name": name})
    for key, (kind, value) in properties.items():
        prop(element, key, kind, value)
    if parameter:
        prop(element, "SlicerParameterName", "string", parameter, stdset=False)
    return element


def row(layout: ET.Element, index: int, label: str, child_cls: str, name: str, parameter: str = "",
        **properties) -> ET.Element:
    if label:
        item = ET.SubElement(layout, "item", {"row": str(index), "column": "0"})
        widget(item, "QLabel", f"{name}Label", text=("string", label))
        item = ET.SubElement(layout, "item", {"row": str(index), "column": "1"})
    else:
        item = ET.SubElement(layout, "item", {"row": str(index), "column": "0", "colspan": "2"})
    return widget(item, child_cls, name, parameter, **properties)


# Volume classes deriving from vtkMRMLScalarVolumeNode that are not one scalar per voxel (vector, tensor and DWI
# volumes): listed by no volume selector.
NOT_SCALAR = "vtkMRMLTensorVolumeNode,vtkMRMLDiffusionWeightedVolumeNode"
# a mask: a segmentation (exported on its volume's voxels) or a volume
MASK_TYPES = "vtkMRMLScalarVolumeNode,vtkMRMLSegmentationNode"


def node_selector(layout, index, label, name, parameter, node_types, tooltip, none=False, add=False,
                  children=False):
    hidden = {"hideChildNodeTypes": ("stringlist", NOT_SCALAR)} if children and "Volume" in node_types else {}
    return row(layout, index, label, "qMRMLNodeComboBox", name, parameter, toolTip=("string", tooltip),
               nodeTypes=("stringlist", node_types), showChildNodeTypes=("bool", str(children).lower()), **hidden,
               noneEnabled=("bool", str(none).lower()), addEnabled=("bool", str(add).lower()),
               removeEnabled=("bool", str(add).lower()), renameEnabled=("bool", str(add).lower()),
               selectNodeUponCreation=("bool", "true"))


def setting_row(layout: ET.Element, index: int, cls: str, name: str, parameter: str) -> ET.Element:
    """A row for a declared option: label, tooltip, range, decimals, unit and "unset" text from the declaration."""
    setting = PANEL_SETTINGS[parameter]
    properties = {"toolTip": ("string", setting.tooltip)}
    if setting.bounds is not None:
        number = "number" if setting.kind is int else "double"
        low, high = setting.bounds
        properties.update(minimum=(number, f"{setting.kind(low)}"), maximum=(number, f"{setting.kind(high)}"),
                          value=(number, f"{setting.kind(setting.default)}"))
        if setting.kind is float:
            properties["decimals"] = ("number", str(setting.decimals))
        if setting.optional:
            properties["specialValueText"] = ("string", UNSET)
        if setting.setting.unit:
            properties["suffix"] = ("string", f" {setting.setting.unit}")
    return row(layout, index, setting.label, cls, name, parameter, **properties)


def section(vbox: ET.Element, name: str, title: str, collapsed: bool = False) -> ET.Element:
    item = ET.SubElement(vbox, "item")
    box = widget(item, "ctkCollapsibleButton", name, text=("string", title),
                 collapsed=("bool", str(collapsed).lower()))
    return ET.SubElement(box, "layout", {"class": "QFormLayout", "name": f"{name}Layout"})


def build() -> ET.ElementTree:
    root = ET.Element("ui", {"version": "4.0"})
    ET.SubElement(root, "class").text = "DiffusionRegistration"
    top = widget(root, "qMRMLWidget", "DiffusionRegistration")
    vbox = ET.SubElement(top, "layout", {"class": "QVBoxLayout", "name": "verticalLayout"})
    selectors = []

    inputs = section(vbox, "inputsCollapsibleButton", "Inputs")
    selectors += [
        node_selector(inputs, 0, "Fixed volume:", "fixedSelector", "fixed", "vtkMRMLScalarVolumeNode",
                      "The reference volume; the result lies on its grid."),
        node_selector(inputs, 1, "Moving volume:", "movingSelector", "moving", "vtkMRMLScalarVolumeNode",
                      "The volume to align onto the fixed one; any grid or orientation."),
        node_selector(inputs, 2, "Initial transform:", "initialTransformSelector", "initialTransform",
                      "vtkMRMLTransformNode", "Where the moving volume starts: a linear transform (by default the "
                      "one it sits under when it is chosen). It is kept: 'Before registration' and every new run "
                      "go back to it.", none=True, children=True),
        node_selector(inputs, 3, "Fixed mask:", "fixedMaskSelector", "fixedMask", MASK_TYPES,
                      "Optional: similarity is measured only inside this mask: a segmentation (all its segments, "
                      "on the fixed volume's voxels), or a label map or scalar volume on the fixed grid.",
                      none=True, children=True),
        node_selector(inputs, 4, "Moving mask:", "movingMaskSelector", "movingMask", MASK_TYPES,
                      "Optional: a mask of the moving volume: a segmentation, or a label map or scalar volume on "
                      "its grid.", none=True, children=True),
    ]
    row(inputs, 5, "", "QPushButton", "sampleDataButton", text=("string", "Load the sample pair"),
        toolTip=("string", "Colin27 skull-stripped (moving) and Colin27 with skull under a known deformation "
                           "(fixed), 2 mm: the pair of the project's main job, to try the module in one click."))

    method = section(vbox, "methodCollapsibleButton", "Method")
    for index, (parameter, cls, name) in enumerate((
            ("preset", "QComboBox", "presetComboBox"), ("similarity", "QComboBox", "similarityComboBox"),
            ("backbone", "QComboBox", "backboneComboBox"), ("mode", "QComboBox", "modeComboBox"),
            ("device", "QComboBox", "deviceComboBox"), ("steps", "QSpinBox", "stepsSpinBox"),
            ("regularization", "QDoubleSpinBox", "regularizationSpinBox"),
            ("networkCheckpoint", "ctkPathLineEdit", "networkPathLineEdit"),
            ("finetuneSteps", "QSpinBox", "finetuneStepsSpinBox"))):
        setting_row(method, index, cls, name, parameter)
    row(method, 9, "", "QLabel", "presetDescriptionLabel", text=("string", ""), wordWrap=("bool", "true"))
    path_edit = next(w for w in method.iter("widget") if w.get("name") == "networkPathLineEdit")
    prop(path_edit, "filters", "set", "ctkPathLineEdit::Files|ctkPathLineEdit::Readable")
    prop(path_edit, "nameFilters", "stringlist", "Checkpoints (*.pt *.pth *.safetensors)")

    outputs = section(vbox, "outputsCollapsibleButton", "Outputs")
    selectors += [
        node_selector(outputs, 0, "Output transform:", "outputTransformSelector", "outputTransform",
                      "vtkMRMLTransformNode", "The fixed-to-moving grid transform; it is applied to the moving "
                      "volume. None (the default): every run makes a new transform, so no result is lost. A "
                      "transform chosen here is refilled, after a confirmation if it holds a result.",
                      none=True, add=True, children=True),
        node_selector(outputs, 1, "Output warped volume:", "outputVolumeSelector", "outputVolume",
                      "vtkMRMLScalarVolumeNode", "Optional: the moving volume resampled on the fixed grid.",
                      none=True, add=True, children=True),
    ]
    setting_row(outputs, 2, "QDoubleSpinBox", "checkerboardSquareSpinBox", "checkerboardSquareMm")
    setting_row(outputs, 3, "QCheckBox", "agreementCheckBox", "agreementMap")
    row(outputs, 4, "Keep temporary files:", "QCheckBox", "keepFilesCheckBox", "keepTemporaryFiles",
        toolTip=("string", "Keep the run's folder (inputs, job.json, the backend's outputs and report) in "
                           "Slicer's temporary folder instead of removing it."))
    row(outputs, 5, "", "QPushButton", "openFolderButton", text=("string", "Open the last run's folder"),
        enabled=("bool", "false"))

    review = section(vbox, "reviewCollapsibleButton", "Review")
    row(review, 0, "Show:", "QComboBox", "layerComboBox",
        toolTip=("string", "What the slice views show over the fixed volume: the moving volume under the result, "
                           "the warped volume, the checkerboard, the agreement map or the Jacobian determinant "
                           "(colour), or the fixed volume alone."))
    row(review, 1, "", "QPushButton", "beforeAfterButton", text=("string", "Before registration"),
        checkable=("bool", "true"),
        toolTip=("string", "Pressed: the moving volume as its initial transform places it (and the checkerboard "
                           "before registration); released: after."))

    for name, cls, extra in (("applyButton", "QPushButton", {"text": ("string", "Apply"), "enabled": ("bool", "false"),
                                                               "toolTip": ("string", "Run the registration.")}),
                             ("progressBar", "QProgressBar", {"value": ("number", "0")}),
                             ("statusLabel", "QLabel", {"text": ("string", ""), "wordWrap": ("bool", "true")}),
                             ("logTextEdit", "QPlainTextEdit", {"readOnly": ("bool", "true"),
                                                                "maximumBlockCount": ("number", "2000")})):
        widget(ET.SubElement(vbox, "item"), cls, name, **extra)
    spacer = ET.SubElement(ET.SubElement(vbox, "item"), "spacer", {"name": "verticalSpacer"})
    prop(spacer, "orientation", "enum", "Qt::Vertical")

    custom = ET.SubElement(root, "customwidgets")
    for cls, base, header, container in (
            ("qMRMLNodeComboBox", "QWidget", "qMRMLNodeComboBox.h", False),
            ("qMRMLWidget", "QWidget", "qMRMLWidget.h", True),
            ("ctkCollapsibleButton", "QWidget", "ctkCollapsibleButton.h", True),
            ("ctkPathLineEdit", "QWidget", "ctkPathLineEdit.h", False)):
        element = ET.SubElement(custom, "customwidget")
        ET.SubElement(element, "class").text = cls
        ET.SubElement(element, "extends").text = base
        ET.SubElement(element, "header").text = header
        ET.SubElement(element, "container").text = "1" if container else "0"
    ET.SubElement(root, "resources")
    connections = ET.SubElement(root, "connections")
    for selector in selectors:
        connection = ET.SubElement(connections, "connection")
        for tag, text in (("sender", "DiffusionRegistration"), ("signal", "mrmlSceneChanged(vtkMRMLScene*)"),
                          ("receiver", selector.get("name")), ("slot", "setMRMLScene(vtkMRMLScene*)")):
            ET.SubElement(connection, tag).text = text
    tree = ET.ElementTree(root)
    ET.indent(tree, space=" ")
    return tree


if __name__ == "__main__":
    UI.parent.mkdir(parents=True, exist_ok=True)
    build().write(UI, encoding="UTF-8", xml_declaration=True)
    print(f"wrote {UI}")
