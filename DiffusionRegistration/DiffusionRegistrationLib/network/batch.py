"""Registering a cohort from a CSV of pairs, resumable and split across torchrun ranks.

Each pair's outputs (transform.h5, warped.nii.gz, result.json) appear together or not at all
(atomic.OutputSet), so a pair whose result.json exists is done and skipped on a rerun. Under torchrun
(RANK/WORLD_SIZE set) rank r registers pairs r, r + W, ...; the launcher provides the processes, there
is no home-made pool. Registration is by a trained network (optionally fine-tuned per pair) or by
instance optimisation (`register()` with a RegistrationConfig).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..engine.config import RegistrationConfig
from ..engine.device import resolve_device
from ..engine.registration import register
from ..errors import RegistrationError
from ..io.atomic import OutputSet, remove_partial_files, write_json
from ..io.images import read_image, write_image
from ..io.transform_files import write_displacement
from ..progress import Progress, ProgressCallback, silent
from .data import read_csv_rows
from .inference import load_network, register_with_network


def _pair_name(index: int, row: dict[str, str]) -> str:
    if row.get("name"):
        return Path(row["name"]).name
    stem = lambda path: Path(path).name.split(".")[0]  # noqa: E731
    return f"{index:04d}_{stem(row['fixed'])}__{stem(row['moving'])}"


def _device_for_rank(device: str) -> str:
    """Each rank on its own GPU (LOCAL_RANK) when CUDA is used."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return str(resolved)


def run_batch(pairs_csv: str | Path, output_dir: str | Path, config: Optional[RegistrationConfig] = None,
              network: Optional[str | Path] = None, finetune_steps: int = 0, device: str = "auto",
              progress: ProgressCallback = silent,
              finetune: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Registers every pair of `pairs_csv` (columns fixed, moving[, name]) that this rank owns.

    With a `network`, `finetune` holds similarity settings for fine-tuning (empty: the network's own).

    Returns one status per owned pair: done, skipped (outputs exist) or failed (with the error).
    A failing pair does not stop the others. Rank r also writes batch_rank<r>.json with the statuses.
    """
    rows = read_csv_rows(pairs_csv, ("fixed", "moving"))
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    output_dir = Path(output_dir)
    device = _device_for_rank(device if network is not None else (config.device if config else device))
    trained = load_network(network, torch.device(device)) if network is not None else None
    config = config or RegistrationConfig(device=device)
    mine = [(i, row) for i, row in enumerate(rows) if i % world == rank]
    statuses = []
    for done, (index, row) in enumerate(mine):
        name = _pair_name(index, row)
        folder = output_dir / name
        status: dict[str, Any] = {"index": index, "name": name, "fixed": row["fixed"], "moving": row["moving"]}
        if (folder / "result.json").is_file():
            statuses.append({**status, "status": "skipped"})
            continue
        progress(Progress("batch", done / max(len(mine), 1), f"pair {index} {name}"))
        try:
            fixed, moving = read_image(row["fixed"], "fixed"), read_image(row["moving"], "moving")
            if trained is not None:
                result = register_with_network(fixed, moving, trained, finetune_steps=finetune_steps, device=device,
                                               **(finetune or {}))
            else:
                result = register(fixed, moving, config)
            summary = {**status, "status": "done", "seconds": result.seconds, "method": result.config.get(
                "method", "instance optimisation"), "finetune_steps": finetune_steps if trained else None,
                "warnings": result.warnings}
            remove_partial_files(folder, recursive=False)
            with OutputSet() as outputs:
                write_displacement(result.displacement, result.fixed_grid, outputs.path(folder / "transform.h5"))
                write_image(result.warped, outputs.path(folder / "warped.nii.gz"))
                write_json(outputs.path(folder / "result.json"), summary)
            statuses.append(summary)
        except RegistrationError as error:
            statuses.append({**status, "status": "failed", "error": str(error)})
        except Exception as error:  # an unforeseen failure of one pair must not lose the others
            statuses.append({**status, "status": "failed",
                             "error": f"unexpected {type(error).__name__}: {error} (please report this with the pair)"})
    progress(Progress("batch", 1.0, f"{len(mine)} pairs on rank {rank}/{world}"))
    write_json(output_dir / f"batch_rank{rank}.json", statuses)
    return statuses
