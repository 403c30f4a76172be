"""One peer registration in its own process (for bench_registration.py): writes the field and its timings.

    python benchmarks/run_peer.py ants-syn fixed.nii.gz moving.nii.gz out.npz

out.npz holds `displacement` (fixed->moving, on the fixed grid), `seconds` (the registration call, or
the peer's whole process where it runs in one: Greedy), `cpu_seconds`, `consistency` (see peers.py) and,
for a peer run in a process of its own, that process's `peak_mb`; the settings string is printed on stdout.
"""
from __future__ import annotations

import sys

import numpy as np

from peers import PEERS


def main(argv: list[str]) -> int:
    name, fixed, moving, out = argv
    result = PEERS[name](fixed, moving)
    extra = {} if result.peak_mb is None else {"peak_mb": result.peak_mb}
    np.savez(out, displacement=result.displacement, seconds=result.seconds, cpu_seconds=result.cpu_seconds,
             consistency=result.consistency, **extra)
    print(result.settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
