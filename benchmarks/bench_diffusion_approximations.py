"""What the diffusion similarity's approximations cost: accuracy with known-answer features, time with ADM.

Accuracy (TRE against the known field, mean over the brain, mm): the 2 mm Colin27 pair of the main job with
the skull-stripped image as both fixed (deformed by the known field) and moving, registered with `image`
features (the diffusion similarity is then LNCC on the image, so volumetric LNCC is the reference) and
with `mind` features (l1 measure: what `--similarity mind` computes), through the diffusion path:
fast vs exact, tri-planar slice stride 1/2/4/8, cached slices per step, the paper's random axis vs
tri-planar, feature refresh every K steps. Schedule: the `diffusion` preset's levels and iterations,
no affine stage.

Time with the full-size ADM (552,814,086 parameters, the 3D tap encoder block 11 at t=50) with RANDOM
weights, on the same pair at each level of the preset: the one-off cost (fast: tri-planar extraction of
both images) and the cost of a few steps (loss and backward), measured in the same run for both modes
and extrapolated to the preset's iterations (stated in the output). Accuracy from random weights is
meaningless and is never reported.

    PYTHONPATH=DiffusionRegistration python benchmarks/bench_diffusion_approximations.py --adm-steps 0 \\
        --name bench_diffusion_approximations_accuracy
    PYTHONPATH=DiffusionRegistration python benchmarks/bench_diffusion_approximations.py --skip-accuracy \\
        --adm-steps 2 --name bench_diffusion_approximations_adm
    PYTHONPATH=DiffusionRegistration python benchmarks/bench_diffusion_approximations.py --combine
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from DiffusionRegistrationLib.cli.demo import demo_pair
from DiffusionRegistrationLib.engine.config import PRESETS, make_config
from DiffusionRegistrationLib.engine.registration import register
from DiffusionRegistrationLib.geometry.synthetic import warp_with_displacement
from DiffusionRegistrationLib.io.atomic import atomic_path
from DiffusionRegistrationLib.similarity.diffusion import DiffusionFeatureSimilarity

RESULTS = Path(__file__).resolve().parent / "results"
SIGMA = 2.0  # the LNCC window (voxels of the 2D slices; the same for the volumetric reference)


def accuracy_runs(quick: bool) -> list[tuple[str, str, dict]]:
    """(name, similarity, params) of every accuracy row."""
    image = {"extractor": "image", "sigma": SIGMA, "cache": False}
    mind = {"extractor": "mind", "measure": "l1", "cache": False}
    rows = [("none", "", {}), ("volumetric lncc", "lncc", {"sigma": SIGMA}), ("volumetric mind", "mind", {}),
            ("image exact (paper: random axis, 4 slices)", "diffusion", {**image, "mode": "exact"})]
    strides = (2, 4) if quick else (1, 2, 4, 8)
    rows += [(f"image fast tri-planar stride {s}", "diffusion", {**image, "mode": "fast", "slice_stride": s})
             for s in strides]
    if not quick:
        rows += [(f"image fast stride 2, {n} cached slices per step", "diffusion",
                  {**image, "mode": "fast", "slice_stride": 2, "step_slices": n}) for n in (4, 16)]
        rows += [("image fast stride 8, 8 cached slices per step", "diffusion",
                  {**image, "mode": "fast", "slice_stride": 8, "step_slices": 8})]
        rows += [(f"image fast stride 4, refresh every {k}", "diffusion",
                  {**image, "mode": "fast", "slice_stride": 4, "refresh_every": k}) for k in (10, 30)]
        rows += [("mind exact (random axis, 4 slices)", "diffusion", {**mind, "mode": "exact"}),
                 ("mind fast stride 4", "diffusion", {**mind, "mode": "fast", "slice_stride": 4})]
    return rows


def accuracy(quick: bool) -> list[dict]:
    pair = demo_pair(0)
    moving = pair["moving"]
    fixed = warp_with_displacement(moving, pair["field"])  # same contrast: the known-answer features apply
    brain = pair["brain"]
    preset = PRESETS["diffusion"].settings
    rows = []
    for name, similarity, params in accuracy_runs(quick):
        if not similarity:
            rows.append({"name": name, "tre_mm": float(np.linalg.norm(pair["field"], axis=-1)[brain].mean()),
                         "seconds": 0.0, "steps": 0})
            continue
        config = make_config("default", {"similarity": similarity, "similarity_params": params, "affine": False,
                                         "levels": preset["levels"], "iterations": preset["iterations"],
                                         "regularization": preset["regularization"]})
        start = time.perf_counter()
        result = register(fixed, moving, config)
        seconds = time.perf_counter() - start
        tre = float(np.linalg.norm(result.displacement - pair["field"], axis=-1)[brain].mean())
        rows.append({"name": name, "similarity": similarity, "params": params, "tre_mm": tre, "seconds": seconds,
                     "steps": sum(h["steps"] for h in result.history)})
        print(f"{name:<52} TRE {tre:5.2f} mm  {seconds:7.1f} s", flush=True)
    return rows


def _level_tensors(image, factor: float) -> torch.Tensor:
    """The image at a preset level (shrink factor) as [1, 1, D, H, W] in [0, 1] (linear resampling)."""
    tensor = torch.as_tensor(image.array, dtype=torch.float32)[None, None]
    tensor = (tensor - tensor.min()) / (tensor.max() - tensor.min())
    if factor == 1:
        return tensor
    size = [max(8, int(round(n / factor))) for n in tensor.shape[2:]]
    return torch.nn.functional.interpolate(tensor, size=size, mode="trilinear", align_corners=True)


def adm_times(steps: int, flags: dict) -> list[dict]:
    """One-off and per-step seconds at each preset level, full-size ADM with random weights, all measured in
    this run: exact mode; fast mode with the preset's settings; fast mode at the same stride with every
    cached slice used at each step (its one-off is a load from the feature cache the run before wrote)."""
    import tempfile

    from DiffusionRegistrationLib.features.adm_extractor import AdmExtractor

    pair = demo_pair(0)
    preset = PRESETS["diffusion"].settings
    fast_params = {k: v for k, v in preset["similarity_params"].items() if k not in ("extractor", "mode")}
    variants = [("exact", {}), ("fast", fast_params),
                ("fast", {k: v for k, v in fast_params.items() if k != "step_slices"})]
    extractor = AdmExtractor.random(seed=0, dim=3, flags=flags)
    rows = []
    for factor, iterations in zip(preset["levels"], preset["iterations"]):
        fixed, moving = _level_tensors(pair["fixed"], factor), _level_tensors(pair["moving"], factor)
        cache = tempfile.mkdtemp(prefix="diffreg-bench-features-")
        for mode, params in variants:
            similarity = DiffusionFeatureSimilarity(extractor, mode=mode, cache_dir=cache, **params)
            start = time.perf_counter()
            similarity.prepare(fixed, moving, None, None)
            one_off = time.perf_counter() - start
            extracted = similarity.extraction_calls
            theta = torch.eye(3, 4)[None]
            grid = torch.nn.functional.affine_grid(theta, list(fixed.shape), align_corners=True).requires_grad_(True)
            start = time.perf_counter()
            for _ in range(steps):
                similarity.mapped_loss(fixed, moving, grid).backward()
            per_step = (time.perf_counter() - start) / steps
            row = {"level": factor, "shape": list(fixed.shape[2:]), "mode": mode, "settings": params,
                   "one_off_s": one_off, "slices_extracted_once": extracted, "per_step_s": per_step,
                   "measured_steps": steps, "preset_iterations": iterations,
                   "extrapolated_s": one_off + iterations * per_step}
            rows.append(row)
            print(f"ADM level {factor:g} {mode:<5} {json.dumps(params):<40} one-off {one_off:7.1f} s "
                  f"({extracted} slices)  per step {per_step:7.2f} s  -> {iterations} steps "
                  f"{row['extrapolated_s']:7.1f} s (extrapolated)", flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = ["# Diffusion similarity: cost of the approximations", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}, {report['threads']} threads, "
             f"load average at start {report['load_average'][0]:.1f} (shared machine: times are noisy)"]
    if report["accuracy"]:
        lines += ["", "## Accuracy with known-answer features (2 mm Colin27, known field, TRE over the brain)", "",
                  "| run | TRE mean (mm) | time (s) | steps |", "|---|---|---|---|"]
    for row in report["accuracy"]:
        lines.append(f"| {row['name']} | {row['tre_mm']:.2f} | {row['seconds']:.1f} | {row['steps']} |")
    if report["adm"]:
        lines += ["", "## Time with the full-size ADM (random weights: time only)", "",
                  f"Each mode measured for {report['adm'][0]['measured_steps']} steps per level in the same run; the "
                  "preset's total is one-off + iterations x per-step (extrapolated).", "",
                  "| level | shape | mode | settings | one-off (s) | slices extracted once | per step (s) | "
                  "preset iterations | extrapolated (s) |", "|---|---|---|---|---|---|---|---|---|"]
        for row in report["adm"]:
            settings = ", ".join(f"{k} {v}" for k, v in row["settings"].items()) or "paper: random axis, 4 slices"
            lines.append(f"| {row['level']:g} | {'x'.join(map(str, row['shape']))} | {row['mode']} | {settings} | "
                         f"{row['one_off_s']:.1f} | {row['slices_extracted_once']} | {row['per_step_s']:.2f} | "
                         f"{row['preset_iterations']} | {row['extrapolated_s']:.1f} |")
        preset = PRESETS["diffusion"].settings["similarity_params"]

        def total(mode: str, step_slices) -> float:
            return sum(r["extrapolated_s"] for r in report["adm"]
                       if r["mode"] == mode and r["settings"].get("step_slices") == step_slices)

        exact, fast = total("exact", None), total("fast", preset.get("step_slices"))
        lines += ["", f"Preset total (extrapolated): exact {exact:.0f} s, fast (the preset's settings) {fast:.0f} s, "
                      f"exact/fast = {exact / fast:.1f}x."]
    return "\n".join(lines) + "\n"


def _per_level_costs(adm: list[dict]) -> list[dict]:
    """From the ADM rows, per preset level: extraction seconds per slice, exact seconds per step, and the fast
    step's seconds per slice used (from the row that used every cached slice)."""
    costs = []
    for level in sorted({row["level"] for row in adm}, reverse=True):
        rows = [row for row in adm if row["level"] == level]
        exact = next(row for row in rows if row["mode"] == "exact")
        extracted = next(row for row in rows if row["mode"] == "fast" and row["slices_extracted_once"])
        every = next(row for row in rows if row["mode"] == "fast" and "step_slices" not in row["settings"])
        per_volume = extracted["slices_extracted_once"] // 2
        costs.append({"level": level, "shape": extracted["shape"], "iterations": exact["preset_iterations"],
                      "exact_step": exact["per_step_s"],
                      "slice": extracted["one_off_s"] / extracted["slices_extracted_once"],
                      "step_slice": every["per_step_s"] / per_volume})
    return costs


def adm_estimate(params: dict, costs: list[dict]) -> float:
    """Estimated seconds of the preset's schedule with the full-size ADM for one accuracy row's settings, from
    the measured per-slice costs: one-off extraction of both images' cached slices, per-step work on the
    slices used, and each refresh (re-extracting the moving image's cached slices)."""
    from DiffusionRegistrationLib.similarity.feature_grids import slice_positions

    total = 0.0
    for level in costs:
        if params.get("mode") == "exact":
            total += level["iterations"] * level["exact_step"]
            continue
        stride = params.get("slice_stride", 4)
        per_volume = sum(len(slice_positions(n, stride)) for n in level["shape"])
        used = min(params.get("step_slices") or per_volume, per_volume)
        refreshes = level["iterations"] // params["refresh_every"] if params.get("refresh_every") else 0
        total += (2 + refreshes) * per_volume * level["slice"] + level["iterations"] * used * level["step_slice"]
    return total


def combined(accuracy_report: dict, adm_report: dict) -> str:
    """One table: each accuracy row with its estimated full-size-ADM time and accuracy per second."""
    costs = _per_level_costs(adm_report["adm"])
    none = next(row["tre_mm"] for row in accuracy_report["accuracy"] if row["name"] == "none")
    lines = ["# Diffusion similarity: accuracy (known-answer features) and time (full-size ADM, estimated)", "",
             f"Accuracy: `{accuracy_report['command']}`; ADM costs: `{adm_report['command']}` (see the two .md "
             "files). ADM seconds per row are estimated from the measured per-slice costs of each level "
             "(extraction, fast step, exact step) for the preset's 60 + 30 steps; accuracy per second = (TRE "
             f"before, {none:.2f} mm, minus TRE) / ADM seconds. Shared 2-core machine: times are rough.", "",
             "| run | TRE mean (mm) | ADM seconds (estimated) | exact / this | mm per ADM-second |",
             "|---|---|---|---|---|"]
    exact = adm_estimate({"mode": "exact"}, costs)
    for row in accuracy_report["accuracy"]:
        if row.get("similarity") != "diffusion":
            lines.append(f"| {row['name']} | {row['tre_mm']:.2f} | - | - | - |")
            continue
        seconds = adm_estimate(row["params"], costs)
        lines.append(f"| {row['name']} | {row['tre_mm']:.2f} | {seconds:.0f} | {exact / seconds:.1f} | "
                     f"{(none - row['tre_mm']) / seconds:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer accuracy rows")
    parser.add_argument("--adm-steps", type=int, default=2, help="steps timed per mode and level (0: skip ADM)")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--name", default="bench_diffusion_approximations")
    parser.add_argument("--combine", action="store_true",
                        help="only write the combined table from the accuracy and the ADM results already written")
    args = parser.parse_args()
    from DiffusionRegistrationLib.features.adm import ADM_256_UNCOND_FLAGS

    if args.combine:
        reports = [json.loads((RESULTS / f"{args.name}_{part}.json").read_text()) for part in ("accuracy", "adm")]
        text = combined(*reports)
        print(text)
        with atomic_path(RESULTS / f"{args.name}.md") as temporary:
            temporary.write_text(text)
        return

    report = {"command": f"python benchmarks/bench_diffusion_approximations.py --name {args.name} " + " ".join(
                  a for a in ("--quick" if args.quick else "", f"--adm-steps {args.adm_steps}",
                              "--skip-accuracy" if args.skip_accuracy else "") if a),
              "machine": platform.machine(), "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "accuracy": [] if args.skip_accuracy else accuracy(args.quick),
              "adm": adm_times(args.adm_steps, ADM_256_UNCOND_FLAGS) if args.adm_steps > 0 else []}
    text = markdown(report)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    with atomic_path(RESULTS / f"{args.name}.json") as temporary:
        temporary.write_text(json.dumps(report, indent=1))
    with atomic_path(RESULTS / f"{args.name}.md") as temporary:
        temporary.write_text(text)


if __name__ == "__main__":
    main()
