"""Rewrites the README's registration results table from bench_registration.py's JSON (issue 12, item 5).

    python benchmarks/readme_table.py benchmarks/results/bench_2mm.json benchmarks/results/bench_1mm.json \
        benchmarks/results/bench_2d.json --readme README.md

The summary is recomputed from the JSON's rows (means over seeds, ratios to the run's reference peer per pair:
SyN, or Greedy in runs without SyN). The table goes between
the lines `<!-- NAME:start -->` and `<!-- NAME:end -->` (`--marker NAME`, default bench_registration);
everything else in the README is left as it is.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_registration import default_reference, summarise  # noqa: E402

GROUPS = {"bet": "stripped fixed", "skull": "fixed with skull", "cross": "MNI152 onto Colin27", "2d": "T1 onto PD",
          "zero": "MNI152 onto Colin27's head, zero air", "noisy": "MNI152 onto Colin27's head, noisy air",
          "fov": "MNI152 onto Colin27's head, zero air, large field of view",
          "reverse": "Colin27's head (zero air) onto MNI152", "heads": "Colin27's head onto itself, known field"}
SUITES = {"known2": "Colin27 2 mm, known field", "known1": "Colin27 1 mm, known field",
          "cross2": "cross-subject 2 mm", "cross1": "cross-subject 1 mm", "slice2d": "BrainWeb 2D slice",
          "head2": "brain and head 2 mm", "head1": "brain and head 1 mm"}
NAMES = {"none": "no registration", "ants-syn": "ANTsPy SyN (defaults)", "ants-syn-cc": "ANTsPy SyN, CC",
         "elastix": "elastix affine + B-spline", "elastix-rigid": "elastix rigid + B-spline",
         "greedy": "Greedy (tutorial settings)", "greedy-mask": "Greedy (tutorial settings), moving mask",
         "niftyreg": "NiftyReg (reg_aladin + reg_f3d defaults)", "fireants": "FireANTs (Quickstart, CPU)"}


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
    """One row per (suite, group, method); times are divided by each document's reference peer's."""
    short = {"ants-syn": "SyN", "greedy": "Greedy"}
    references = [document.get("reference") or default_reference(document["methods"]) for document in documents]
    name = "reference" if len(set(references)) > 1 else short.get(references[0], references[0])
    lines = [f"| pair | method | n | time (s) | time / {name} | CPU / {name} | process (s) | in register() (s) | "
             "peak memory (MB) | accuracy | % folded |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for document, reference in zip(documents, references):
        rows = summarise(document["rows"], reference)
        for row in sorted(rows, key=lambda r: (r["suite"], r["group"], r["method"] != "none", r["method"])):
            pair = f"{SUITES.get(row['suite'], row['suite'])}, {GROUPS.get(row['group'], row['group'])}"
            method = NAMES.get(row["method"], f"this project, `{row['method']}`")
            time_cell = "-" if row["method"] == "none" else _number(row["seconds"], 1)
            lines.append(f"| {pair} | {method} | {row['n']} | {time_cell} | {_number(row.get('vs_reference'), 2)} | "
                         f"{_number(row.get('cpu_vs_reference'), 2)} | {_number(row.get('process_seconds'), 1)} | "
                         f"{_number(row.get('register_seconds'), 1)} | {_number(row.get('peak_mb'), 0)} | "
                         f"{accuracy(row)} | {_number(row.get('percent_folded'), 2)} |")
    return "\n".join(lines)


def rewrite(readme: str, generated: str, marker: str = "bench_registration") -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in readme or end not in readme:
        raise SystemExit(f"README has no {start} ... {end} markers; add them where the table belongs.")
    before, rest = readme.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{generated}\n{end}{after}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="bench_registration.py JSON files, in table order")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--marker", default="bench_registration", help="the table's markers in the README")
    args = parser.parse_args(argv)
    documents = [json.loads(Path(path).read_text()) for path in args.results]
    path = Path(args.readme)
    path.write_text(rewrite(path.read_text(), table(documents), args.marker))
    print(f"rewrote the table in {path} from {', '.join(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
