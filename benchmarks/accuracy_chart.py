"""Accuracy against time of every method on the cross-subject pairs (issue 20): a PNG from bench_registration.py's JSON.

    python benchmarks/accuracy_chart.py benchmarks/results/bench_2mm.json benchmarks/results/bench_1mm.json \
        --out Resources/Screenshots/accuracy_time.png

One column per cross-subject suite found (cross2, cross1), one row per tissue (grey, white matter
Dice); each method is a point at its time (mean over the suite's runs) and Dice. `--time cpu_seconds` plots
CPU seconds instead of wall seconds: on a shared machine whose load changes during a run, the steadier
measure of each method's work. The front (no other
method both faster and more accurate) is drawn as a line, so one sees which methods sit on it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_registration import summarise  # noqa: E402
from readme_table import NAMES, SUITES  # noqa: E402

TISSUES = {"grey_dice": "grey-matter Dice", "white_dice": "white-matter Dice"}


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points that no other point beats in both time (lower) and accuracy (higher), by time."""
    best, out = float("-inf"), []
    for seconds, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if value > best:
            out.append((seconds, value))
            best = value
    return out


def main(argv: Optional[list[str]] = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="bench_registration.py JSON files")
    parser.add_argument("--time", choices=["seconds", "cpu_seconds"], default="seconds",
                        help="wall seconds, or CPU seconds (user + system)")
    parser.add_argument("--out", default="accuracy_time.png")
    args = parser.parse_args(argv)
    rows = [row for path in args.results for row in summarise(json.loads(Path(path).read_text())["rows"])
            if row["group"] == "cross" and row["method"] != "none" and row.get(args.time)]
    suites = [s for s in ("cross2", "cross1") if any(r["suite"] == s for r in rows)]
    if not suites:
        raise SystemExit("no cross-subject rows (suites cross2, cross1) in " + ", ".join(args.results))
    figure, axes = plt.subplots(len(TISSUES), len(suites), figsize=(5.5 * len(suites), 8), squeeze=False)
    colours = {}
    for column, suite in enumerate(suites):
        members = [r for r in rows if r["suite"] == suite]
        for row_index, (key, label) in enumerate(TISSUES.items()):
            axis = axes[row_index][column]
            line = front([(r[args.time], r[key]) for r in members])
            axis.plot(*zip(*line), color="0.75", linewidth=1, zorder=0, label="front")
            for r in members:
                ours = r["method"] not in NAMES
                colour = colours.setdefault(r["method"], f"C{len(colours) % 10}")
                axis.scatter(r[args.time], r[key], color=colour, marker="o" if ours else "s", s=45)
                axis.annotate(NAMES.get(r["method"], r["method"]), (r[args.time], r[key]), fontsize=7,
                              xytext=(4, 3), textcoords="offset points")
            axis.set_xscale("log")
            seconds = FuncFormatter(lambda value, _: f"{value:g}")
            axis.xaxis.set_major_formatter(seconds)
            axis.xaxis.set_minor_formatter(seconds)
            axis.tick_params(axis="x", which="both", labelsize=7)
            axis.set_title(f"{SUITES.get(suite, suite)}: {label}", fontsize=10)
            axis.set_xlabel(("CPU time" if args.time == "cpu_seconds" else "time") + " (s, log scale)")
            axis.set_ylabel(label)
            axis.grid(True, alpha=0.3)
    measure = "CPU time (user + system)" if args.time == "cpu_seconds" else "time"
    figure.suptitle("MNI152 onto Colin27 (both skull-stripped): circles this project's presets, squares peers\n"
                    f"{measure}: whole process (presets, Greedy, NiftyReg, FireANTs) or the registration call (ANTsPy, elastix)",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
