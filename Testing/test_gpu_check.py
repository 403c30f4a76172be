"""benchmarks/gpu_check.sh runs every step (at tiny sizes without CUDA) and writes its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_at_tiny_sizes_and_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--tiny"], check=True, env=env,
                   capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["bf16_matmul"]["tflops"] > 0
    taps = {(row["tap"], row["dtype"]) for row in report["adm_extraction"]}
    assert taps == {(tap, dtype) for tap in ("output_blocks.10", "input_blocks.11")
                    for dtype in ("torch.float32", "torch.bfloat16")}
    assert all(row["gflop"] > 0 and row["gflops_per_s"] > 0 for row in report["adm_extraction"])
    assert [row["mode"] for row in report["registration_3d"]] == ["exact", "fast"]
    assert all(row["steps"] >= 2 and row["seconds"] > 0 for row in report["registration_3d"])
    assert report["network_training"]["pairs_per_s"] > 0
