"""GPU readiness in one run (see gpu_check.sh): what a card does with this project's workloads.

Writes JSON: the measured bf16 matmul rate; ADM feature extraction at the paper's 2D tap (decoder block
10, t=60) and 3D tap (encoder block 11, t=50) in float32 and bf16 (GFLOP/s from torch's FLOP counter, and
the ratio to the matmul rate); a full 3D 2 mm diffusion registration (the `diffusion` preset's schedule,
no affine stage) in exact and fast mode; registration-network training throughput; the peak GPU memory
of each step. ADM weights are random: times only, never accuracy. Without CUDA, or with --tiny, every
step runs at tiny sizes (small ADM, 6 mm volume, 2 steps) so the test suite proves that the script runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measured(device: torch.device, call: Callable[[], object], repeats: int) -> dict:
    """Seconds per call (after one warm-up call) and the peak GPU memory (None on a CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    call()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"seconds": seconds, "peak_gpu_memory_gib": peak}


def matmul_rate(device: torch.device, tiny: bool) -> dict:
    n = 256 if tiny else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    timing = _measured(device, lambda: a @ b, 2 if tiny else 20)
    return {"n": n, "tflops": 2 * n ** 3 / timing["seconds"] / 1e12, **timing}


def adm_extraction(device: torch.device, tiny: bool, matmul_tflops: float) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from DiffusionRegistrationLib.features.adm import ADM_256_UNCOND_FLAGS, ADM_SMALL_FLAGS
    from DiffusionRegistrationLib.features.adm_extractor import AdmExtractor

    flags = ADM_SMALL_FLAGS if tiny else ADM_256_UNCOND_FLAGS
    batch, size = (2, 64) if tiny else (8, 256)
    images = torch.rand(batch, 1, size, size, device=device)
    rows = []
    for dim in (2, 3):
        for dtype in (None, torch.bfloat16):
            extractor = AdmExtractor.random(flags=flags, seed=0, dim=dim, device=device, compute_dtype=dtype,
                                            chunk_size=batch)
            with torch.no_grad():
                with FlopCounterMode(display=False) as counter:
                    extractor(images)
                timing = _measured(device, lambda: extractor(images), 1 if tiny else 5)
            gflops = counter.get_total_flops() / timing["seconds"] / 1e9
            rows.append({"tap": extractor.tap, "timestep": extractor.timestep, "dtype": str(dtype or torch.float32),
                         "batch": batch, "size": size, "gflop": counter.get_total_flops() / 1e9,
                         "gflops_per_s": gflops, "ratio_to_bf16_matmul": gflops / (matmul_tflops * 1e3), **timing})
            del extractor
    return rows


def registration(device: torch.device, tiny: bool) -> list[dict]:
    """The 3D diffusion registration with the preset's schedule (tiny: 6 mm volumes, 2 steps per level)."""
    import SimpleITK as sitk

    from DiffusionRegistrationLib.cli.demo import demo_pair
    from DiffusionRegistrationLib.engine.config import PRESETS, make_config
    from DiffusionRegistrationLib.engine.registration import register
    from DiffusionRegistrationLib.features.adm import ADM_256_UNCOND_FLAGS, ADM_SMALL_FLAGS
    from DiffusionRegistrationLib.io.data import COLIN_BET, COLIN_T1, data_file
    from DiffusionRegistrationLib.core.image import Image
    from DiffusionRegistrationLib.io.images import read_image

    if tiny:  # Colin27 with skull and skull-stripped at 6 mm, no known field needed for times
        fixed, moving = (Image.from_sitk(sitk.Shrink(read_image(data_file(name)).to_sitk(), [6] * 3), name)
                         for name in (COLIN_T1, COLIN_BET))
    else:
        pair = demo_pair(0)
        fixed, moving = pair["fixed"], pair["moving"]
    preset = PRESETS["diffusion"].settings
    rows = []
    for mode in ("exact", "fast"):
        params = {**preset["similarity_params"], "mode": mode, "cache": False,
                  "extractor": {"backbone": "adm-small-random", "seed": 0,
                                "flags": ADM_SMALL_FLAGS if tiny else ADM_256_UNCOND_FLAGS}}
        iterations = (2, 2) if tiny else preset["iterations"]
        config = make_config("diffusion", {"similarity_params": params, "affine": False, "iterations": iterations,
                                           "tolerance": 0.0, "device": device.type})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = register(fixed, moving, config)
        _sync(device)
        rows.append({"mode": mode, "shape": list(fixed.array.shape), "steps": sum(h["steps"] for h in result.history),
                     "seconds": time.perf_counter() - start,
                     "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30
                     if device.type == "cuda" else None})
    return rows


def network_training(device: torch.device, tiny: bool) -> dict:
    """Pairs per second of registration-network training steps (forward, LNCC + smoothness, Adam)."""
    from DiffusionRegistrationLib.network.model import NetworkSpec, RegistrationNetwork, warp

    spec = NetworkSpec(dim=3, size=(16, 16, 16), stages=(2, 1), channels=(4, 8)) if tiny else \
        NetworkSpec(dim=3, size=(96, 112, 96))
    network = RegistrationNetwork(spec).to(device)
    optimizer = torch.optim.Adam(network.parameters(), 1e-4)
    batch = 1 if tiny else 2
    fixed = torch.rand(batch, 1, *spec.shape, device=device)
    moving = torch.rand(batch, 1, *spec.shape, device=device)

    def step() -> None:
        optimizer.zero_grad()
        field = network(fixed, moving)
        warped = warp(moving, field)
        loss = F.mse_loss(warped, fixed) + 0.1 * field.diff(dim=2).pow(2).mean()
        loss.backward()
        optimizer.step()

    timing = _measured(device, step, 1 if tiny else 10)
    return {"grid": list(spec.size), "batch": batch, "pairs_per_s": batch / timing["seconds"], **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the default without CUDA)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "tiny": tiny}
    report["bf16_matmul"] = matmul_rate(device, tiny)
    report["adm_extraction"] = adm_extraction(device, tiny, report["bf16_matmul"]["tflops"])
    report["registration_3d"] = registration(device, tiny)
    report["network_training"] = network_training(device, tiny)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
