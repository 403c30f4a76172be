"""Benchmark (issue 2, item 10): this project's presets against ANTsPy SyN and elastix on Colin27 at 2 mm.

Pairs: moving = ch2bet (skull-stripped); fixed = ch2bet ("bet") or ch2 with skull ("skull"), warped by
a known smooth field (random_smooth_displacement, max 8 mm, fold-free; one per seed). The true
fixed->moving map is x + u(x). Per method: wall time, TRE mean/p95 over the brain (ch2bet > 0 warped
into fixed space), AAL Dice (labels warped by the method's field vs the truly warped labels), brain-mask
Dice and % folded voxels (det <= 0 of the method's field, over the brain).

    .venv/bin/python benchmarks/bench_registration.py --seeds 0,1,2 --fixed both --out bench.json

Not part of the test suite: it takes minutes per pair on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from DiffusionRegistrationLib.io.data import COLIN_AAL, COLIN_BET, COLIN_T1, data_file, resample_isotropic  # noqa: E402
from DiffusionRegistrationLib.errors import RegistrationError  # noqa: E402
from DiffusionRegistrationLib.io.images import Image, read_image, write_image  # noqa: E402
from DiffusionRegistrationLib.geometry.metrics import (dice_per_label, field_tre, folding, jacobian_determinant,  # noqa: E402
                                              mask_dice, mean_dice)
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement  # noqa: E402
from peers import PEERS  # noqa: E402

SPACING_MM = 2.0
MAX_MM = 8.0
CONSISTENCY_LIMIT = 1e-3  # flag a peer whose warped image differs more from resampling with its field
# (measured: ~4e-7 for ANTs and elastix with linear result interpolation; 7.5e-3 with ANTs' two
# transforms composed in the wrong order)


@dataclass
class Pair:
    kind: str  # "bet" or "skull"
    seed: int
    fixed_path: str
    moving_path: str
    fixed: Image
    moving: Image
    truth: np.ndarray  # true fixed->moving displacement on the fixed grid
    labels: Image  # AAL at 2 mm, on the moving grid
    brain: Image  # ch2bet > 0 at 2 mm, on the moving grid
    fixed_labels: np.ndarray  # AAL truly warped into fixed space
    fixed_brain: np.ndarray  # brain mask truly warped into fixed space


def load_sources(spacing_mm: float = SPACING_MM) -> dict[str, Image]:
    """Colin27 skull-stripped, with skull and AAL, at `spacing_mm`."""
    bet = read_image(data_file(COLIN_BET))
    aal = read_image(data_file(COLIN_AAL), dtype=np.uint8)
    return {"bet": resample_isotropic(bet, spacing_mm),
            "skull": resample_isotropic(read_image(data_file(COLIN_T1)), spacing_mm),
            "aal": resample_isotropic(aal, spacing_mm, labels=True),
            "brain": resample_isotropic(bet.with_array((bet.array > 0).astype(np.uint8)), spacing_mm, labels=True)}


def make_pair(sources: dict[str, Image], kind: str, seed: int, folder: Path) -> Pair:
    moving = sources["bet"]
    truth = random_smooth_displacement(moving.grid, MAX_MM, seed)
    fixed = warp_with_displacement(sources[kind], truth)
    folder.mkdir(parents=True, exist_ok=True)
    fixed_path, moving_path = folder / f"fixed_{kind}_{seed}.nii.gz", folder / "moving_bet.nii.gz"
    write_image(fixed, fixed_path)
    if not moving_path.exists():
        write_image(moving, moving_path)
    return Pair(kind, seed, str(fixed_path), str(moving_path), read_image(fixed_path), read_image(moving_path),
                truth, sources["aal"], sources["brain"],
                warp_with_displacement(sources["aal"], truth, "nearest").array,
                warp_with_displacement(sources["brain"], truth, "nearest").array)


def evaluate(pair: Pair, field: np.ndarray) -> dict[str, float]:
    grid = pair.fixed.grid
    tre = field_tre(pair.truth, field, pair.fixed_brain)
    labels = warp_with_displacement(pair.labels, field, "nearest", grid=grid).array
    brain = warp_with_displacement(pair.brain, field, "nearest", grid=grid).array
    fold = folding(jacobian_determinant(field, grid), pair.fixed_brain)
    return {"tre_mean": tre["mean"], "tre_median": tre["median"], "tre_p95": tre["p95"], "tre_max": tre["max"],
            "aal_dice": mean_dice(dice_per_label(labels, pair.fixed_labels)),
            "brain_dice": mask_dice(brain, pair.fixed_brain),
            "percent_folded": fold["percent_folded"], "min_jacobian": fold["min_jacobian"]}


def preset_runner(name: str) -> Optional[Callable[[Pair], tuple[np.ndarray, float, dict]]]:
    """A runner for this project's preset `name`, or None when the engine is not importable yet."""
    try:
        from DiffusionRegistrationLib.engine.config import PRESETS, RegistrationConfig
        from DiffusionRegistrationLib.engine.registration import register
    except ImportError as error:
        print(f"note: preset '{name}' skipped: the registration engine cannot be imported ({error})")
        return None
    if name not in PRESETS:
        print(f"note: preset '{name}' skipped: unknown (presets: {', '.join(PRESETS)})")
        return None

    def run(pair: Pair) -> tuple[np.ndarray, float, dict]:
        config = RegistrationConfig().with_overrides({**PRESETS[name], "device": "cpu"})
        start, cpu = time.perf_counter(), time.process_time()
        result = register(pair.fixed, pair.moving, config)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        return (np.asarray(result.displacement, dtype=np.float64), wall,
                {"cpu_seconds": cpu, "engine_seconds": float(result.seconds)})

    return run


def method_runners(methods: list[str]) -> dict[str, Callable[[Pair], tuple[np.ndarray, float, dict]]]:
    runners = {}
    for method in methods:
        if method == "none":
            runners[method] = lambda pair: (np.zeros_like(pair.truth), 0.0, {"cpu_seconds": 0.0})
        elif method in PEERS:
            def run(pair: Pair, peer=PEERS[method]):
                out = peer(pair.fixed_path, pair.moving_path)
                if out.consistency > CONSISTENCY_LIMIT:
                    print(f"WARNING: {out.name}: its warped image differs from resampling with its field by "
                          f"{out.consistency:.3f} (relative); the field conversion may be wrong.")
                return out.displacement, out.seconds, {"cpu_seconds": out.cpu_seconds, "consistency": out.consistency,
                                                       "settings": out.settings}
            runners[method] = run
        else:
            runner = preset_runner(method)
            if runner is not None:
                runners[method] = runner
    return runners


def summarise(rows: list[dict]) -> list[dict]:
    """Mean of each measure per (method, fixed kind) over seeds."""
    keys = ["seconds", "cpu_seconds", "tre_mean", "tre_p95", "aal_dice", "brain_dice", "percent_folded"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["fixed"]), []).append(row)
    out = []
    for (method, kind), members in groups.items():
        summary = {"method": method, "fixed": kind, "n": len(members)}
        summary.update({k: float(np.mean([m[k] for m in members])) for k in keys})
        elastix = [r["seconds"] for r in rows if r["method"] == "elastix" and r["fixed"] == kind]
        summary["time_vs_elastix"] = summary["seconds"] / float(np.mean(elastix)) if elastix else None
        elastix_cpu = [r["cpu_seconds"] for r in rows if r["method"] == "elastix" and r["fixed"] == kind]
        summary["cpu_vs_elastix"] = summary["cpu_seconds"] / float(np.mean(elastix_cpu)) if elastix_cpu else None
        out.append(summary)
    return out


def print_table(summary: list[dict]) -> None:
    header = (f"{'method':<14}{'fixed':<7}{'n':>3}{'time s':>9}{'/elastix':>9}{'cpu s':>8}{'/elastix':>9}"
              f"{'TRE mean':>10}{'TRE p95':>9}"
              f"{'AAL Dice':>10}{'brain Dice':>11}{'% folded':>10}")
    print(header)
    print("-" * len(header))
    for s in sorted(summary, key=lambda s: (s["fixed"], s["method"])):
        ratio = f"{s['time_vs_elastix']:.2f}" if s["time_vs_elastix"] is not None else "-"
        cpu_ratio = f"{s['cpu_vs_elastix']:.2f}" if s["cpu_vs_elastix"] is not None else "-"
        print(f"{s['method']:<14}{s['fixed']:<7}{s['n']:>3}{s['seconds']:>9.1f}{ratio:>9}{s['cpu_seconds']:>8.1f}"
              f"{cpu_ratio:>9}{s['tre_mean']:>10.2f}"
              f"{s['tre_p95']:>9.2f}{s['aal_dice']:>10.3f}{s['brain_dice']:>11.3f}{s['percent_folded']:>10.3f}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the known fields")
    parser.add_argument("--methods", default=None,
                        help="comma-separated: none, ants-syn, ants-syn-cc, elastix and preset names "
                             "(default: all of them)")
    parser.add_argument("--fixed", choices=["bet", "skull", "both"], default="both",
                        help="fixed image: ch2bet, ch2 with skull, or both (moving is always ch2bet)")
    parser.add_argument("--out", default="benchmark.json", help="JSON file for every row and the summary")
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    else:
        try:
            from DiffusionRegistrationLib.engine.config import PRESETS
            presets = list(PRESETS)
        except ImportError:
            presets = []
        methods = ["none", *PEERS, *presets]
    kinds = ["bet", "skull"] if args.fixed == "both" else [args.fixed]
    try:
        sources = load_sources()
    except RegistrationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runners = method_runners(methods)
    rows: list[dict] = []
    document = {"spacing_mm": SPACING_MM, "max_mm": MAX_MM, "seeds": seeds, "fixed": kinds,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "rows": rows}
    with tempfile.TemporaryDirectory(prefix="diffreg-bench-") as folder:
        for seed in seeds:
            for kind in kinds:
                pair = make_pair(sources, kind, seed, Path(folder))
                for method, run in runners.items():
                    try:
                        field, seconds, extra = run(pair)
                    except Exception:  # a failing method is reported, the others still run
                        print(f"{method} on {kind}/{seed} failed:\n{traceback.format_exc()}")
                        continue
                    row = {"method": method, "fixed": kind, "seed": seed, "seconds": seconds,
                           **evaluate(pair, field), **extra}
                    rows.append(row)
                    print(f"{method:<14}{kind:<7}seed {seed}: {seconds:7.1f} s (cpu {extra['cpu_seconds']:.1f})  "
                          f"TRE {row['tre_mean']:.2f} mm (p95 {row['tre_p95']:.2f})  AAL {row['aal_dice']:.3f}  "
                          f"brain {row['brain_dice']:.3f}  folded {row['percent_folded']:.3f}%"
                          + (f"  check {extra['consistency']:.4f}" if "consistency" in extra else ""), flush=True)
                    document["summary"] = summarise(rows)
                    Path(args.out).write_text(json.dumps(document, indent=2))  # partial results survive a stop
    print()
    print_table(document.get("summary", []))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
