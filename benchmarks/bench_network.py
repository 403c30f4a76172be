"""Benchmark (issue 4): the registration network against instance optimisation, on 2D head slices.

Data: axial slices (2 mm, physical LPS axial planes) of four heads: Colin27 with skull (ch2), Colin27
skull-stripped (ch2bet), the MNI152 2009a template (nilearn) and the ITK example head
(KmeansTest_T1UCharRaw). Around each head's largest axial slice, slices at even offsets train the
network, slices at odd offsets are held out. Every pair is a slice and the same slice warped by a known
random smooth fold-free field (synthetic.random_smooth_displacement, max --max-mm, smoothness 20 mm),
so the true fixed->moving map is known.

Methods on the held-out pairs: no registration, the network alone, the network fine-tuned on the pair
(--finetune-steps), and instance optimisation (`register()` with the 'default' preset, LNCC).
Measures: TRE (mean |u_est - u_true| over the head, mm), Dice of thresholded tissue classes (Otsu, 3
classes plus background) and, on Colin slices, AAL Dice (labels warped by the estimated field vs the
truly warped labels), and wall time per pair (the network's includes resampling to and from its grid).
The network is trained here, for --steps steps: intensity similarity (LNCC); the diffusion similarity
needs pretrained weights that these machines cannot fetch.

    .venv/bin/python benchmarks/bench_network.py --steps 400 --out benchmarks/results/bench_network.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DiffusionRegistration"))

from DiffusionRegistrationLib.engine.config import make_config  # noqa: E402
from DiffusionRegistrationLib.io.data import COLIN_AAL, COLIN_BET, COLIN_T1, ITK_HEAD, MNI152, data_file  # noqa: E402
from DiffusionRegistrationLib.core.image import Grid, Image  # noqa: E402
from DiffusionRegistrationLib.io.images import write_image  # noqa: E402
from DiffusionRegistrationLib.geometry.metrics import dice_per_label, field_tre, mean_dice  # noqa: E402
from DiffusionRegistrationLib.network.data import Augmentation, SyntheticPairDataset  # noqa: E402
from DiffusionRegistrationLib.network.inference import load_network, register_with_network  # noqa: E402
from DiffusionRegistrationLib.network.model import NetworkSpec  # noqa: E402
from DiffusionRegistrationLib.network.train import TrainConfig, train  # noqa: E402
from DiffusionRegistrationLib.engine.registration import register  # noqa: E402
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement  # noqa: E402

HEADS = {"ch2": COLIN_T1, "ch2bet": COLIN_BET, "mni152": MNI152, "itk_head": ITK_HEAD}
SPACING = 2.0
HELD_OUT_OFFSETS = (-7, 5, -1, 11)  # odd: never trained on


def axial_volume(image: sitk.Image, interpolator=sitk.sitkLinear) -> sitk.Image:
    """The volume resampled onto an identity-direction (LPS) 2 mm grid over its physical bounding box."""
    size = image.GetSize()
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([c * (s - 1) for c, s in zip(corner, size)])
                        for corner in np.ndindex(2, 2, 2)])
    low, high = corners.min(0), corners.max(0)
    out_size = [int(np.floor((h - l) / SPACING)) + 1 for l, h in zip(low, high)]
    reference = sitk.Image(out_size, sitk.sitkUInt8)
    reference.SetSpacing([SPACING] * 3)
    reference.SetOrigin(low.tolist())
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def slice_image(volume: sitk.Image, k: int) -> Image:
    """Axial slice k of an identity-direction volume as a 2D Image (x, y in LPS mm)."""
    array = sitk.GetArrayFromImage(volume)[k].astype(volume_dtype(volume))
    origin = volume.GetOrigin()
    grid = Grid(tuple(volume.GetSize()[:2]), (SPACING, SPACING), (origin[0], origin[1]), (1.0, 0.0, 0.0, 1.0))
    return Image(np.ascontiguousarray(array), grid)


def volume_dtype(volume: sitk.Image):
    return np.int16 if volume.GetPixelID() in (sitk.sitkInt16, sitk.sitkUInt8, sitk.sitkInt32) else np.float32


def head_slices(offsets: range) -> dict[str, list[tuple[int, Image, Image | None]]]:
    """For every head: (offset, slice, AAL slice or None) at the given offsets from its largest slice."""
    aal = axial_volume(sitk.ReadImage(str(data_file(COLIN_AAL))), sitk.sitkNearestNeighbor)
    out = {}
    for name, relative in HEADS.items():
        volume = axial_volume(sitk.Cast(sitk.ReadImage(str(data_file(relative))), sitk.sitkFloat32))
        array = sitk.GetArrayFromImage(volume)
        area = (array > 0.2 * np.percentile(array, 99.5)).reshape(array.shape[0], -1).sum(1)
        centre = int(np.argmax(area))
        out[name] = [(o, slice_image(volume, centre + o),
                      slice_image(aal, centre + o) if name.startswith("ch2") else None) for o in offsets]
    return out


def tissue_classes(image: Image) -> Image:
    """Background + 3 intensity classes by Otsu multiple thresholds (a stand-in segmentation)."""
    classes = sitk.OtsuMultipleThresholds(image.to_sitk(), 3)
    return Image(sitk.GetArrayFromImage(classes).astype(np.int16), image.grid)


def evaluate(result_field: np.ndarray, case: dict, seconds: float) -> dict:
    row = {"seconds": seconds, "tre_mm": field_tre(case["true"], result_field, case["head_mask"])["mean"]}
    for key in ("tissue", "aal"):
        if case.get(f"moving_{key}") is not None:
            warped = warp_with_displacement(case[f"moving_{key}"], result_field, "nearest")
            row[f"dice_{key}"] = mean_dice(dice_per_label(case[f"fixed_{key}"].array, warped.array))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--grid", default="64,80")
    parser.add_argument("--max-mm", type=float, default=8.0)
    parser.add_argument("--finetune-steps", type=int, default=50)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--held-out-per-head", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_network.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    slices = head_slices(range(-12, 13))
    work = Path(tempfile.mkdtemp(prefix="bench_network_"))
    training_files = []
    for name, items in slices.items():
        for offset, image, _ in items:
            if offset % 2 == 0:
                training_files.append(str(write_image(image, work / f"{name}_{offset:+d}.nii.gz")))
    spec = NetworkSpec(dim=2, size=tuple(int(v) for v in args.grid.split(",")), stages=(8, 4, 2, 1),
                       channels=(16, 32, 32, 32))
    dataset = SyntheticPairDataset(training_files, spec, max_mm=args.max_mm, smoothness_mm=20.0,
                                   augmentation=Augmentation(0.03, 0.1))
    config = TrainConfig(similarity="lncc", regularization=1.0, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, finetune_lr=args.finetune_lr, checkpoint_every=args.steps, log_every=10,
                         device="cpu")
    start = time.perf_counter()
    outcome = train(dataset, spec, config, checkpoint_dir=work / "checkpoints", log_dir=work / "logs", show_bar=True)
    train_seconds = time.perf_counter() - start
    losses = [h["loss"] for h in outcome.history]
    network = load_network(outcome.checkpoint, torch.device("cpu"))

    cases = []
    for name, items in slices.items():
        chosen = HELD_OUT_OFFSETS[: args.held_out_per_head]
        for offset, moving, aal in (item for item in items if item[0] in chosen):
            seed = 1000 + len(cases)
            true = random_smooth_displacement(moving.grid, args.max_mm, seed).astype(np.float32)
            fixed = warp_with_displacement(moving, true)
            tissue = tissue_classes(moving)
            cases.append({"name": f"{name}{offset:+d}", "fixed": fixed, "moving": moving, "true": true,
                          "head_mask": warp_with_displacement(tissue, true, "nearest").array > 0,
                          "moving_tissue": tissue, "fixed_tissue": warp_with_displacement(tissue, true, "nearest"),
                          "moving_aal": aal, "fixed_aal": None if aal is None else warp_with_displacement(aal, true, "nearest")})

    methods = {
        "no registration": lambda c: (np.zeros_like(c["true"]), 0.0),
        "network": lambda c: _timed(lambda: register_with_network(c["fixed"], c["moving"], network, device="cpu")),
        f"network + fine-tune {args.finetune_steps}": lambda c: _timed(lambda: register_with_network(
            c["fixed"], c["moving"], network, finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
            device="cpu")),
        "instance optimisation (default preset)": lambda c: _timed(lambda: register(
            c["fixed"], c["moving"], make_config("default", {"device": "cpu"}))),
    }
    rows = {method: [] for method in methods}
    for case in cases:
        for method, run in methods.items():
            field, seconds = run(case)
            rows[method].append({"pair": case["name"], **evaluate(field, case, seconds)})
            print(f"{case['name']:>14} {method:<40} TRE {rows[method][-1]['tre_mm']:.2f} mm  "
                  f"{seconds:.2f} s", flush=True)

    summary = {}
    for method, items in rows.items():
        summary[method] = {key: float(np.mean([r[key] for r in items if key in r]))
                           for key in ("tre_mm", "dice_tissue", "dice_aal", "seconds") if any(key in r for r in items)}
    print(f"\ntrained {args.steps} steps (batch {args.batch_size}, grid {spec.size}, LNCC) in {train_seconds:.0f} s; "
          f"loss {np.mean(losses[:10]):.4f} -> {np.mean(losses[-10:]):.4f}")
    print(f"{'method':<42}{'TRE mm':>8}{'Dice tissue':>13}{'Dice AAL':>10}{'s/pair':>9}")
    for method, values in summary.items():
        print(f"{method:<42}{values['tre_mm']:>8.2f}{values.get('dice_tissue', float('nan')):>13.3f}"
              f"{values.get('dice_aal', float('nan')):>10.3f}{values['seconds']:>9.2f}")
    report = {"machine": {"platform": platform.platform(), "threads": args.threads},
              "settings": vars(args), "network": spec.to_dict(), "train_seconds": train_seconds,
              "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
              "held_out_pairs": len(cases), "summary": summary, "per_pair": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


def _timed(call) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = call()
    return result.displacement, time.perf_counter() - start


if __name__ == "__main__":
    main()
