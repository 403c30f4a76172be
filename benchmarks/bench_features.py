"""Feature-extraction cost of the full-size ADM (the paper's 256x256 unconditional architecture).

Random weights (small normal values, float32): the cost is the same as the real checkpoint's, the
features mean nothing. For each case (input size, tap, batch) it reports time per slice, GFLOP per
slice (torch.utils.flop_counter.FlopCounterMode: convolutions, matmuls, attention), GFLOP/s and peak
memory, and writes JSON.

Peak memory: on the CPU each case runs in a fresh child process and reports the growth of the
process's resident high-water mark (resource.getrusage ru_maxrss) during extraction, above what the
built model already held (the weights are reported separately); on CUDA torch.cuda.max_memory_allocated
above the weights. Times are the median of --repeats runs after one warm-up. "cpu s/slice" is the
process CPU time (user + system) per slice divided by the thread count: on a machine that other jobs
share it estimates the uncontended time, while the wall time does not.

On a machine other jobs share, two threads can be much slower than one (every OpenMP parallel region
waits for the thread that is not scheduled: on this 2-core machine at load 3, 2 threads gave 47 GFLOP/s
and 1 thread 104 GFLOP/s for the same slice). Run on an idle machine, or take the --threads 1 rate
times two as the estimate of the 2-thread rate, and report the load average (written in the JSON).
Tried and kept: channels-last (oneDNN, about 1.35x over NCHW), scaled_dot_product_attention (CPU flash
kernel), in-place activations and inference mode. Tried and dropped: bfloat16 autocast on the CPU
(slower: weights re-cast every call), torch.compile (no gain, a minute of compilation per shape).

    python benchmarks/bench_features.py --out out/bench_features.json                 # CPU, 2 threads
    python benchmarks/bench_features.py --device cuda --dtype bfloat16 --batch 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DiffusionRegistration"))

#: (name, height, width, tap, timestep): 256x256 for the 2D paper tap; a 2 mm Colin27 slice
#: (ch2bet at 2 mm is 91 x 109 x 91; an axial slice 109 x 91 pads to 112 x 96) for the 3D paper tap
CASES = [("256x256 decoder block 10", 256, 256, "output_blocks.10", 60),
         ("2mm slice 112x96 encoder block 11", 112, 96, "input_blocks.11", 50),
         ("2mm slice 112x96 decoder block 10", 112, 96, "output_blocks.10", 60)]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def flop_counter():
    """FlopCounterMode that also counts the CPU flash-attention kernel (torch counts only the CUDA ones)."""
    import torch
    from torch.utils import flop_counter as fc

    mapping = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None and cpu_flash not in fc.flop_registry:
        def count(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

        mapping[cpu_flash] = count
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)


def run_case(args: argparse.Namespace, case: tuple) -> dict:
    import torch

    from DiffusionRegistrationLib.features.adm import ADM_256_UNCOND_FLAGS, build_adm, random_init_
    from DiffusionRegistrationLib.features.adm_extractor import AdmExtractor

    name, height, width, tap, timestep = case
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    device = torch.device(args.device)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    flags = ADM_256_UNCOND_FLAGS
    manifest = ROOT / "Testing" / "reference" / "adm_256_uncond_manifest.json"
    if manifest.is_file():
        flags = json.loads(manifest.read_text())["config"]
    started = time.perf_counter()
    model = random_init_(build_adm(flags, "meta"), seed=0, gain=0.5).to(device)
    build_s = time.perf_counter() - started
    extractor = AdmExtractor(model, tap=tap, timestep=timestep, chunk_size=args.batch, compute_dtype=dtype,
                             channels_last=not args.no_channels_last, backbone_id="adm-256-random")
    images = torch.rand(args.batch, 1, height, width, device=device)
    weights_rss = _maxrss_bytes()
    context = torch.inference_mode if args.grad_mode == "inference" else torch.no_grad

    def once():
        with context():
            out = extractor(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    # FLOPs counted on the meta device: exact, free, and independent of which kernel runs the attention
    meta_model = build_adm(flags, "meta")
    pad = extractor.size_multiple
    meta_input = torch.empty(1, 3, -(-height // pad) * pad, -(-width // pad) * pad, device="meta")
    with flop_counter() as counter:
        meta_model.forward_to(meta_input, timestep, tap)
    flops = counter.get_total_flops()
    del meta_model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        weights_gpu = torch.cuda.memory_allocated()
    once()  # warm-up (oneDNN / cuDNN choose their kernels)
    walls, cpus = [], []
    for _ in range(args.repeats):
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        out = once()
        walls.append(time.perf_counter() - wall0)
        cpus.append(_cpu_seconds() - cpu0)
    wall = statistics.median(walls) / args.batch
    cpu = statistics.median(cpus) / args.batch / args.threads
    result = {"case": name, "height": height, "width": width, "tap": tap, "timestep": timestep,
              "batch": args.batch, "feature_shape": list(out.shape[1:]), "gflop_per_slice": flops / 1e9,
              "wall_s_per_slice": wall, "wall_s_runs": walls, "gflops_wall": flops / 1e9 / wall,
              "build_s": build_s}
    if device.type == "cpu":
        result.update({"cpu_s_per_slice": cpu, "gflops_cpu_time": flops / 1e9 / cpu,
                       "peak_extra_mib": (_maxrss_bytes() - weights_rss) / 2**20,
                       "process_peak_mib": _maxrss_bytes() / 2**20,
                       "memory_method": "getrusage ru_maxrss growth during extraction, fresh process per case"})
    else:
        result.update({"peak_extra_mib": (torch.cuda.max_memory_allocated() - weights_gpu) / 2**20,
                       "weights_mib": weights_gpu / 2**20,
                       "memory_method": "torch.cuda.max_memory_allocated above the weights"})
    return result


VOLUME_2MM = (91, 109, 91)  # Colin27 (ch2bet) at 2 mm, (z, y, x)


def run_similarity(args: argparse.Namespace) -> dict:
    """Per-step cost of the diffusion similarity on a 2 mm volume: fast mode (network replaced by a
    stand-in that returns features of the right shape, so only the warping and LNCC are timed) at
    several slice strides, and exact mode with the full-size network (4 slices of fixed and warped)."""
    import tempfile

    import torch
    import torch.nn.functional as F

    from DiffusionRegistrationLib.features.adm import ADM_256_UNCOND_FLAGS, build_adm, random_init_
    from DiffusionRegistrationLib.features.adm_extractor import AdmExtractor
    from DiffusionRegistrationLib.features.base import FeatureExtractor
    from DiffusionRegistrationLib.similarity.diffusion import DiffusionFeatureSimilarity
    from DiffusionRegistrationLib.similarity.feature_grids import slice_positions

    torch.set_num_threads(args.threads)

    class StandIn(FeatureExtractor):
        stride, size_multiple = 8, 8

        def __init__(self):
            super().__init__(50)
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def cache_key(self):
            return "stand-in"

        def extract(self, x, generator):
            b, _, h, w = x.shape
            return torch.randn(b, 512, h // 8, w // 8, generator=generator)

    fixed = torch.rand(1, 1, *VOLUME_2MM)
    moving = torch.rand(1, 1, *VOLUME_2MM)
    theta = torch.eye(3, 4)[None]
    theta[0, 0, 3] = 0.01
    grid0 = F.affine_grid(theta, [1, 1, *VOLUME_2MM], align_corners=True)
    results = {"volume": VOLUME_2MM, "fast": [], "exact": {}}
    with tempfile.TemporaryDirectory() as cache:
        for stride, step_slices in ((2, None), (4, None), (8, None), (4, 8), (2, 8)):
            similarity = DiffusionFeatureSimilarity(StandIn(), mode="fast", slice_stride=stride, cache=False,
                                                    cache_dir=cache, step_slices=step_slices)
            similarity.prepare(fixed, moving, None, None)
            times = []
            for _ in range(3):
                grid = grid0.clone().requires_grad_(True)
                started = time.perf_counter()
                similarity.mapped_loss(fixed, moving, grid).backward()
                times.append(time.perf_counter() - started)
            slices = sum(len(slice_positions(n, stride)) for n in VOLUME_2MM)
            results["fast"].append({"slice_stride": stride, "step_slices": step_slices, "slices_per_image": slices,
                                    "step_s": statistics.median(times)})
            print(f"fast mode, slice stride {stride}, step_slices {step_slices}: {slices} slices per image, "
                  f"{statistics.median(times):.3f} s per step (warp + LNCC + backward)", flush=True)
        if args.exact_steps <= 0:
            return results
        model = random_init_(build_adm(ADM_256_UNCOND_FLAGS, "meta"), seed=0, gain=0.5)
        extractor = AdmExtractor(model, dim=3, backbone_id="adm-256-random")
        similarity = DiffusionFeatureSimilarity(extractor, mode="exact", cache=False, cache_dir=cache)
        similarity.prepare(fixed, moving, None, None)
        times = []
        for _ in range(args.exact_steps):
            grid = grid0.clone().requires_grad_(True)
            started = time.perf_counter()
            similarity.mapped_loss(fixed, moving, grid).backward()
            times.append(time.perf_counter() - started)
        results["exact"] = {"step_s_runs": times, "step_s": statistics.median(times)}
        print(f"exact mode: {statistics.median(times):.1f} s per step (4 fixed slices when not yet cached, "
              f"4 warped slices forward + backward)", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="slices per forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="0,1,2", help="indices into CASES, comma separated")
    parser.add_argument("--grad-mode", default="inference", choices=["inference", "no_grad"])
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--no-mkldnn", action="store_true")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--similarity", action="store_true",
                        help="also time the 2 mm 3D similarity step in fast and exact mode")
    parser.add_argument("--exact-steps", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_case(args, CASES[args.child])))
        return 0
    results = []
    for index in (int(i) for i in args.cases.split(",") if i.strip()):
        command = [sys.executable, __file__, "--child", str(index), "--device", args.device, "--dtype", args.dtype,
                   "--threads", str(args.threads), "--batch", str(args.batch), "--repeats", str(args.repeats),
                   "--grad-mode", args.grad_mode]
        command += ["--no-channels-last"] * args.no_channels_last + ["--no-mkldnn"] * args.no_mkldnn
        environment = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        child = subprocess.run(command, capture_output=True, text=True, env=environment)
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            return child.returncode
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{r['case']:<36} {r['gflop_per_slice']:8.1f} GFLOP  {r['wall_s_per_slice']:7.2f} s/slice wall "
              f"{r['gflops_wall']:6.0f} GFLOP/s"
              + (f"  {r['cpu_s_per_slice']:6.2f} cpu-s/thread {r['gflops_cpu_time']:6.0f} GFLOP/s(cpu time)"
                 if "cpu_s_per_slice" in r else "")
              + f"  peak +{r['peak_extra_mib']:.0f} MiB", flush=True)
    similarity = run_similarity(args) if args.similarity else None
    if similarity:
        per_slice = next((r for r in results if r["tap"] == "input_blocks.11"), None)
        if per_slice:  # extraction estimate: slices of both images x time per 112x96 slice
            for row in similarity["fast"]:
                row["extraction_s_estimate"] = 2 * row["slices_per_image"] * per_slice["wall_s_per_slice"]
                if "cpu_s_per_slice" in per_slice:
                    row["extraction_s_estimate_cpu_time"] = 2 * row["slices_per_image"] * per_slice["cpu_s_per_slice"]
                row["extraction_tflop"] = 2 * row["slices_per_image"] * per_slice["gflop_per_slice"] / 1000
                print(f"fast mode, slice stride {row['slice_stride']}, step_slices {row['step_slices']}: extraction of both images ~"
                      f"{row['extraction_tflop']:.1f} TFLOP, ~{row['extraction_s_estimate']:.0f} s here", flush=True)
    report = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "batch": args.batch,
              "grad_mode": args.grad_mode, "channels_last": not args.no_channels_last,
              "mkldnn": not args.no_mkldnn, "load_average": os.getloadavg(),
              "cpu": platform.processor() or platform.machine(), "cases": results, "similarity_2mm": similarity}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
