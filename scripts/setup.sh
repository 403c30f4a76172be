#!/usr/bin/env bash
# Makes .venv (torch pinned first, so no CUDA wheels are pulled), installs the package with its test and
# benchmark extras, and fetches the Debian data packages named in DESIGN.md into the data cache.
# Idempotent: a second run only checks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DIFFREG_VENV:-$root/.venv}"
data="${DIFFREG_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/diffusionregistration/data}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
stamp="$venv/.installed-$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    "${pip[@]}" install --upgrade pip
    "${pip[@]}" install "torch==2.13.0"
    "${pip[@]}" install -e "$root[test,bench]"
    touch "$stamp"
fi

fetch_deb() {  # package, a file it must provide
    local pkg="$1" probe="$2"
    [ -e "$data/root/$probe" ] && return 0
    mkdir -p "$data/debs" "$data/root"
    if ! (cd "$data/debs" && apt-get download "$pkg" >/dev/null 2>&1); then
        if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; fi
        (cd "$data/debs" && apt-get download "$pkg")
    fi
    dpkg -x "$(ls -t "$data"/debs/"${pkg}"_*.deb | head -n1)" "$data/root"
    [ -e "$data/root/$probe" ] || { echo "setup: $pkg did not provide $probe" >&2; exit 1; }
}
fetch_deb mricron-data usr/share/mricron/templates/ch2bet.nii.gz
fetch_deb insighttoolkit5-examples usr/share/doc/insighttoolkit5-examples/examples/Data/BrainT1Slice.png
echo "setup: environment $venv, data $data/root"
