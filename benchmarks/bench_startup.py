"""Start-up time of the command line: `diffreg --help` and an argument error, median of several runs.

    python benchmarks/bench_startup.py --runs 7 --out results/bench_startup.json

Each run is a fresh `python -m DiffusionRegistrationLib ...` process, timed from outside (wall clock).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

COMMANDS = {
    "diffreg --help": ["--help"],
    "diffreg register --help": ["register", "--help"],
    "missing argument": ["register", "--fixed", "f.nii.gz"],
    "missing input file": ["register", "--fixed", "missing.nii.gz", "--moving", "missing.nii.gz",
                           "--output-dir", "out"],
    "unknown preset": ["register", "--fixed", __file__, "--moving", __file__, "--output-dir", "out",
                       "--preset", "nonexistent"],
}


def seconds(arguments: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "DiffusionRegistrationLib", *arguments], capture_output=True)
        out.append(time.perf_counter() - start)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", default="bench_startup.json")
    args = parser.parse_args(argv)
    rows = []
    for name, arguments in COMMANDS.items():
        times = seconds(arguments, args.runs)
        rows.append({"command": name, "median_seconds": float(np.median(times)), "runs": times})
        print(f"{name:<26}{np.median(times):7.3f} s median of {args.runs} (min {min(times):.3f}, "
              f"max {max(times):.3f})")
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
