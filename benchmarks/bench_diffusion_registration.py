"""The whole 2 mm 3D registration with the diffusion similarity: exact versus fast mode at equal steps.

The pair is the main job's (Colin27 skull-stripped onto Colin27 with skull, known deformation, 2 mm). The
backbone is the full-size ADM architecture (552,814,086 parameters, encoder block 11 at t=50) with RANDOM
weights: the cost is the real checkpoint's, the accuracy is meaningless, so only times are reported.
Settings are the `diffusion` preset's (levels 2 and 1) without the affine stage; the feature cache starts
empty, so fast mode's time includes extracting the tri-planar features of both images.

    .venv/bin/python benchmarks/bench_diffusion_registration.py --steps 30 --out out/bench_diffusion.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from DiffusionRegistrationLib.io.atomic import atomic_path
from DiffusionRegistrationLib.engine.config import PRESETS, make_config
from DiffusionRegistrationLib.cli.demo import demo_pair
from DiffusionRegistrationLib.features.adm import ADM_256_UNCOND_FLAGS
from DiffusionRegistrationLib.engine.registration import register


def run(mode: str, steps: int, device: str) -> dict:
    preset = PRESETS["diffusion"]["similarity_params"]
    params = {"extractor": {"backbone": "adm-small-random", "flags": ADM_256_UNCOND_FLAGS, "seed": 0},
              "mode": mode, "cache_dir": tempfile.mkdtemp(prefix="diffreg-bench-features-")}
    if mode == "fast":
        params.update(slice_stride=preset["slice_stride"], step_slices=preset["step_slices"])
    config = make_config("diffusion", {"similarity_params": params, "affine": False, "device": device,
                                       "iterations": (steps, steps), "tolerance": 0.0})
    pair = demo_pair(0)
    start = time.perf_counter()
    result = register(pair["fixed"], pair["moving"], config)
    seconds = time.perf_counter() - start
    return {"mode": mode, "steps": sum(h["steps"] for h in result.history), "seconds": seconds,
            "settings": {k: v for k, v in params.items() if k != "cache_dir"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps at each of the two levels")
    parser.add_argument("--modes", default="fast,exact")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="out/bench_diffusion_registration.json")
    args = parser.parse_args()
    rows = [run(mode, args.steps, args.device) for mode in args.modes.split(",")]
    print(f"{'mode':<6} {'steps':>5} {'seconds':>8}")
    for row in rows:
        print(f"{row['mode']:<6} {row['steps']:>5} {row['seconds']:>8.1f}")
    by_mode = {row["mode"]: row["seconds"] for row in rows}
    if {"fast", "exact"} <= set(by_mode):
        print(f"exact / fast time ratio at equal steps: {by_mode['exact'] / by_mode['fast']:.1f}")
    report = {"rows": rows, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "machine": platform.machine(), "device": args.device,
              "note": "random weights: times only; accuracy is not measured"}
    with atomic_path(args.out) as temporary:
        temporary.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
