"""Landmark readers on small files in each format, Slicer's own writer and reader, and bad files."""
import json

import numpy as np
import pytest

from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.io.landmarks import Landmarks, match_landmarks, read_landmarks, write_mrk_json

RAS = np.array([[10.0, 20.0, 30.0], [-1.5, 2.5, -3.5]])
LPS = np.array([[-10.0, -20.0, 30.0], [1.5, -2.5, -3.5]])


def mrk_json(system: str, points: np.ndarray) -> dict:
    control = [{"id": str(i + 1), "label": f"P{i + 1}", "position": list(p), "positionStatus": "defined"}
               for i, p in enumerate(points)]
    return {"markups": [{"type": "Fiducial", "coordinateSystem": system, "controlPoints": control}]}


@pytest.mark.parametrize("system,points", [("RAS", RAS), ("LPS", LPS)])
def test_mrk_json_in_either_system_reads_as_lps(tmp_path, system, points):
    path = tmp_path / "points.mrk.json"
    document = mrk_json(system, points)
    document["markups"][0]["controlPoints"].append({"id": "3", "label": "unplaced", "positionStatus": "undefined"})
    path.write_text(json.dumps(document))
    landmarks = read_landmarks(path)
    np.testing.assert_allclose(landmarks.points, LPS)
    assert landmarks.labels == ["P1", "P2"]


@pytest.mark.parametrize("header,points", [("# CoordinateSystem = RAS", RAS), ("# CoordinateSystem = LPS", LPS),
                                           ("# CoordinateSystem = 0", RAS), ("# CoordinateSystem = 1", LPS),
                                           ("", RAS)])
def test_fcsv_header_decides_the_system(tmp_path, header, points):
    lines = ["# Markups fiducial file version = 4.11", header,
             "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"]
    lines += [f"vtkMRMLMarkupsFiducialNode_{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,\"F, {i}\",,"
              for i, p in enumerate(points)]
    path = tmp_path / "points.fcsv"
    path.write_text("\n".join(lines) + "\n")
    landmarks = read_landmarks(path)
    np.testing.assert_allclose(landmarks.points, LPS)
    assert landmarks.labels == ["F, 0", "F, 1"]


@pytest.mark.parametrize("text,labels", [
    ("x,y,z\n-10,-20,30\n1.5,-2.5,-3.5\n", ["", ""]),
    ("label,x,y,z\na,-10,-20,30\nb,1.5,-2.5,-3.5\n", ["a", "b"]),
    ("-10,-20,30\n1.5,-2.5,-3.5\n", ["", ""]),
    ("a,-10,-20,30\n\nb,1.5,-2.5,-3.5\n", ["a", "b"]),
    ("# CoordinateSystem = RAS\nname,z,y,x\na,30,20,10\nb,-3.5,2.5,-1.5\n", ["a", "b"]),
])
def test_csv_variants(tmp_path, text, labels):
    path = tmp_path / "points.csv"
    path.write_text(text)
    landmarks = read_landmarks(path)
    np.testing.assert_allclose(landmarks.points, LPS)
    assert landmarks.labels == labels


def test_csv_2d_points(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("1,2\n3.5,-4\n")
    np.testing.assert_allclose(read_landmarks(path).points, [[1, 2], [3.5, -4]])


def test_files_written_by_slicer_read_back_in_lps(tmp_path):
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    for point, label in zip(RAS, ["A", "B"]):  # Slicer holds RAS internally
        node.AddControlPoint(*point, label)
    storage = {"a.mrk.json": (slicer.vtkMRMLMarkupsJsonStorageNode, 0),
               "b.mrk.json": (slicer.vtkMRMLMarkupsJsonStorageNode, 1),
               "c.fcsv": (slicer.vtkMRMLMarkupsFiducialStorageNode, 0),
               "d.fcsv": (slicer.vtkMRMLMarkupsFiducialStorageNode, 1)}
    for name, (kind, system) in storage.items():
        writer = kind()
        scene.AddNode(writer)
        writer.SetCoordinateSystem(system)  # 0 = RAS, 1 = LPS
        writer.SetFileName(str(tmp_path / name))
        assert writer.WriteData(node)
        landmarks = read_landmarks(tmp_path / name)
        np.testing.assert_allclose(landmarks.points, LPS, err_msg=name)
        assert landmarks.labels == ["A", "B"]


def test_written_mrk_json_reads_back_and_in_slicer(tmp_path):
    path = write_mrk_json(tmp_path / "out.mrk.json", Landmarks(LPS, ["A", "B"]))
    np.testing.assert_allclose(read_landmarks(path).points, LPS)
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    reader = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(reader)
    reader.SetFileName(str(path))
    assert reader.ReadData(node)
    ras = np.array([node.GetNthControlPointPosition(i) for i in range(node.GetNumberOfControlPoints())])
    np.testing.assert_allclose(ras, RAS)
    assert [node.GetNthControlPointLabel(i) for i in range(2)] == ["A", "B"]


def test_matching_by_label_then_by_order():
    fixed = Landmarks(np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]]), ["a", "b", "c"])
    moving = Landmarks(np.array([[12.0, 2, 2], [10, 0, 0]]), ["c", "a"])
    f, m, labels = match_landmarks(fixed, moving)
    assert labels == ["a", "c"]
    np.testing.assert_allclose(m - f, [[10, 0, 0], [10, 0, 0]])
    other = Landmarks(np.array([[5.0, 5, 5], [6, 6, 6], [7, 7, 7]]), ["x", "y", "z"])
    f, m, labels = match_landmarks(fixed, other)
    np.testing.assert_allclose(m - f, 5.0)
    with pytest.raises(RegistrationError, match="cannot be paired"):
        match_landmarks(fixed, Landmarks(np.zeros((2, 3)), ["x", "y"]))


@pytest.mark.parametrize("name,text,expected", [
    ("bad.mrk.json", '{"markups": [\n  {"controlPoints": [\n    {"position": [1, 2,]}\n', r"bad\.mrk\.json, line 3"),
    ("bad.mrk.json", '{"something": 1}', "no \"markups\" list"),
    ("bad.mrk.json", '{"markups": [{"controlPoints": [{"label": "A", "position": [1, 2]}]}]}', "control point 1"),
    ("bad.fcsv", "# CoordinateSystem = LPS\n1,2,x3,4\n", r"bad\.fcsv, line 2: y 'x3' is not a number"),
    ("bad.fcsv", "# CoordinateSystem = XYZ\n1,2,3,4\n", r"line 1: unknown coordinate system"),
    ("bad.csv", "label,x,y,z\na,1,2,3\nb,1,2\n", r"bad\.csv, line 3: has 3 fields"),
    ("bad.csv", "1,2,3\n4,5,6,7,8\n", r"line 2: has 5 fields"),
    ("bad.csv", "a,b,c\n", "names no x and y"),
    ("bad.csv", "x,y,z\n", "holds no landmarks"),
    ("bad.txt", "1,2,nan\n", "line 1: z is nan"),
    ("bad.xyz", "1,2,3\n", "unknown format"),
])
def test_bad_files_raise_naming_file_and_line(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RegistrationError, match=expected):
        read_landmarks(path)


def test_missing_file(tmp_path):
    with pytest.raises(RegistrationError, match="no such file"):
        read_landmarks(tmp_path / "absent.fcsv")
