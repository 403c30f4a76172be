"""Writes a registration's outputs as one all-or-nothing set: transform, warped image, maps, report."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, make_dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from ..errors import RegistrationError
from ..geometry.metrics import folding, jacobian_determinant
from ..core.signals import signals_held
from ..io.atomic import OutputSet, os_error, real_path, recover, write_json, writing_into
from ..core.image import Grid, Image
from ..io.images import IMAGE_WRITE_SUFFIXES, data_file, write_image
from ..io.pictures import before_after_checkerboard
from ..io.transform_files import AFFINE_SUFFIXES, FIELD_SUFFIXES, IMAGE_SUFFIXES, write_affine, write_displacement
from .result import Result


@dataclass(frozen=True)
class Contents:
    """What the writers of one set draw on."""

    result: Result
    fixed: Image
    moving: Image
    warped: Image
    determinant: np.ndarray


@dataclass(frozen=True)
class Role:
    """One file a registration can write: its default name, the file types it may be, an upper bound of its
    size and how it is written. (`diffreg register`'s flags that name them stay in cli/main.py: building the
    parser must not import this module's torch and SimpleITK.)"""

    default: Optional[str]  # written under this name unless asked otherwise; None: only on request
    suffixes: tuple[str, ...]
    bytes_per_voxel: Callable[[int], int]  # image dimension -> bytes per voxel of `grid`
    grid: str  # "fixed" or "moving": the grid whose size bounds the file
    write: Optional[Callable[[Contents, Path], object]]  # None: the report, written after the others
    hdf5: bool = False  # may reach the HDF5 library, which is not thread-safe: written on the calling thread


def _field(dim: int) -> int:
    return dim * 8  # float64 components


def _scalar(dim: int) -> int:
    return 4  # float32


def _write_field(contents: Contents, path: Path) -> None:
    write_displacement(contents.result.displacement, contents.result.fixed_grid, path)


FIELD_OR_IMAGE = FIELD_SUFFIXES + IMAGE_SUFFIXES
ROLES: dict[str, Role] = {
    "transform": Role("transform.h5", FIELD_OR_IMAGE, _field, "fixed", _write_field, hdf5=True),
    "vector_field": Role(None, FIELD_OR_IMAGE, _field, "fixed", _write_field, hdf5=True),
    "affine": Role(None, AFFINE_SUFFIXES, lambda dim: 0, "fixed", lambda c, path: write_affine(c.result.affine, path),
                   hdf5=True),
    "inverse": Role(None, FIELD_OR_IMAGE, _field, "moving",
                    lambda c, path: write_displacement(c.result.inverse, c.result.moving_grid, path), hdf5=True),
    "warped": Role("warped.nii.gz", IMAGE_WRITE_SUFFIXES, _scalar, "fixed", lambda c, path: write_image(c.warped, path)),
    "jacobian": Role("jacobian.nii.gz", IMAGE_WRITE_SUFFIXES, _scalar, "fixed",
                     lambda c, path: write_image(Image(c.determinant.astype(np.float32), c.result.fixed_grid), path)),
    "agreement": Role(None, IMAGE_WRITE_SUFFIXES, _scalar, "fixed", lambda c, path: _write_agreement(c, path)),
    "checkerboard": Role("checkerboard.png", (".png",), lambda dim: 0, "fixed",
                         lambda c, path: _write_checkerboard(c, path)),
    "report": Role("report.json", (".json",), lambda dim: 0, "fixed", None),
}
OutputRequest = make_dataclass("OutputRequest", [(role, Optional[str], field(default=spec.default))
                                                 for role, spec in ROLES.items()])
OutputRequest.__doc__ = ("Which files to write, one field per role of ROLES: a file name relative to the output "
                         "folder unless absolute, or None.")


def summary(result: Result, determinant: np.ndarray) -> dict[str, Any]:
    """Numbers every run reports: time, folding and the Jacobian range, the optimisation history."""
    return {"seconds": round(result.seconds, 3), **folding(determinant),
            "max_displacement_mm": float(np.linalg.norm(result.displacement, axis=-1).max()),
            "history": result.history, "warnings": result.warnings, "config": result.config,
            "foreground": result.foreground}


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
    grid = moving_grid if ROLES[role].grid == "moving" else fixed_grid
    return int(np.prod(grid.size)) * ROLES[role].bytes_per_voxel(grid.dim) + (1 << 20)


def output_files(targets: dict[str, Path]) -> dict[str, list[Path]]:
    """role -> the files it writes: its file, and the data file beside a detached header (.mhd, .nhdr)."""
    return {role: [target] + [p for p in [data_file(target)] if p] for role, target in targets.items()}


def check_outputs(output_dir: str | os.PathLike, request: OutputRequest, inputs: Iterable[Optional[str]],
                  fixed_grid: Grid, moving_grid: Grid) -> dict[str, Path]:
    """Before any registration work: the names pass `check_output_names`, and each output's folder exists
    (it is created) and takes a file of the expected size. Finishes or rolls back interrupted commits there.
    RegistrationError naming the file or folder and the fix."""
    targets = check_output_names(output_dir, request, inputs)
    needed: dict[Path, int] = {}
    for role, target in targets.items():
        needed[target.parent] = needed.get(target.parent, 0) + _bytes_needed(role, fixed_grid, moving_grid)
    for folder, size in needed.items():
        check_folder(folder, size)
    return targets


def check_output_names(output_dir: str | os.PathLike, request: OutputRequest,
                       inputs: Iterable[Optional[str]]) -> dict[str, Path]:
    """Every output name (and the data file of a detached header) has a known suffix and overwrites no input,
    no folder and no other output; nothing is created. Returns role -> final path."""
    inputs = list(inputs)
    targets = planned_outputs(output_dir, request)
    seen: dict[Path, str] = {}
    for role, files in output_files(targets).items():
        check_output_name(files[0], f"{role} output", ROLES[role].suffixes, inputs)
        for path in files:
            _not_an_input(path, f"{role} output", inputs)
            real = real_path(path, f"{role} output")
            if real in seen:
                raise RegistrationError(f"outputs {seen[real]} and {role} both write {path}; give them "
                                        "different names.")
            seen[real] = role
    return targets


def check_output_name(target: Path, role: str, suffixes: Iterable[str], inputs: Iterable[Optional[str]]) -> None:
    """RegistrationError when `target` has none of `suffixes`, is a folder, or is one of `inputs`."""
    name, suffixes = target.name.lower(), tuple(suffixes)
    if not name.endswith(suffixes) or name in suffixes:
        raise RegistrationError(f"{role} {target}: unknown file type; name it with one of {', '.join(suffixes)}.")
    _not_an_input(target, role, inputs)


def _not_an_input(target: Path, role: str, inputs: Iterable[Optional[str]]) -> None:
    if target.is_dir():
        raise RegistrationError(f"{role} {target}: is a folder; give a file name.")
    for given in filter(None, inputs):
        if target.exists() and Path(given).exists() and os.path.samefile(target, given):
            raise RegistrationError(f"{role} {target}: is the input {given}; writing it would destroy the input. "
                                    "Choose another output name or folder.")


def check_folder(folder: Path, size: int = 1 << 20) -> None:
    """Creates `folder` if needed; RegistrationError unless a file can be made there and `size` bytes are free.
    Interrupted commits in it are finished or rolled back, and temporaries of stopped runs removed."""
    folder = real_path(folder, "output folder")
    if folder.exists() and not folder.is_dir():
        raise RegistrationError(f"output folder {folder}: is a file, not a folder. Choose another --output-dir.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        recover(folder)
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as error:
        raise os_error(folder, error, "cannot write into the output folder") from None
    if free < size:
        raise RegistrationError(f"output folder {folder}: {free / 2**20:.1f} MiB free but the outputs need up to "
                                f"{size / 2**20:.1f} MiB. Free some space or choose another --output-dir.")


def _previous_outputs(report: Path, keep: Iterable[Optional[str]]) -> list[Path]:
    """Files an earlier run's report lists in the report's own folder, to be replaced or retired by this run:
    never a file elsewhere, and never one of an output (header and data file) of which a file is an input of
    this run (a mask, label map or image that run wrote and this one reads)."""
    try:
        previous = json.loads(report.read_text(encoding="utf-8"))
        listed = previous.get("files") or previous.get("outputs", {})
        groups = [[Path(p) for p in ([paths] if isinstance(paths, str) else paths) if isinstance(p, str)]
                  for paths in listed.values() if isinstance(paths, (str, list))]
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    kept = {os.path.realpath(p) for p in keep if p}
    folder = os.path.realpath(report.parent)
    return [path for group in groups if not any(os.path.realpath(p) in kept for p in group)
            for path in group if path.is_file() and os.path.dirname(os.path.realpath(path)) == folder]


def register_and_write(output_dir: str | os.PathLike, request: OutputRequest, fixed: Image, moving: Image,
                       run: Callable[[], Result], inputs: Iterable[Optional[str]] = (),
                       extra: Optional[Callable[[Result], dict[str, Any]]] = None) -> tuple[Result, dict[str, str]]:
    """The one register-and-write path of the command line and the API: the output names, folder and free
    space are checked and the folder held before `run()` registers (so a bad output or a busy folder costs no
    registration), then the set is written with `extra(result)` in its report. Returns the result and
    role -> path."""
    inputs = [fixed.path, moving.path, *inputs]
    check_output_names(output_dir, request, inputs)
    with writing_into(output_dir):
        check_outputs(output_dir, request, inputs, fixed.grid, moving.grid)
        result = run()
        return result, write_outputs(result, fixed, moving, output_dir, request, extra(result) if extra else None,
                                     inputs)


def write_outputs(result: Result, fixed: Image, moving: Image, output_dir: str | os.PathLike,
                  request: Optional[OutputRequest] = None, extra: Optional[dict[str, Any]] = None,
                  inputs: Iterable[Optional[str]] = ()) -> dict[str, str]:
    """Writes the requested files into `output_dir` as one set, each read back before the commit; files
    an earlier run listed in its report and this one does not write are removed at the commit, unless they
    are `inputs` (or the fixed and moving files) of this run. Returns role -> path. Nothing is left on
    failure and the earlier set stays as it was. RegistrationError while another process writes there."""
    request = request or OutputRequest()
    if request.inverse and result.inverse is None:
        raise RegistrationError(f"inverse {request.inverse}: this registration computed no inverse. Register with "
                                "inverse=True (command line: --inverse NAME), or leave the inverse out.")
    given = [fixed.path, moving.path, *inputs]
    check_output_names(output_dir, request, given)
    with writing_into(output_dir):
        return _write_set(result, fixed, moving, output_dir, request, extra or {}, given)


def _write_set(result: Result, fixed: Image, moving: Image, output_dir: str | os.PathLike, request: OutputRequest,
               extra: dict[str, Any], inputs: list[Optional[str]]) -> dict[str, str]:
    targets = check_outputs(output_dir, request, inputs, result.fixed_grid, result.moving_grid)
    if "affine" in targets and result.affine is None:
        del targets["affine"]  # a registration without an affine stage has no affine part to write
    warped = result.warped if result.warped is not None else result.warp(moving)
    determinant = jacobian_determinant(result.displacement, result.fixed_grid)
    contents = Contents(result, fixed, moving, warped, determinant)
    written = {role: os.path.realpath(target) for role, target in targets.items()}
    with OutputSet(output_dir) as outputs:
        jobs = {True: [], False: []}  # by Role.hdf5
        for role, target in targets.items():
            writer = ROLES[role].write
            if writer is not None:
                jobs[ROLES[role].hdf5].append(partial(writer, contents, outputs.path(target)))
        run_concurrently(jobs[True], jobs[False])
        report = {**summary(result, determinant), **extra, "fixed": fixed.path, "moving": moving.path}
        report["outputs"] = written
        files = output_files({role: Path(path) for role, path in report["outputs"].items()})
        report["files"] = {role: [str(p) for p in paths] for role, paths in files.items()}
        write_json(outputs.path(targets["report"]), report, default=_json_default)
        outputs.retire(_previous_outputs(targets["report"], inputs))
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


def _write_agreement(contents: Contents, path: Path) -> None:
    from .agreement import agreement_map

    write_image(agreement_map(contents.fixed, contents.warped, contents.result.config), path)


def _write_checkerboard(contents: Contents, path: Path) -> None:
    result = contents.result
    before = Result.identity(result.fixed_grid, result.moving_grid).warp(contents.moving)
    before_after_checkerboard(contents.fixed, before, contents.warped, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
