"""Greedy as a user runs it: one process that runs each given greedy command in turn, like running the
`greedy` program once per command (picsl-greedy from PyPI ships the program as a Python module).

    python benchmarks/greedy_process.py 3 "-i f.nii.gz m.nii.gz -a ... -o affine.mat" "-i ... -o warp.nii.gz"

peers.greedy times this whole process (start-up, reading, registration, writing its outputs).
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from picsl_greedy import Greedy2D, Greedy3D

    dim, *commands = argv
    greedy = Greedy3D() if dim == "3" else Greedy2D()
    for command in commands:
        greedy.execute(f"-d {dim} {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
