"""NiftyReg as a user runs it: its programs one after the other, as from a shell; then their peak memory.

    python benchmarks/niftyreg_process.py peak.json '["reg_aladin", "-ref", ...]' '["reg_f3d", ...]'

peers.niftyreg times this whole process. The peak is the largest of the programs' maximum resident sets
(RUSAGE_CHILDREN), which count from this small process's size at fork, not a benchmark's.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    out, *commands = argv
    code = 0
    for command in commands:
        code = subprocess.run(json.loads(command)).returncode
        if code != 0:
            break
    Path(out).write_text(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
