"""DiffusionRegistration backend: deformable registration guided by diffusion-model features.

    import DiffusionRegistrationLib as dr
    result = dr.register("fixed.nii.gz", "moving.nii.gz", preset="default")
    result.save("out")

The names below are loaded on first use, so importing the package imports neither torch nor SimpleITK
(the command line and the Slicer module start fast). The layers, top down: cli/ and slicer/ (front ends),
network/, engine/ (config, registration, result, outputs), similarity/, features/ (backbones, model
catalog, weights), geometry/ (sampling, transforms, metrics), io/ (files); errors.py and progress.py
are used by all.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "register": "api", "apply": "api", "evaluate": "api", "Registration": "api", "presets": "engine.config",
    "Image": "io.images", "Grid": "io.images", "RegistrationConfig": "engine.config",
    "RegistrationError": "errors", "Cancelled": "errors", "Progress": "progress",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
