"""Where registration time goes, per stage and per level (issue 12, item 1).

For each pair (Colin27 2 mm and 1 mm with a known field, skull-stripped; MNI152 onto Colin27 at 2 mm):
start-up (importing the engine, in a fresh interpreter), reading, normalisation, the affine and
deformable stages per level (wall time and steps from the run's history), and the outputs. Each
deformable level is then replayed for a few steps with each part timed on its own, forward and
backward: SVF integration and upsampling of the field, building the sampling grid, grid_sample, the
similarity, the regulariser, and the optimiser step. "sum of parts x steps" against the level's
measured time shows what the replay leaves out.

    python benchmarks/profile_registration.py --pairs colin2,cross2,colin1 --preset default --out profile.json

The machine is shared and noisy: compare parts within one run, not across runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

IMPORT_PROBE = ("import time; t = time.perf_counter(); import {module}; "
                "print(time.perf_counter() - t)")


def import_seconds(module: str, repeats: int = 3) -> float:
    """Median time to import `module` in a fresh interpreter (what every command pays before working)."""
    times = [float(subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(module=module)], check=True,
                                  capture_output=True, text=True).stdout) for _ in range(repeats)]
    return float(np.median(times))


def _timed(action: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        action()
    return (time.perf_counter() - start) / repeats


def level_parts(level, repeats: int) -> dict[str, float]:
    """Seconds per step of each part of one deformable level's step, forward and backward apart."""
    import torch

    from DiffusionRegistrationLib.engine.optimizer import CosineAdam
    from DiffusionRegistrationLib.geometry.spatial import sample

    dense, similarity = level.dense, level.similarity
    optimizer = CosineAdam([(list(dense.parameters()), level.lr)], repeats)
    parts: dict[str, float] = {}
    def fields():
        return dense.fields(level.to_normalised)

    field, normalised = fields()
    parts["field (integration, upsampling)"] = _timed(fields, repeats)
    parts["field backward"] = _timed(lambda: torch.autograd.grad(fields()[1].sum(), dense.field), repeats) \
        - parts["field (integration, upsampling)"]
    moving_u = normalised.detach().requires_grad_(True)
    parts["sampling grid"] = _timed(lambda: level.sampling(moving_u), repeats)
    sampling = level.sampling(normalised).detach().requires_grad_(True)
    mask = level.mask
    parts["grid_sample"] = _timed(lambda: sample(level.moving, sampling), repeats)
    parts["grid_sample backward"] = _timed(
        lambda: torch.autograd.grad(sample(level.moving, sampling).sum(), sampling), repeats) - parts["grid_sample"]
    warped = sample(level.moving, sampling).detach().requires_grad_(True)
    parts["similarity"] = _timed(lambda: similarity(level.fixed, warped, mask), repeats)
    parts["similarity backward"] = _timed(
        lambda: torch.autograd.grad(similarity(level.fixed, warped, mask), warped), repeats) - parts["similarity"]
    smooth = field.detach().requires_grad_(True)
    parts["regulariser"] = _timed(lambda: level.regularizer(smooth, level.dense.control_grid), repeats)
    parts["regulariser backward"] = _timed(
        lambda: torch.autograd.grad(level.regularizer(smooth, level.dense.control_grid), smooth), repeats) - parts["regulariser"]

    def optimiser_step() -> None:
        dense.field.grad = torch.zeros_like(dense.field)
        optimizer.step()

    parts["optimiser"] = _timed(optimiser_step, repeats)
    parts["whole step (forward + backward)"] = _timed(lambda: level.loss().backward(), repeats)
    return parts


def profile_pair(name: str, fixed_path: str, moving_path: str, preset: str, repeats: int,
                 folder: Path, threads: Optional[int]) -> dict:
    """Stage times of one registration run as the CLI does it, then each deformable level replayed."""
    import torch

    from DiffusionRegistrationLib.engine import registration as engine
    from DiffusionRegistrationLib.engine.config import make_config
    from DiffusionRegistrationLib.io.images import normalize, read_image
    from DiffusionRegistrationLib.engine.outputs import write_outputs

    config = make_config(preset, {"device": "cpu", "threads": threads})
    stages: dict[str, float] = {}
    start = time.perf_counter()
    fixed, moving = read_image(fixed_path, "fixed image"), read_image(moving_path, "moving image")
    stages["reading"] = time.perf_counter() - start
    stages["normalisation"] = _timed(lambda: (normalize(fixed, *config.percentiles),
                                              normalize(moving, *config.percentiles)), 1)
    start = time.perf_counter()
    result = engine.register(fixed, moving, config)
    stages["register() total"] = time.perf_counter() - start
    start = time.perf_counter()
    write_outputs(result, fixed, moving, folder / f"out_{name}")
    stages["outputs"] = time.perf_counter() - start
    levels = []
    device = torch.device("cpu")
    run = engine.Run(engine.prepare(fixed, None, config, device), engine.prepare(moving, None, config, device),
                     config, device, engine.silent)
    affine = engine.AffineTransform(fixed.dim, np.zeros(fixed.dim)).to(device)
    with torch.no_grad():
        affine.linear.copy_(torch.as_tensor(result.affine[:-1, :-1] - np.eye(fixed.dim), dtype=torch.float32)[None])
        affine.translation.copy_(torch.as_tensor(result.affine[:-1, -1], dtype=torch.float32)[None])
    affine.requires_grad_(False)
    similarity = engine.build_similarity(config.similarity, **config.similarity_params)
    previous = None
    for entry in result.history:
        row = {k: entry[k] for k in ("stage", "level", "spacing_mm", "steps", "seconds")}
        if entry["stage"] == "deformable":
            level = engine.DeformableLevel(run, entry["level"], affine, similarity, previous)
            row["voxels"] = int(np.prod(level.grid.shape))
            row["control_points"] = int(np.prod(level.dense.control_grid.shape))
            row["parts"] = level_parts(level, repeats)
            row["sum of parts x steps"] = entry["steps"] * (sum(v for k, v in row["parts"].items()
                                                                 if not k.startswith("whole")))
            previous = level.dense
        levels.append(row)
    return {"pair": name, "shape": list(fixed.array.shape), "spacing_mm": list(fixed.grid.spacing),
            "stages": stages, "levels": levels}


def make_pairs(names: list[str], folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (fixed file, moving file) written into `folder`."""
    import bench_registration as bench
    import cross_subject
    from DiffusionRegistrationLib.io.images import write_image

    out = {}
    for name in names:
        if name.startswith("colin"):
            spacing = float(name[len("colin"):])
            pair = bench.make_pair(bench.load_sources(spacing), "bet", 0, folder / name)
            out[name] = (pair.fixed_path, pair.moving_path)
        elif name.startswith("cross"):
            pair = cross_subject.load_pair(float(name[len("cross"):]))
            paths = (folder / f"{name}_fixed.nii.gz", folder / f"{name}_moving.nii.gz")
            write_image(pair["fixed"], paths[0])
            write_image(pair["moving"], paths[1])
            out[name] = (str(paths[0]), str(paths[1]))
        else:
            raise SystemExit(f"unknown pair '{name}': use colin<mm> or cross<mm>, e.g. colin2, cross2")
    return out


def print_report(report: dict) -> None:
    print(f"start-up: import of the engine {report['import_seconds']['engine']:.2f} s, of the CLI module "
          f"{report['import_seconds']['cli']:.2f} s (fresh interpreter, median)")
    for pair in report["pairs"]:
        print(f"\n== {pair['pair']} {tuple(pair['shape'])} ==")
        for stage, seconds in pair["stages"].items():
            print(f"  {stage:<28}{seconds:8.2f} s")
        for level in pair["levels"]:
            print(f"  {level['stage']:<11} {level['spacing_mm']:>5.1f} mm  {level['steps']:>4} steps "
                  f"{level['seconds']:7.2f} s" + (f"  ({level['voxels']} voxels, {level['control_points']} "
                                                  f"control points)" if "voxels" in level else ""))
            for part, seconds in level.get("parts", {}).items():
                print(f"      {part:<34}{1000 * seconds:8.1f} ms/step")
            if "sum of parts x steps" in level:
                print(f"      {'sum of parts x steps':<34}{level['sum of parts x steps']:8.2f} s")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="colin2,cross2,colin1", help="colin<mm> and cross<mm> pairs")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--repeats", type=int, default=5, help="steps replayed per part and level")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="profile.json")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = {"preset": args.preset, "threads": args.threads, "pairs": [],
              "import_seconds": {"engine": import_seconds("DiffusionRegistrationLib.engine.registration"),
                                 "cli": import_seconds("DiffusionRegistrationLib.cli.main")}}
    with tempfile.TemporaryDirectory(prefix="diffreg-profile-") as folder:
        for name, (fixed, moving) in make_pairs(args.pairs.split(","), Path(folder)).items():
            report["pairs"].append(profile_pair(name, fixed, moving, args.preset, args.repeats, Path(folder),
                                              args.threads))
            Path(args.out).write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
