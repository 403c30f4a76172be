"""Rewrites the README's registration results table from bench_registration.py's JSON (issue 12, item 5).

    python benchmarks/readme_table.py benchmarks/results/bench_2mm.json benchmarks/results/bench_1mm.json \
        benchmarks/results/bench_2d.json --readme README.md

The summary is recomputed from the JSON's rows (means over seeds, ratios to SyN per pair). The table goes between the lines `<!-- bench_registration:start -->` and `<!-- bench_registration:end -->`;
everything else in the README is left as it is.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_registration import summarise  # noqa: E402

START, END = "<!-- bench_registration:start -->", "<!-- bench_registration:end -->"
GROUPS = {"bet": "stripped fixed", "skull": "fixed with skull", "cross": "MNI152 onto Colin27", "2d": "T1 onto PD",
          "zero": "MNI152 onto Colin27's head, zero air", "noisy": "MNI152 onto Colin27's head, noisy air",
          "fov": "MNI152 onto Colin27's head, zero air, large field of view",
          "reverse": "Colin27's head (zero air) onto MNI152", "heads": "Colin27's head onto itself, known field"}
SUITES = {"known2": "Colin27 2 mm, known field", "known1": "Colin27 1 mm, known field",
          "cross2": "cross-subject 2 mm", "cross1": "cross-subject 1 mm", "slice2d": "BrainWeb 2D slice",
          "head2": "brain and head 2 mm", "head1": "brain and head 1 mm"}
NAMES = {"none": "no registration", "ants-syn": "ANTsPy SyN (defaults)", "ants-syn-cc": "ANTsPy SyN, CC",
         "elastix": "elastix affine + B-spline", "elastix-rigid": "elastix rigid + B-spline"}


def _number(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def accuracy(row: dict) -> str:
    """TRE mean (p95) in mm for known fields; grey / white matter Dice for the cross-subject pair, after the
    brain Dice for the brain-and-head pairs."""
    if row.get("tre_mean") is not None:
        return f"TRE {row['tre_mean']:.2f} ({row['tre_p95']:.2f})"
    tissues = f"GM {_number(row.get('grey_dice'), 3)} / WM {_number(row.get('white_dice'), 3)}"
    return tissues if row.get("brain_dice") is None else f"brain {row['brain_dice']:.3f}, {tissues}"


def table(documents: list[dict]) -> str:
    lines = ["| pair | method | n | time (s) | time / SyN | CPU / SyN | process (s) | in register() (s) | "
             "peak memory (MB) | accuracy | % folded |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for document in documents:
        for row in sorted(summarise(document["rows"]), key=lambda r: (r["suite"], r["group"], r["method"] != "none",
                                                              r["method"])):
            pair = f"{SUITES.get(row['suite'], row['suite'])}, {GROUPS.get(row['group'], row['group'])}"
            method = NAMES.get(row["method"], f"this project, `{row['method']}`")
            time_cell = "-" if row["method"] == "none" else _number(row["seconds"], 1)
            lines.append(f"| {pair} | {method} | {row['n']} | {time_cell} | {_number(row.get('vs_syn'), 2)} | "
                         f"{_number(row.get('cpu_vs_syn'), 2)} | {_number(row.get('process_seconds'), 1)} | "
                         f"{_number(row.get('register_seconds'), 1)} | {_number(row.get('peak_mb'), 0)} | "
                         f"{accuracy(row)} | {_number(row.get('percent_folded'), 2)} |")
    return "\n".join(lines)


def rewrite(readme: str, generated: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"README has no {START} ... {END} markers; add them where the table belongs.")
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{generated}\n{END}{after}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="bench_registration.py JSON files, in table order")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    documents = [json.loads(Path(path).read_text()) for path in args.results]
    path = Path(args.readme)
    path.write_text(rewrite(path.read_text(), table(documents)))
    print(f"rewrote the table in {path} from {', '.join(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
