"""Writes a registration's outputs as one all-or-nothing set: transform, warped image, maps, report."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..io.atomic import OutputSet
from ..io.images import Image, write_image
from ..geometry.metrics import folding, jacobian_determinant
from ..io.pictures import before_after_checkerboard
from .result import Result
from ..io.transform_files import write_affine, write_displacement


@dataclass
class OutputRequest:
    """Which files to write; names are relative to the output folder unless absolute."""

    transform: str = "transform.h5"
    vector_field: Optional[str] = "transform.nii.gz"
    warped: Optional[str] = "warped.nii.gz"
    jacobian: Optional[str] = "jacobian.nii.gz"
    checkerboard: Optional[str] = "checkerboard.png"
    agreement: Optional[str] = None  # e.g. "agreement.nii.gz": the local similarity map (engine.agreement)
    affine: Optional[str] = None
    inverse: Optional[str] = None
    report: str = "report.json"


def summary(result: Result, determinant: np.ndarray) -> dict[str, Any]:
    """Numbers every run reports: time, folding and the Jacobian range, the optimisation history."""
    return {"seconds": round(result.seconds, 3), **folding(determinant),
            "max_displacement_mm": float(np.linalg.norm(result.displacement, axis=-1).max()),
            "history": result.history, "config": result.config}


def write_outputs(result: Result, fixed: Image, moving: Image, output_dir: str | os.PathLike,
                  request: Optional[OutputRequest] = None, extra: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """Writes the requested files into `output_dir`; returns role -> path. Nothing is left on failure."""
    request = request or OutputRequest()
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    warped = result.warped if result.warped is not None else result.warp(moving)
    determinant = jacobian_determinant(result.displacement, result.fixed_grid)
    with OutputSet() as outputs:
        def target(role: str, name: str) -> Path:
            final = folder / name
            written[role] = str(final.resolve())
            return outputs.path(final)

        write_displacement(result.displacement, result.fixed_grid, target("transform", request.transform))
        if request.vector_field:
            write_displacement(result.displacement, result.fixed_grid, target("vector_field", request.vector_field))
        if request.warped:
            write_image(warped, target("warped", request.warped))
        if request.jacobian:
            write_image(Image(determinant.astype(np.float32), result.fixed_grid), target("jacobian", request.jacobian))
        if request.affine and result.affine is not None:
            write_affine(result.affine, target("affine", request.affine))
        if request.inverse and result.inverse is not None:
            write_displacement(result.inverse, result.moving_grid, target("inverse", request.inverse))
        if request.agreement:
            from .agreement import agreement_map

            write_image(agreement_map(fixed, warped, result.config), target("agreement", request.agreement))
        if request.checkerboard:
            before = Result.identity(result.fixed_grid, result.moving_grid).warp(moving)
            before_after_checkerboard(fixed, before, warped, target("checkerboard", request.checkerboard))
        report = {**summary(result, determinant), **(extra or {}), "fixed": fixed.path, "moving": moving.path}
        report["outputs"] = dict(written, report=str((folder / request.report).resolve()))
        report_path = target("report", request.report)
        report_path.write_text(json.dumps(report, indent=2, default=_json_default))
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
