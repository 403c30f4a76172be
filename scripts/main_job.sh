#!/usr/bin/env bash
# README command (a): set up a fresh machine if needed, then register a real pair with a known answer
# (Colin27 skull-stripped onto Colin27 with skull, deformed) and write the transform, the warped image,
# a before/after checkerboard PNG and a report into out/demo (or the folder given as first argument).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "${DIFFREG_VENV:-$root/.venv}/bin/diffreg" demo --output-dir "${1:-$root/out/demo}" --progress bar
