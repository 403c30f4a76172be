"""Benchmark (issues 12, 20): this project's presets against ANTsPy SyN, elastix, Greedy, NiftyReg and FireANTs,
each method in its own process (NiftyReg and FireANTs: `bash benchmarks/install_peers.sh` first).

Suites (`--suites`):
- known2, known1: Colin27 at 2 mm / 1 mm; moving = ch2bet (skull-stripped); fixed = ch2bet ("bet") or ch2
  with skull ("skull"), warped by a known smooth field (max 8 mm, fold-free; one per seed). TRE mean/p95
  over the brain, AAL Dice, brain Dice, % folded voxels.
- cross2, cross1: MNI152 (nilearn, skull-stripped) onto Colin27 ch2bet, no known field: grey- and
  white-matter Dice of 3-class intensity segmentations (cross_subject.py).
- slice2d: BrainWeb T1 slice onto the PD slice warped by a known field (2D multimodal): TRE over the head.
- head2, head1: a skull-stripped template onto a head scan and back (geometry/brain_pairs.py: MNI152 onto
  Colin27 with skull whose air is zero, noisy, or zero in a large field of view; Colin27's head onto MNI152;
  head onto head under a known field): brain Dice against the known brain masks (ch2bet > 0, MNI152 > 0),
  grey- and white-matter Dice of the brains' 3-class segmentations.

Every method runs as a child process; its peak memory is that process's VmHWM (peak_memory.py). A
preset is timed as a user runs it: the whole `diffreg register` process (start-up, reading, registration,
writing every default output). ANTsPy and elastix are timed by their registration call alone, without
their start-up and without the field conversion done for scoring, so the comparison is conservative for
this project; Greedy, whose Python module is its command-line program, by its whole process (start-up,
reading, affine and deformable runs, writing its matrix and warp), as a preset, and so are NiftyReg (both of
its programs) and FireANTs (its Python process, torch's import included). The same holds for CPU
seconds and peak memory. `vs ref` is a method's time (or CPU time) over the reference peer's (`--reference`:
ANTsPy SyN, or Greedy in a run without SyN) on the same pair in the same run.

    python benchmarks/bench_registration.py --suites known2,cross2 --seeds 0,1,2 --out results/bench.json
    python benchmarks/bench_registration.py --suites head2 --seeds 0 --methods none,ants-syn,default,stripped

Not part of the test suite: minutes per pair on two cores (the 1 mm suites: tens of minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cross_subject  # noqa: E402
from DiffusionRegistrationLib.engine.config import PRESETS  # noqa: E402
from DiffusionRegistrationLib.errors import RegistrationError  # noqa: E402
from DiffusionRegistrationLib.geometry.brain_pairs import PAIRS, brain_pair  # noqa: E402
from DiffusionRegistrationLib.geometry.metrics import (dice_per_label, field_tre, folding,  # noqa: E402
                                                       jacobian_determinant, mask_dice, mean_dice)
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement  # noqa: E402
from DiffusionRegistrationLib.io.data import (COLIN_AAL, COLIN_BET, COLIN_T1, ITK_PD_SLICE,  # noqa: E402
                                              ITK_T1_SLICE, data_file, resample_isotropic)
from DiffusionRegistrationLib.core.image import Image  # noqa: E402
from DiffusionRegistrationLib.io.images import read_image, write_image  # noqa: E402
from DiffusionRegistrationLib.io.transform_files import read_displacement  # noqa: E402
from peak_memory import run_child  # noqa: E402
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


Scorer = Callable[[Optional[np.ndarray]], dict]  # a method's field (None: no registration) -> measures


@dataclass
class Case:
    """One registration problem: its files, how a field is scored, and the group it is averaged in."""

    suite: str
    group: str  # e.g. "bet", "skull", "cross", "2d"
    seed: int
    fixed_path: str
    moving_path: str
    score: Scorer


def known_cases(suite: str, spacing_mm: float, seeds: list[int], kinds: list[str], folder: Path) -> list[Case]:
    sources = load_sources(spacing_mm)
    out = []
    for seed in seeds:
        for kind in kinds:
            pair = make_pair(sources, kind, seed, folder / suite)
            out.append(Case(suite, kind, seed, pair.fixed_path, pair.moving_path,
                            lambda field, pair=pair: evaluate(pair, np.zeros_like(pair.truth) if field is None
                                                              else field)))
    return out


def cross_case(suite: str, spacing_mm: float, folder: Path) -> Case:
    pair = cross_subject.load_pair(spacing_mm)
    paths = folder / f"{suite}_fixed.nii.gz", folder / f"{suite}_moving.nii.gz"
    write_image(pair["fixed"], paths[0])
    write_image(pair["moving"], paths[1])
    return Case(suite, "cross", 0, str(paths[0]), str(paths[1]),
                lambda field: cross_subject.tissue_dice(pair, field))


def head_cases(suite: str, spacing_mm: float, seeds: list[int], folder: Path) -> list[Case]:
    """The brain-onto-head pairs (brain_pairs.PAIRS); the seed draws the noisy air and the known field."""
    out = []
    for seed in seeds:
        for name in PAIRS:
            pair = brain_pair(name, spacing_mm, seed)
            paths = folder / f"{suite}_{name}_{seed}_fixed.nii.gz", folder / f"{suite}_{name}_{seed}_moving.nii.gz"
            write_image(pair.fixed, paths[0])
            write_image(pair.moving, paths[1])
            tissues = {"fixed": pair.fixed, "fixed_tissues": cross_subject.tissue_classes(pair.fixed_stripped),
                       "moving_tissues": cross_subject.tissue_classes(pair.moving_stripped)}

            def score(field: Optional[np.ndarray], pair=pair, tissues=tissues) -> dict:
                grid = pair.fixed.grid
                moved = np.zeros((*grid.shape, grid.dim)) if field is None else field
                brain = warp_with_displacement(pair.moving_brain, moved, "nearest", grid=grid).array
                return {"brain_dice": mask_dice(brain > 0.5, pair.fixed_brain.array > 0.5),
                        **cross_subject.tissue_dice(tissues, field)}

            out.append(Case(suite, name, seed, str(paths[0]), str(paths[1]), score))
    return out


def slice_cases(suite: str, seeds: list[int], folder: Path) -> list[Case]:
    """BrainWeb T1 (moving) onto the PD slice warped by a known field (fixed): 2D, multimodal."""
    t1, pd = read_image(data_file(ITK_T1_SLICE)), read_image(data_file(ITK_PD_SLICE))
    moving_path = folder / f"{suite}_moving_t1.nii.gz"
    write_image(t1, moving_path)
    out = []
    for seed in seeds:
        truth = random_smooth_displacement(t1.grid, MAX_MM, seed)
        fixed_path = folder / f"{suite}_fixed_pd_{seed}.nii.gz"
        write_image(warp_with_displacement(pd, truth), fixed_path)
        head = warp_with_displacement(t1.with_array((t1.array > 0.05 * t1.array.max()).astype(np.uint8)),
                                      truth, "nearest").array

        def score(field: np.ndarray, truth=truth, head=head) -> dict:
            tre = field_tre(truth, np.zeros_like(truth) if field is None else field, head)
            return {"tre_mean": tre["mean"], "tre_p95": tre["p95"]}

        out.append(Case(suite, "2d", seed, str(fixed_path), str(moving_path), score))
    return out


def build_cases(suites: list[str], seeds: list[int], kinds: list[str], folder: Path) -> list[Case]:
    cases: list[Case] = []
    for suite in suites:
        if suite.startswith("known"):
            cases += known_cases(suite, float(suite[len("known"):]), seeds, kinds, folder)
        elif suite.startswith("cross"):
            cases.append(cross_case(suite, float(suite[len("cross"):]), folder))
        elif suite.startswith("head"):
            cases += head_cases(suite, float(suite[len("head"):]), seeds, folder)
        elif suite == "slice2d":
            cases += slice_cases(suite, seeds, folder)
        else:
            raise RegistrationError(f"unknown suite '{suite}': use known2, known1, cross2, cross1, head2, head1 or "
                                    "slice2d.")
    return cases


def run_method(method: str, case: Case, folder: Path) -> dict:
    """Runs one method on one case in a child process; returns its timings, peak memory and field."""
    work = folder / f"{case.suite}_{case.group}_{case.seed}_{method}"
    work.mkdir(parents=True, exist_ok=True)
    memory = work / "peak.json"
    launcher = [sys.executable, str(HERE / "peak_memory.py"), str(memory)]
    if method in PEERS:
        out = work / "peer.npz"
        command = [*launcher, str(HERE / "run_peer.py"), method, case.fixed_path, case.moving_path, str(out)]
    else:
        command = [*launcher, "-m", "DiffusionRegistrationLib", "register", "--fixed", case.fixed_path,
                   "--moving", case.moving_path, "--output-dir", str(work), "--preset", method, "--progress", "none"]
    process_seconds, process_cpu, code = run_child(command, work / "log.txt")
    if code != 0:
        raise RuntimeError(f"{method} exited with {code}:\n{(work / 'log.txt').read_text()[-3000:]}")
    row = {"process_seconds": process_seconds, "process_cpu_seconds": process_cpu,
           "peak_mb": json.loads(memory.read_text())["peak_mb"]}
    if method in PEERS:
        data = np.load(out)
        field = data["displacement"]
        row.update(seconds=float(data["seconds"]), cpu_seconds=float(data["cpu_seconds"]),
                   consistency=float(data["consistency"]))
        if "peak_mb" in data:  # the peer ran in a process of its own: its peak, not the scoring wrapper's
            row["peak_mb"] = float(data["peak_mb"])
        if row["consistency"] > CONSISTENCY_LIMIT:
            print(f"WARNING: {method}: its warped image differs from resampling with its field by "
                  f"{row['consistency']:.3f} (relative); the field conversion may be wrong.")
    else:
        field, _ = read_displacement(work / "transform.h5")
        report = json.loads((work / "report.json").read_text())
        row.update(seconds=process_seconds, cpu_seconds=process_cpu, register_seconds=float(report["seconds"]))
    row.update(case.score(np.asarray(field, dtype=np.float64)))
    return row


MEASURES = ["seconds", "cpu_seconds", "process_seconds", "register_seconds", "peak_mb", "vs_reference",
            "cpu_vs_reference",
            "tre_mean", "tre_p95", "aal_dice", "brain_dice", "percent_folded", "grey_dice", "white_dice"]


def default_reference(methods: list[str]) -> str:
    """The peer that times are divided by: ANTsPy SyN, or Greedy in a run without SyN."""
    return "greedy" if "greedy" in methods and "ants-syn" not in methods else "ants-syn"


def summarise(rows: list[dict], reference: str = "ants-syn") -> list[dict]:
    """Mean of each measure per (suite, group, method) over seeds; the ratio to `reference` is per pair first."""
    for row in rows:
        peer = [r for r in rows if r["method"] == reference and
                (r["suite"], r["group"], r["seed"]) == (row["suite"], row["group"], row["seed"])]
        for key, ratio in (("seconds", "vs_reference"), ("cpu_seconds", "cpu_vs_reference")):
            usable = peer and row["method"] != "none" and row.get(key) and peer[0].get(key)
            row[ratio] = row[key] / peer[0][key] if usable else None
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["suite"], row["group"], row["method"]), []).append(row)
    out = []
    for (suite, group, method), members in groups.items():
        summary = {"suite": suite, "group": group, "method": method, "n": len(members)}
        for key in MEASURES:
            values = [m[key] for m in members if m.get(key) is not None]
            summary[key] = float(np.mean(values)) if values else None
        out.append(summary)
    return out


def _cell(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(summary: list[dict]) -> None:
    header = (f"{'suite':<8}{'group':<7}{'method':<14}{'n':>3}{'time s':>8}{'vs ref':>8}{'cpu s':>8}{'vs ref':>8}"
              f"{'proc s':>8}{'peak MB':>9}"
              f"{'TRE':>7}{'p95':>7}{'AAL':>7}{'brain':>7}{'GM':>7}{'WM':>7}{'%fold':>7}")
    print(header)
    print("-" * len(header))
    for s in sorted(summary, key=lambda s: (s["suite"], s["group"], s["method"])):
        print(f"{s['suite']:<8}{s['group']:<7}{s['method']:<14}{s['n']:>3}{_cell(s['seconds'], 1):>8}"
              f"{_cell(s['vs_reference'], 2):>8}{_cell(s['cpu_seconds'], 1):>8}{_cell(s['cpu_vs_reference'], 2):>8}"
              f"{_cell(s['process_seconds'], 1):>8}{_cell(s['peak_mb'], 0):>9}"
              f"{_cell(s['tre_mean'], 2):>7}{_cell(s['tre_p95'], 2):>7}{_cell(s['aal_dice'], 3):>7}"
              f"{_cell(s['brain_dice'], 3):>7}{_cell(s['grey_dice'], 3):>7}{_cell(s['white_dice'], 3):>7}"
              f"{_cell(s['percent_folded'], 2):>7}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default="known2,cross2", help="known2, known1, cross2, cross1, head2, head1, slice2d")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the known fields")
    parser.add_argument("--methods", default="none,ants-syn,elastix,default,stripped",
                        help="none, peers (" + ", ".join(PEERS) + ") and presets (" + ", ".join(PRESETS) + ")")
    parser.add_argument("--fixed", choices=["bet", "skull", "both"], default="both",
                        help="known-field suites: fixed image ch2bet, ch2 with skull, or both")
    parser.add_argument("--only", action="append", default=[], metavar="METHOD=SUITES",
                        help="run METHOD only on these suites (comma-separated), e.g. a slow peer only at 2 mm: "
                        "--only fireants=known2,cross2; repeatable")
    parser.add_argument("--reference", default=None, help="the peer that times are divided by (default: ants-syn "
                        "if it runs, else greedy)")
    parser.add_argument("--out", default="benchmark.json", help="JSON file for every row and the summary")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in PEERS and m not in PRESETS and m != "none"]
    if unknown:
        parser.error(f"unknown method(s): {', '.join(unknown)}")
    only = {}
    for item in args.only:
        method, _, suites = item.partition("=")
        if method not in methods or not suites:
            parser.error(f"--only {item}: give METHOD=SUITES with a method of --methods")
        only[method] = suites.split(",")
    kinds = ["bet", "skull"] if args.fixed == "both" else [args.fixed]
    reference = args.reference or default_reference(methods)
    rows: list[dict] = []
    document = {"max_mm": MAX_MM, "seeds": seeds, "suites": args.suites.split(","), "methods": methods,
                "only": only, "reference": reference,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "rows": rows}
    with tempfile.TemporaryDirectory(prefix="diffreg-bench-") as folder:
        try:
            cases = build_cases(document["suites"], seeds, kinds, Path(folder))
        except RegistrationError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for case in cases:
            for method in methods:
                if method in only and case.suite not in only[method]:
                    continue
                base = {"suite": case.suite, "group": case.group, "seed": case.seed, "method": method}
                try:
                    row = {**base, "seconds": 0.0, **case.score(None)} if method == "none" else \
                        {**base, **run_method(method, case, Path(folder))}
                except Exception as error:  # a failing method is reported, the others still run
                    print(f"{method} on {case.suite}/{case.group}/{case.seed} failed: {error}")
                    continue
                rows.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                      flush=True)
                document["summary"] = summarise(rows, reference)
                Path(args.out).write_text(json.dumps(document, indent=2))  # partial results survive a stop
    print()
    print_table(document.get("summary", []))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
