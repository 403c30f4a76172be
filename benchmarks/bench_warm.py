"""Benchmark (issue 20): a 2D slice registration through the warm backend against ANTsPy SyN's registration call.

The pair is bench_registration.py's `slice2d` one (BrainWeb T1 slice onto the PD slice under a known smooth
field, seed 0), registered with `--preset multimodal`. Each repeat runs, in a rotating order:
- warm: a job on the `diffreg worker` that the Slicer jobs share (started once, before the repeats), timed as
  the panel waits for it: from submit() to the job's end (reading, registering, writing every default output);
- warm-1-thread: the same with `--set threads=1` (one torch thread instead of one per core);
- slicer-job: the Slicer logic's RegistrationJob on the same worker, from MRML volume nodes to the transform,
  warped and checkerboard nodes (writing the inputs and job.json, the job, importing the results);
- ants-syn: ANTsPy's `ants.registration(type_of_transform="SyN")` call alone, in this process (ANTsPy loaded
  once, as the worker loads torch once);
- cold: `diffreg register` as a process of its own (start-up, torch's import, the same job), for reference.
The table gives median, min and max seconds and the median over SyN's median, and the same for CPU seconds
(all threads: the worker's during the job, plus this process's for the Slicer job; the cold process's user and
system time; this process's during SyN's call); the JSON every sample.

    python benchmarks/bench_warm.py --repeats 7 --out benchmarks/results/bench_warm.json

Not part of the test suite. Times depend on the load of the machine: the methods are interleaved so that
others' load hits every method alike; the load average at the start and end is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_registration import run_child, slice_cases  # noqa: E402
from DiffusionRegistrationLib.io.transform_files import read_displacement  # noqa: E402
from DiffusionRegistrationLib.slicer.job import idle_backend  # noqa: E402
from DiffusionRegistrationLib.slicer.warm_backend import WarmBackend, WarmRun  # noqa: E402
from peers import ants_syn  # noqa: E402

PRESET = "multimodal"
METHODS = ("warm", "warm-1-thread", "slicer-job", "ants-syn", "cold")


def register_arguments(case, output: Path) -> list[str]:
    return ["register", "--fixed", case.fixed_path, "--moving", case.moving_path, "--output-dir", str(output),
            "--preset", PRESET]


def run_warm(backend: WarmBackend, case, output: Path, extra: tuple[str, ...] = ()) -> dict:
    start = time.perf_counter()
    run = backend.submit([*register_arguments(case, output), *extra, "--progress", "json"])
    if run.wait() != 0:
        raise RuntimeError(f"warm job failed: {run.error_message()}")
    seconds = time.perf_counter() - start
    report = json.loads((output / "report.json").read_text())
    return {"seconds": seconds, "worker_seconds": run.exit["seconds"], "cpu_seconds": run.exit["cpu_seconds"],
            "register_seconds": report["seconds"],
            "pid": run.exit["pid"], **case.score(read_displacement(output / "transform.h5")[0])}


def slicer_job_runner(case, folder: Path) -> Optional[Callable[[], dict]]:
    """The Slicer logic's job on MRML nodes (slicer-core), or None where slicer-core is not installed."""
    try:
        import slicer  # noqa: F401
    except ImportError:
        return None
    from DiffusionRegistrationLib.io.images import read_image
    from DiffusionRegistrationLib.slicer import volume_node_from_image
    from DiffusionRegistrationLib.slicer.job import RegistrationJob
    from DiffusionRegistrationLib.engine.options import RegistrationOptions

    scene = slicer.vtkMRMLScene()
    fixed = volume_node_from_image(read_image(case.fixed_path), scene=scene, name="fixed")
    moving = volume_node_from_image(read_image(case.moving_path), scene=scene, name="moving")

    def run() -> dict:
        start, cpu = time.perf_counter(), time.process_time()
        job = RegistrationJob(scene, fixed, moving, RegistrationOptions(preset=PRESET), work_folder=str(folder))
        result = job.start().wait()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if not isinstance(job.runner, WarmRun):
            raise RuntimeError("the Slicer job did not run on the warm backend")
        moving.SetAndObserveTransformNodeID(None)  # the next repeat registers the original again
        return {"seconds": seconds, "cpu_seconds": cpu + job.runner.exit["cpu_seconds"], "pid": job.runner.exit["pid"],
                "register_seconds": result.report["seconds"]}

    return run


def run_syn(case) -> dict:
    result = ants_syn(case.fixed_path, case.moving_path)
    return {"seconds": result.seconds, "cpu_seconds": result.cpu_seconds,
            **case.score(np.asarray(result.displacement, dtype=np.float64))}


def run_cold(case, output: Path) -> dict:
    command = [sys.executable, "-m", "DiffusionRegistrationLib", *register_arguments(case, output), "--progress", "none"]
    output.mkdir(parents=True)
    seconds, cpu_seconds, code = run_child(command, output.parent / f"{output.name}.log")
    if code != 0:
        raise RuntimeError(f"cold run failed: {(output.parent / f'{output.name}.log').read_text()[-2000:]}")
    report = json.loads((output / "report.json").read_text())
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "register_seconds": report["seconds"],
            **case.score(read_displacement(output / "transform.h5")[0])}


def median(runs: list[dict], key: str) -> Optional[float]:
    values = [run[key] for run in runs if run.get(key) is not None]
    return float(np.median(values)) if values else None


def summarise(samples: dict[str, list[dict]]) -> list[dict]:
    syn = samples.get("ants-syn") or []
    rows = []
    for method, runs in samples.items():
        if not runs:
            continue
        times = [s["seconds"] for s in runs]
        row = {"method": method, "n": len(runs), "median_seconds": float(np.median(times)),
               "min_seconds": min(times), "max_seconds": max(times)}
        row.update({key: median(runs, key) for key in ("cpu_seconds", "register_seconds", "tre_mean")})
        for key, ratio in (("median_seconds", "vs_syn_call"), ("cpu_seconds", "cpu_vs_syn_call")):
            reference = median(syn, "seconds" if key == "median_seconds" else key)
            row[ratio] = row[key] / reference if reference and row[key] is not None else None
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    header = (f"{'method':<14}{'n':>3}{'median s':>10}{'min s':>8}{'max s':>8}{'/ SyN call':>12}{'CPU s':>8}"
              f"{'/ SyN':>7}{'in register()':>15}{'TRE mm':>8}")
    print(header)
    print("-" * len(header))
    cell = lambda value, digits: "-" if value is None else f"{value:.{digits}f}"  # noqa: E731
    for row in rows:
        print(f"{row['method']:<14}{row['n']:>3}{cell(row['median_seconds'], 3):>10}{cell(row['min_seconds'], 3):>8}"
              f"{cell(row['max_seconds'], 3):>8}{cell(row['vs_syn_call'], 2):>12}{cell(row['cpu_seconds'], 2):>8}"
              f"{cell(row['cpu_vs_syn_call'], 2):>7}"
              f"{cell(row['register_seconds'], 3):>15}{cell(row['tre_mean'], 2):>8}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats of every method")
    parser.add_argument("--methods", default=",".join(METHODS), help="some of " + ", ".join(METHODS))
    parser.add_argument("--out", default="bench_warm.json")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if any(m not in METHODS for m in methods):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")
    document: dict = {"preset": PRESET, "pair": "slice2d seed 0 (BrainWeb T1 onto PD under a known field)",
                      "repeats": args.repeats, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                      "load_average_start": os.getloadavg()}
    samples: dict[str, list[dict]] = {m: [] for m in methods}
    backend = idle_backend().start()
    with tempfile.TemporaryDirectory(prefix="diffreg-bench-warm-") as name:
        folder = Path(name)
        case = slice_cases("slice2d", [0], folder)[0]
        runners: dict[str, Callable[[int], dict]] = {
            "warm": lambda i: run_warm(backend, case, folder / f"warm{i}"),
            "warm-1-thread": lambda i: run_warm(backend, case, folder / f"warm1_{i}", ("--set", "threads=1")),
            "ants-syn": lambda i: run_syn(case),
            "cold": lambda i: run_cold(case, folder / f"cold{i}"),
        }
        job = slicer_job_runner(case, folder) if "slicer-job" in methods else None
        if job is not None:
            runners["slicer-job"] = lambda i: job()
        methods = [m for m in methods if m in runners]
        # one untimed round: the worker's imports, ANTsPy's import and first call, the file caches
        first = {m: runners[m](-1) for m in methods}
        document["first_round"] = first
        document["worker_ready"] = backend.ready
        for i in range(args.repeats):
            for method in methods[i % len(methods):] + methods[:i % len(methods)]:
                sample = runners[method](i)
                samples[method].append(sample)
                print(json.dumps({"repeat": i, "method": method, **{k: round(v, 4) if isinstance(v, float) else v
                                                                    for k, v in sample.items()}}), flush=True)
    backend.close()
    document.update(load_average_end=os.getloadavg(), samples=samples, summary=summarise(samples))
    print()
    print_table(document["summary"])
    Path(args.out).write_text(json.dumps(document, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
