"""In-process sweep of registration settings on the benchmark's pairs: accuracy and register() time per setting.

Cheaper than bench_registration.py (no process start-up, no outputs), for tuning the presets; on a shared
machine compare CPU seconds (with threads=1 they count work, not waiting); confirm
a choice with bench_registration.py, which times whole processes against the peers. Each variant is a
preset plus `key=value` overrides; every variant runs on every pair, pairs in the outer loop, so that
the load of a shared machine hits the variants of one pair alike.

    python benchmarks/sweep_settings.py --suites known2,cross2 --seeds 0 \
        --variant default --variant "default control_spacing=2" --out sweep.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_registration import build_cases  # noqa: E402
from DiffusionRegistrationLib.engine.config import make_config, parse_overrides  # noqa: E402
from DiffusionRegistrationLib.engine.registration import register  # noqa: E402
from DiffusionRegistrationLib.io.images import read_image  # noqa: E402

SHOWN = ("tre_mean", "tre_p95", "grey_dice", "white_dice", "percent_folded")


def parse_variant(text: str) -> tuple[str, dict]:
    """'accurate lr=0.5 levels=[4,2,1]' -> ('accurate', {'lr': 0.5, 'levels': [4, 2, 1]}); values without spaces."""
    preset, *items = text.split()
    return preset, parse_overrides(items)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default="known2,cross2")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--fixed", choices=["bet", "skull", "both"], default="both")
    parser.add_argument("--variant", action="append", required=True, help="preset and key=value overrides")
    parser.add_argument("--out", default="sweep.json")
    args = parser.parse_args(argv)
    variants = [(text, *parse_variant(text)) for text in args.variant]
    kinds = ["bet", "skull"] if args.fixed == "both" else [args.fixed]
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffreg-sweep-") as folder:
        cases = build_cases(args.suites.split(","), [int(s) for s in args.seeds.split(",")], kinds, Path(folder))
        for case in cases:
            fixed, moving = read_image(case.fixed_path), read_image(case.moving_path)
            for text, preset, overrides in variants:
                start, cpu = time.perf_counter(), time.process_time()
                result = register(fixed, moving, make_config(preset, overrides))
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
                row = {"suite": case.suite, "group": case.group, "seed": case.seed, "variant": text,
                       "seconds": seconds, "cpu_seconds": cpu, "steps": [h["steps"] for h in result.history],
                       **case.score(np.asarray(result.displacement, dtype=np.float64))}
                rows.append(row)
                shown = "  ".join(f"{k} {row[k]:.3f}" for k in SHOWN if row.get(k) is not None)
                print(f"{case.suite:<7}{case.group:<6}{case.seed:>2}  {seconds:6.2f} s  cpu {cpu:6.2f} s  {shown}  "
                      f"steps {row['steps']}  | {text}", flush=True)
                Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\nmeans over pairs per suite/group:")
    for text, _, _ in variants:
        for key in sorted({(r["suite"], r["group"]) for r in rows}):
            members = [r for r in rows if r["variant"] == text and (r["suite"], r["group"]) == key]
            shown = "  ".join(f"{k} {np.mean([m[k] for m in members]):.3f}" for k in SHOWN
                              if members and members[0].get(k) is not None)
            print(f"{key[0]:<7}{key[1]:<6} {np.mean([m['seconds'] for m in members]):6.2f} s  "
                  f"cpu {np.mean([m['cpu_seconds'] for m in members]):6.2f} s  {shown}  | {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
