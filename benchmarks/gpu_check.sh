#!/usr/bin/env bash
# GPU readiness check (issue 11): one run, under 8 minutes on a CUDA machine; JSON to $1
# (default benchmarks/results/gpu_check.json). Without CUDA it runs every step at tiny sizes.
#   bash benchmarks/gpu_check.sh [out.json] [--tiny]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${1:-$root/benchmarks/results/gpu_check.json}"
shift || true
export PYTHONPATH="$root/DiffusionRegistration${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$here/gpu_check.py" --out "$out" "$@"
