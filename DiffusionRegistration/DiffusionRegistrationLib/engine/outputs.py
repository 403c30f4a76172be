"""Writes a registration's outputs as one all-or-nothing set: transform, warped image, maps, report."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from ..errors import RegistrationError
from ..geometry.metrics import folding, jacobian_determinant
from ..io.atomic import OutputSet, os_error, remove_partial_files, signals_held, write_json
from ..core.image import Grid, Image
from ..io.images import IMAGE_WRITE_SUFFIXES, write_image
from ..io.pictures import before_after_checkerboard
from ..io.transform_files import AFFINE_SUFFIXES, FIELD_SUFFIXES, IMAGE_SUFFIXES, write_affine, write_displacement
from .result import Result


@dataclass
class OutputRequest:
    """Which files to write; names are relative to the output folder unless absolute."""

    transform: str = "transform.h5"
    vector_field: Optional[str] = None  # e.g. "transform.nii.gz": the field again, as a vector image (ANTs)
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
            "history": result.history, "warnings": result.warnings, "config": result.config,
            "foreground": result.foreground}


ROLE_SUFFIXES = {"transform": FIELD_SUFFIXES + IMAGE_SUFFIXES, "vector_field": FIELD_SUFFIXES + IMAGE_SUFFIXES,
                 "inverse": FIELD_SUFFIXES + IMAGE_SUFFIXES, "warped": IMAGE_WRITE_SUFFIXES,
                 "jacobian": IMAGE_WRITE_SUFFIXES, "agreement": IMAGE_WRITE_SUFFIXES, "checkerboard": (".png",),
                 "affine": AFFINE_SUFFIXES,
                 "report": (".json",)}


def planned_outputs(output_dir: str | os.PathLike, request: OutputRequest) -> dict[str, Path]:
    """role -> final path of every requested file (the vector field is left out when the transform itself
    is written under its name: the same field, once)."""
    folder = Path(output_dir)
    targets = {f.name: folder / getattr(request, f.name) for f in fields(request) if getattr(request, f.name)}
    if targets.get("vector_field") == targets["transform"]:
        del targets["vector_field"]
    return targets


def _bytes_needed(role: str, fixed_grid: Grid, moving_grid: Grid) -> int:
    """An upper bound of a file's size (uncompressed data plus headers)."""
    fixed, moving = int(np.prod(fixed_grid.size)), int(np.prod(moving_grid.size))
    per_role = {"transform": fixed * fixed_grid.dim * 8, "vector_field": fixed * fixed_grid.dim * 8,
                "inverse": moving * moving_grid.dim * 8, "warped": fixed * 4, "jacobian": fixed * 4,
                "agreement": fixed * 4}
    return per_role.get(role, 0) + (1 << 20)


def check_outputs(output_dir: str | os.PathLike, request: OutputRequest, inputs: Iterable[Optional[str]],
                  fixed_grid: Grid, moving_grid: Grid) -> dict[str, Path]:
    """Before any registration work: every output name has a known suffix, overwrites no input and no
    folder, and its folder exists (it is created) and takes a file of the expected size. Removes
    temporaries of killed runs there. RegistrationError naming the file or folder and the fix."""
    targets = planned_outputs(output_dir, request)
    seen: dict[Path, str] = {}
    for role, target in targets.items():
        check_output_name(target, f"{role} output", ROLE_SUFFIXES[role], inputs)
        if target.resolve() in seen:
            raise RegistrationError(f"outputs {seen[target.resolve()]} and {role} are both {target}; give them "
                                    "different names.")
        seen[target.resolve()] = role
    needed: dict[Path, int] = {}
    for role, target in targets.items():
        needed[target.parent] = needed.get(target.parent, 0) + _bytes_needed(role, fixed_grid, moving_grid)
    for folder, size in needed.items():
        check_folder(folder, size)
    return targets


def check_output_name(target: Path, role: str, suffixes: Iterable[str], inputs: Iterable[Optional[str]]) -> None:
    """RegistrationError when `target` has none of `suffixes`, is a folder, or is one of `inputs`."""
    name, suffixes = target.name.lower(), tuple(suffixes)
    if not name.endswith(suffixes) or name in suffixes:
        raise RegistrationError(f"{role} {target}: unknown file type; name it with one of {', '.join(suffixes)}.")
    if target.is_dir():
        raise RegistrationError(f"{role} {target}: is a folder; give a file name.")
    for given in filter(None, inputs):
        if target.exists() and Path(given).exists() and os.path.samefile(target, given):
            raise RegistrationError(f"{role} {target}: is the input {given}; writing it would destroy the input. "
                                    "Choose another output name or folder.")


def check_folder(folder: Path, size: int = 1 << 20) -> None:
    """Creates `folder` if needed; RegistrationError unless a file can be made there and `size` bytes are free.
    Temporaries of killed runs in it are removed."""
    if folder.exists() and not folder.is_dir():
        raise RegistrationError(f"output folder {folder}: is a file, not a folder. Choose another --output-dir.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_partial_files(folder, recursive=False)
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as error:
        raise os_error(folder, error, "cannot write into the output folder") from None
    if free < size:
        raise RegistrationError(f"output folder {folder}: {free / 2**20:.1f} MiB free but the outputs need up to "
                                f"{size / 2**20:.1f} MiB. Free some space or choose another --output-dir.")


def _previous_outputs(report: Path, keep: Iterable[Optional[str]]) -> list[Path]:
    """Files an earlier run's report lists in the report's own folder (never elsewhere, never an input of this
    run): replaced or retired by this run."""
    try:
        listed = json.loads(report.read_text(encoding="utf-8")).get("outputs", {})
        paths = [Path(p) for p in listed.values() if isinstance(p, str)]
    except (OSError, ValueError, AttributeError):
        return []
    kept = {Path(p).resolve() for p in keep if p}
    folder = report.parent.resolve()
    return [p for p in paths if p.is_file() and p.resolve().parent == folder and p.resolve() not in kept]


def write_outputs(result: Result, fixed: Image, moving: Image, output_dir: str | os.PathLike,
                  request: Optional[OutputRequest] = None, extra: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """Writes the requested files into `output_dir` as one set, each read back before the commit; files
    an earlier run listed in its report and this one does not write are removed at the commit.
    Returns role -> path. Nothing is left on failure and the earlier set stays as it was."""
    request = request or OutputRequest()
    targets = check_outputs(output_dir, request, (fixed.path, moving.path), result.fixed_grid, result.moving_grid)
    written: dict[str, str] = {}
    warped = result.warped if result.warped is not None else result.warp(moving)
    determinant = jacobian_determinant(result.displacement, result.fixed_grid)
    with OutputSet() as outputs:
        def target(role: str) -> Path:
            written[role] = str(targets[role].resolve())
            return outputs.path(targets[role])

        transforms: list[Callable[[], object]] = []  # HDF5 and ITK's transform readers: not thread-safe
        images: list[Callable[[], object]] = []

        def add(jobs: list[Callable[[], object]], role: str, writer: Callable[..., object], *arguments: Any) -> None:
            jobs.append(partial(writer, *arguments, target(role)))

        add(transforms, "transform", write_displacement, result.displacement, result.fixed_grid)
        if "vector_field" in targets:
            add(transforms, "vector_field", write_displacement, result.displacement, result.fixed_grid)
        if request.affine and result.affine is not None:
            add(transforms, "affine", write_affine, result.affine)
        if request.inverse and result.inverse is not None:
            add(transforms, "inverse", write_displacement, result.inverse, result.moving_grid)
        if request.warped:
            add(images, "warped", write_image, warped)
        if request.jacobian:
            add(images, "jacobian", write_image, Image(determinant.astype(np.float32), result.fixed_grid))
        if request.agreement:
            add(images, "agreement", _write_agreement, fixed, warped, result.config)
        if request.checkerboard:
            add(images, "checkerboard", _write_checkerboard, result, fixed, moving, warped)
        run_concurrently(transforms, images)
        report = {**summary(result, determinant), **(extra or {}), "fixed": fixed.path, "moving": moving.path}
        report["outputs"] = dict(written, report=str(targets["report"].resolve()))
        write_json(target("report"), report, default=_json_default)
        outputs.retire(_previous_outputs(targets["report"], (fixed.path, moving.path)))
    return written


def run_concurrently(here: list[Callable[[], object]], elsewhere: list[Callable[[], object]]) -> None:
    """Runs the `elsewhere` writers on worker threads (compressing and reading back release the GIL: the set
    is written in about half the time on two cores) while this thread runs `here`, one after the other:
    writers that may reach the HDF5 library, which is not thread-safe in SimpleITK (ITK probes every
    transform format, HDF5's included, when it reads a transform back). Ctrl-C and SIGTERM take effect once
    every writer has stopped (a writer cannot be stopped inside ITK, and one that outlived the set's
    clean-up would leave its file behind). The first failure (those of `here` first) is raised at the end."""
    failures: list[BaseException] = []
    workers = max(1, min(len(elsewhere), os.cpu_count() or 1, 4))
    with signals_held(), ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(job) for job in elsewhere]
        for job in here:
            try:
                job()
            except Exception as error:
                failures.append(error)
                break
        failures += filter(None, (future.exception() for future in futures))
    if failures:
        raise failures[0]


def _write_agreement(fixed: Image, warped: Image, config: dict[str, Any], path: Path) -> None:
    from .agreement import agreement_map

    write_image(agreement_map(fixed, warped, config), path)


def _write_checkerboard(result: Result, fixed: Image, moving: Image, warped: Image, path: Path) -> None:
    before = Result.identity(result.fixed_grid, result.moving_grid).warp(moving)
    before_after_checkerboard(fixed, before, warped, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
