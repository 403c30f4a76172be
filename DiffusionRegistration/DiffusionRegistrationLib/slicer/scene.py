"""Saving and loading a whole scene (.mrml with its data files beside it, or one .mrb bundle) headless.

In the Slicer application `slicer.util.saveScene` does this through Qt; these helpers do the same with
MRML alone so scripts and tests can write scenes a user opens in Slicer.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "node"


def save_scene(scene, path: str | os.PathLike) -> Path:
    """Writes the scene to a .mrb bundle, or to a .mrml file with every storable node's data beside it."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mrb":
        if not scene.WriteToMRB(str(path)):
            raise OSError(f"{path}: MRML could not write the scene bundle")
        return path
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    used: set[str] = set()
    for node in list(scene.GetNodesByClass("vtkMRMLStorableNode")):
        if node.GetHideFromEditors() and node.GetStorageNode() is None:
            continue
        if node.GetStorageNode() is None:
            if not node.AddDefaultStorageNode():
                continue
        storage = node.GetStorageNode()
        stem = _file_stem(node.GetName() or node.GetID())
        while stem in used:
            stem += "_"
        used.add(stem)
        storage.SetFileName(str(path.parent / f"{stem}.{storage.GetDefaultWriteFileExtension()}"))
        if not storage.WriteData(node):
            raise OSError(f"{storage.GetFileName()}: MRML could not write the data of '{node.GetName()}'")
    if not scene.Commit(str(path)):
        raise OSError(f"{path}: MRML could not write the scene file")
    return path


def load_scene(path: str | os.PathLike):
    """A new vtkMRMLScene read from a .mrml file or a .mrb bundle, with every node's data loaded.

    Reading a bundle needs the cache and data-I/O managers the Slicer application normally provides;
    a temporary cache folder stands in for the application's and is removed once the data is in memory.
    """
    from slicer import vtkCacheManager, vtkDataIOManager, vtkMRMLScene

    path = Path(path).resolve()
    scene = vtkMRMLScene()
    if path.suffix.lower() == ".mrb":
        with tempfile.TemporaryDirectory(prefix="diffreg-mrb-") as cache_folder:
            cache = vtkCacheManager()
            cache.SetRemoteCacheDirectory(cache_folder)
            scene.SetCacheManager(cache)
            data_io = vtkDataIOManager()
            data_io.SetCacheManager(cache)
            scene.SetDataIOManager(data_io)
            ok = scene.ReadFromMRB(str(path))
    else:
        scene.SetURL(str(path))
        ok = scene.Import()
    if not ok:
        raise OSError(f"{path}: MRML could not read the scene")
    return scene
