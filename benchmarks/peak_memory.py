"""Runs a module (`-m name`) or a script like `python` would, then writes the process's peak memory.

    python benchmarks/peak_memory.py OUT.json -m DiffusionRegistrationLib register ...
    python benchmarks/peak_memory.py OUT.json benchmarks/run_peer.py ants-syn ...

`run_child` runs such a command from a benchmark and times it (wall and CPU seconds, from wait4).

The peak is VmHWM of /proc/self/status, read as the run ends. A child's ru_maxrss seen by its parent is
no good here: Linux carries the parent's resident size at fork into the child's maximum, so every child
of a benchmark that holds 1 mm volumes would report at least the benchmark's own size.
"""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    out, target, *rest = sys.argv[1:]
    code = 0
    ending = os._exit

    def write_then_end(status: int) -> None:  # `diffreg` ends with os._exit, past the `finally` below
        Path(out).write_text(json.dumps({"peak_mb": peak_mb()}))
        ending(status)

    os._exit = write_then_end
    try:
        if target == "-m":
            sys.argv = [rest[0], *rest[1:]]
            runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *rest]
            sys.path.insert(0, str(Path(target).resolve().parent))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        Path(out).write_text(json.dumps({"peak_mb": peak_mb()}))
    sys.exit(code)


def run_child(command: list[str], log: Path) -> tuple[float, float, int]:
    """Runs `command`; returns its wall seconds, CPU seconds (user + system) and exit code."""
    with open(log, "w") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_utime + usage.ru_stime, process.returncode


if __name__ == "__main__":
    main()
