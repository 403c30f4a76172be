#!/usr/bin/env bash
# README command (b): set up a fresh machine if needed, then run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "${DIFFREG_VENV:-$root/.venv}/bin/python" -m pytest -q "$@"
