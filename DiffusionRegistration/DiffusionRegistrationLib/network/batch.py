"""Registering a cohort from a CSV of pairs, resumable and split across torchrun ranks.

Each pair's outputs (transform.h5, warped.nii.gz, result.json) appear together or not at all
(atomic.OutputSet) in a folder named after the pair. result.json records what the pair was computed from
(the row, its files' sizes and times, the settings): a rerun skips a pair whose record matches and registers
it again when anything changed. Pair names are checked: a name that is not a plain folder name, or that an
earlier row already uses, fails that pair with a message, as does a row without a fixed or moving image;
the other pairs go on. Under torchrun (RANK/WORLD_SIZE set) rank r registers pairs r, r + W, ...; the
launcher provides the processes, there is no home-made pool. Registration is by a trained network
(optionally fine-tuned per pair) or by instance optimisation (`register()` with a RegistrationConfig).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from ..engine.config import RegistrationConfig
from ..engine.device import resolve_device
from ..engine.registration import register
from ..errors import RegistrationError
from ..io.atomic import OutputSet, json_text, recover, write_json
from ..io.images import read_image, write_image
from ..io.transform_files import write_displacement
from ..progress import Progress, ProgressCallback, silent
from .data import read_csv_rows
from .inference import load_network, register_with_network

_PLAIN_NAME = re.compile(r"\w[\w .,+=@()-]*", re.UNICODE)  # one folder name on every system: no separators
_RESERVED = re.compile(r"batch_rank\d+\.json", re.IGNORECASE)  # the per-rank summaries beside the pair folders


def _pair_name(index: int, row: dict[str, str]) -> str:
    if "name" in row:
        return row["name"]
    stem = lambda path: Path(path).name.split(".")[0]  # noqa: E731
    return f"{index:04d}_{stem(row.get('fixed', 'none'))}__{stem(row.get('moving', 'none'))}"


def _row_problems(rows: list[dict[str, str]], csv_path: str | Path) -> dict[int, str]:
    """row index -> why that pair cannot run: a missing image cell, an unsafe name, a name used before."""
    problems: dict[int, str] = {}
    first: dict[str, int] = {}
    for index, row in enumerate(rows):
        where = f"{csv_path}, row {index + 1} after the header"
        name = _pair_name(index, row)
        missing = [column for column in ("fixed", "moving") if column not in row]
        if missing:
            problems[index] = (f"{where}: no {' and no '.join(missing)} image (the cell is empty or the row has too "
                               "few cells). Give fixed,moving[,name] on every row.")
        elif not _PLAIN_NAME.fullmatch(name) or name.endswith((" ", ".")) or len(name) > 120 \
                or _RESERVED.fullmatch(name):
            problems[index] = (f"{where}: the name {name!r} is not a plain folder name (no '/', '\\', '..' or "
                               "leading '.', at most 120 characters, not batch_rank<N>.json). Rename the pair.")
        elif name.casefold() in first:
            problems[index] = (f"{where}: the name {name!r} is also the name of row {first[name.casefold()] + 1}; "
                               "both would write one folder. Give each pair its own name.")
        first.setdefault(name.casefold(), index)
    return problems


def _device_for_rank(device: str) -> str:
    """Each rank on its own GPU (LOCAL_RANK) when CUDA is used."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return str(resolved)


def _stat(path: str) -> Optional[list[int]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _record(row: dict[str, str], settings: dict[str, Any]) -> dict[str, Any]:
    """What a pair is computed from, as result.json stores it: the row, its files' sizes and times, settings."""
    files = {column: [value, _stat(value)] for column, value in sorted(row.items()) if column != "name"}
    return json.loads(json_text({"files": files, "settings": settings}))


def _done_before(folder: Path, record: dict[str, Any]) -> bool:
    """Whether `folder` holds a result computed from exactly `record`."""
    try:
        return json.loads((folder / "result.json").read_text(encoding="utf-8")).get("inputs") == record
    except (OSError, ValueError, AttributeError):
        return False


def run_batch(pairs_csv: str | Path, output_dir: str | Path, config: Optional[RegistrationConfig] = None,
              network: Optional[str | Path] = None, finetune_steps: int = 0, device: str = "auto",
              progress: ProgressCallback = silent,
              finetune: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Registers every pair of `pairs_csv` (columns fixed, moving[, name]) that this rank owns.

    With a `network`, `finetune` holds similarity settings for fine-tuning (empty: the network's own).

    Returns one status per owned pair: done, skipped (outputs of the same inputs exist) or failed (with the
    error). A failing pair does not stop the others. Rank r also writes batch_rank<r>.json with the statuses.
    """
    rows = read_csv_rows(pairs_csv, ("fixed", "moving"), text=("name",))
    problems = _row_problems(rows, pairs_csv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    output_dir = Path(output_dir)
    device = _device_for_rank(device if network is not None else (config.device if config else device))
    trained = load_network(network, torch.device(device)) if network is not None else None
    config = config or RegistrationConfig(device=device)
    settings = {"network": [str(network), _stat(str(network))] if network is not None else None,
                "finetune_steps": finetune_steps if trained else None, "finetune": finetune or None,
                "config": None if trained else {k: v for k, v in config.to_dict().items() if k not in ("device",)}}
    mine = [(i, row) for i, row in enumerate(rows) if i % world == rank]
    statuses = []
    for done, (index, row) in enumerate(mine):
        name = _pair_name(index, row)
        status: dict[str, Any] = {"index": index, "name": name, "fixed": row.get("fixed"), "moving": row.get("moving")}
        if index in problems:
            statuses.append({**status, "status": "failed", "error": problems[index]})
            continue
        folder = output_dir / name
        record = _record(row, settings)
        if _done_before(folder, record):
            statuses.append({**status, "status": "skipped"})
            continue
        progress(Progress("batch", done / max(len(mine), 1), f"pair {index} {name}"))
        try:
            statuses.append(_register_pair(row, folder, trained, config, device, finetune_steps, finetune,
                                           {**status, "inputs": record}))
        except RegistrationError as error:
            statuses.append({**status, "status": "failed", "error": str(error)})
        except Exception as error:  # an unforeseen failure of one pair must not lose the others
            statuses.append({**status, "status": "failed",
                             "error": f"unexpected {type(error).__name__}: {error} (please report this with the pair)"})
    progress(Progress("batch", 1.0, f"{len(mine)} pairs on rank {rank}/{world}"))
    write_json(output_dir / f"batch_rank{rank}.json", statuses)
    return statuses


def _register_pair(row: dict[str, str], folder: Path, trained, config: RegistrationConfig, device: str,
                   finetune_steps: int, finetune: Optional[dict[str, Any]], status: dict[str, Any]) -> dict[str, Any]:
    """Registers one pair and writes its set (replacing an earlier one whole); returns its status."""
    fixed, moving = read_image(row["fixed"], "fixed"), read_image(row["moving"], "moving")
    if trained is not None:
        result = register_with_network(fixed, moving, trained, finetune_steps=finetune_steps, device=device,
                                       **(finetune or {}))
    else:
        result = register(fixed, moving, config)
    summary = {**status, "status": "done", "seconds": result.seconds,
               "method": result.config.get("method", "instance optimisation"),
               "finetune_steps": finetune_steps if trained else None, "warnings": result.warnings}
    recover(folder)
    with OutputSet(folder) as outputs:
        write_displacement(result.displacement, result.fixed_grid, outputs.path(folder / "transform.h5"))
        write_image(result.warped, outputs.path(folder / "warped.nii.gz"))
        write_json(outputs.path(folder / "result.json"), summary)
    return summary
