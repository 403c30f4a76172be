"""Landmark files: 3D Slicer markups (.mrk.json, .fcsv) and plain CSV, always returned in LPS mm.

- .mrk.json: Slicer's markups JSON; each markup's "coordinateSystem" ("LPS" or "RAS") is honoured.
  Control points whose positionStatus is "undefined" (placed in the list but never positioned) are
  skipped.
- .fcsv: Slicer's older format; the "# CoordinateSystem = RAS|LPS|0|1" header line is honoured
  (0 = RAS, 1 = LPS, as Slicer numbers them); RAS when absent; "# columns =" gives the column order.
- .csv (or .txt): one landmark per row, columns x,y(,z) or label,x,y(,z), optionally with a header row
  naming them. Coordinates are LPS (ITK's physical space) unless a comment line
  "# CoordinateSystem = RAS" says otherwise.
Two lists are matched by label where they share labels, else by order.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RegistrationError
from .atomic import atomic_path
from .paths import input_file
from .structured import SyntaxProblem, parse_json

_RAS_TO_LPS_2D = np.array([-1.0, -1.0])
_FCSV_COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID".split(",")


@dataclass
class Landmarks:
    """Named points in LPS mm: `points` [N, D] (D = 2 or 3), `labels` N strings (may be empty)."""

    points: np.ndarray
    labels: list[str]
    path: str = "<in-memory landmarks>"

    def __len__(self) -> int:
        return len(self.labels)


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """Flips the first two axes (the same operation maps LPS to RAS)."""
    points = np.array(points, dtype=np.float64)
    points[:, :2] *= _RAS_TO_LPS_2D
    return points


def _bad(path: Path, line: int | None, what: str) -> RegistrationError:
    where = f"{path}, line {line}" if line is not None else str(path)
    return RegistrationError(f"landmark file {where}: {what}")


def _coordinate_system(path: Path, line: int | None, value: str) -> str:
    value = value.strip().upper()
    names = {"RAS": "RAS", "0": "RAS", "LPS": "LPS", "1": "LPS"}
    if value not in names:
        raise _bad(path, line, f"unknown coordinate system '{value}'. Use RAS or LPS.")
    return names[value]


def _read_json(path: Path, text: str) -> Landmarks:
    try:
        document = parse_json(text, f"landmark file {path}")
    except SyntaxProblem as error:
        raise _bad(path, error.line, f"is not valid JSON ({error.reason}). Save it again from Slicer "
                                     "(Markups module) or fix the syntax.") from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise _bad(path, None, 'has no "markups" list; it is not a Slicer markups file (.mrk.json).')
    points, labels = [], []
    for index, markup in enumerate(markups, 1):
        control_points = markup.get("controlPoints", []) if isinstance(markup, dict) else None
        if not isinstance(control_points, list):
            raise _bad(path, None, f'markup {index} is not an object with a "controlPoints" list; save the file '
                                   "again from Slicer (Markups module).")
        system = _coordinate_system(path, None, str(markup.get("coordinateSystem", "LPS")))
        for number, point in enumerate(control_points, 1):
            if not isinstance(point, dict):
                raise _bad(path, None, f"control point {number} of markup {index} is not an object.")
            if point.get("positionStatus", "defined") == "undefined":
                continue
            position = point.get("position")
            if (not isinstance(position, list) or len(position) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in position)):
                raise _bad(path, None, f"control point {number} ('{point.get('label', '')}') has no valid "
                                       "position (three numbers expected).")
            xyz = np.asarray(position, dtype=np.float64)[None]
            points.append(ras_to_lps(xyz)[0] if system == "RAS" else xyz[0])
            labels.append(str(point.get("label", "")))
    return _finish(path, points, labels)


def _number(path: Path, line: int, text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(path, line, f"{name} '{text}' is not a number.") from None
    if not np.isfinite(value):
        raise _bad(path, line, f"{name} is {text}; coordinates must be finite.")
    return value


def _read_fcsv(path: Path, text: str) -> Landmarks:
    system, columns = "RAS", _FCSV_COLUMNS
    points, labels = [], []
    for line, row in _rows(text):
        if row[0].startswith("#"):
            comment = ",".join(row).lstrip("#").strip()
            key, _, value = comment.partition("=")
            if key.strip().lower() == "coordinatesystem":
                system = _coordinate_system(path, line, value)
            elif key.strip().lower() == "columns":
                columns = [c.strip() for c in value.split(",")]
            continue
        index = {name: i for i, name in enumerate(columns)}
        if not {"x", "y", "z"} <= index.keys():
            raise _bad(path, line, "the '# columns =' header names no x, y, z columns.")
        if len(row) <= max(index["x"], index["y"], index["z"]):
            raise _bad(path, line, f"has {len(row)} fields; expected the columns {','.join(columns)}.")
        points.append([_number(path, line, row[index[a]], a) for a in "xyz"])
        labels.append(row[index["label"]] if "label" in index and index["label"] < len(row) else "")
    if points and system == "RAS":
        points = list(ras_to_lps(np.asarray(points)))
    return _finish(path, points, labels)


def _read_csv(path: Path, text: str) -> Landmarks:
    system, header = "LPS", None
    points, labels = [], []
    for line, row in _rows(text):
        if row[0].startswith("#"):
            key, _, value = ",".join(row).lstrip("#").partition("=")
            if key.strip().lower() == "coordinatesystem":
                system = _coordinate_system(path, line, value)
            continue
        if header is None and not points and not _is_number(row[-1]):
            header = [c.strip().lower() for c in row]
            if not {"x", "y"} <= set(header):
                raise _bad(path, line, f"header {','.join(row)} names no x and y columns. Use x,y,z or "
                                       "label,x,y,z.")
            continue
        if header is not None:
            axes = [a for a in "xyz" if a in header]
            if len(row) != len(header):
                raise _bad(path, line, f"has {len(row)} fields but the header has {len(header)}.")
            values = [row[header.index(a)] for a in axes]
            name = next((row[header.index(k)] for k in ("label", "name", "id") if k in header), "")
        else:
            name, values = (row[0], row[1:]) if not _is_number(row[0]) else ("", row)
            if len(values) not in (2, 3):
                raise _bad(path, line, f"has {len(row)} fields; expected x,y,z or label,x,y,z.")
        points.append([_number(path, line, v, a) for v, a in zip(values, "xyz")])
        labels.append(name.strip())
    if len({len(p) for p in points}) > 1:
        raise _bad(path, None, "mixes 2D and 3D points; give the same number of coordinates on every row.")
    if points and system == "RAS":
        points = list(ras_to_lps(np.asarray(points)))
    return _finish(path, points, labels)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _rows(text: str):
    """(line number, stripped fields) of every non-empty line, parsed as CSV (quoted labels allowed)."""
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        row = [field.strip() for field in next(csv.reader(io.StringIO(raw)))]
        if row:
            yield line, row


def _finish(path: Path, points: list, labels: list[str]) -> Landmarks:
    if not points:
        raise _bad(path, None, "holds no landmarks. Place points (Slicer: Markups > Point List) and save.")
    if not np.isfinite(np.asarray(points, dtype=np.float64)).all():
        raise _bad(path, None, "holds NaN or infinite coordinates; give finite positions.")
    return Landmarks(np.asarray(points, dtype=np.float64), labels, str(path))


def read_landmarks(path: str | os.PathLike) -> Landmarks:
    """Reads .mrk.json, .fcsv or .csv/.txt landmarks into LPS mm. Bad files raise RegistrationError."""
    path = input_file(path, "landmark file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as error:
        raise _bad(path, None, f"cannot be read as text ({error}).") from None
    try:
        return _read_text(path, text)
    except csv.Error as error:  # a field beyond the csv module's size limit, a NUL byte
        raise _bad(path, None, f"cannot be read as CSV ({error}).") from None


def _read_text(path: Path, text: str) -> Landmarks:
    name = path.name.lower()
    if name.endswith(".json"):
        return _read_json(path, text)
    if name.endswith(".fcsv"):
        return _read_fcsv(path, text)
    if name.endswith((".csv", ".txt")):
        return _read_csv(path, text)
    raise _bad(path, None, "unknown format. Use a Slicer markups file (.mrk.json or .fcsv) or a CSV file "
                           "(.csv) with columns x,y,z or label,x,y,z in LPS mm.")


def write_mrk_json(path: str | os.PathLike, landmarks: Landmarks) -> Path:
    """Writes a Slicer markups point list (.mrk.json, coordinateSystem LPS), atomically."""
    points = np.asarray(landmarks.points, dtype=np.float64)
    if points.shape[1] == 2:
        points = np.concatenate([points, np.zeros((len(points), 1))], axis=1)
    control = [{"id": str(i + 1), "label": label or f"F-{i + 1}", "position": [float(v) for v in point],
                "positionStatus": "defined"} for i, (point, label) in enumerate(zip(points, landmarks.labels))]
    document = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                   "Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                     "controlPoints": control}],
    }
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(document, indent=2))
    return Path(path)


def match_landmarks(fixed: Landmarks, moving: Landmarks) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pairs two landmark lists: by label when they share labels (each used once), else by order.

    Returns (fixed points, moving points, labels) of the matched pairs.
    """
    def unique(labels: list[str]) -> bool:
        return all(labels) and len(set(labels)) == len(labels)

    if fixed.points.shape[1] != moving.points.shape[1]:
        raise RegistrationError(f"landmarks {fixed.path} are {fixed.points.shape[1]}D but {moving.path} are "
                                f"{moving.points.shape[1]}D.")
    common = [label for label in fixed.labels if label in set(moving.labels)]
    if unique(fixed.labels) and unique(moving.labels) and common:
        i = [fixed.labels.index(label) for label in common]
        j = [moving.labels.index(label) for label in common]
        return fixed.points[i], moving.points[j], common
    if len(fixed) != len(moving):
        raise RegistrationError(f"landmarks {fixed.path} ({len(fixed)} points) and {moving.path} "
                                f"({len(moving)} points) share no labels and differ in count, so they cannot "
                                "be paired. Give the same labels to corresponding points, or list them in "
                                "the same order.")
    labels = [a or b or str(k + 1) for k, (a, b) in enumerate(zip(fixed.labels, moving.labels))]
    return fixed.points.copy(), moving.points.copy(), labels

