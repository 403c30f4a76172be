#!/usr/bin/env bash
# Makes .venv (torch pinned first, so no CUDA wheels are pulled), installs the package with its test, benchmark
# and review extras, installs the system packages the tests need (as root), and fetches the Debian data
# packages named in DESIGN.md into the data cache.
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
    "${pip[@]}" install -e "$root[test,bench,hub,review]"
    touch "$stamp"
fi

# Python 3.9 (Slicer 5.8) and 3.12 (Slicer 5.10 and later): one small venv each with the backend's torch-free
# dependencies, in which Testing/test_python_versions.py runs the torch-free unit tests. A version that pyenv
# lacks is left out (its test is skipped and says so).
venvs="${DIFFREG_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/diffusionregistration/venvs}"
for version in 3.9.18 3.12.1; do
    interpreter="${PYENV_ROOT:-$HOME/.pyenv}/versions/$version/bin/python"
    target="$venvs/$version"
    if [ ! -x "$interpreter" ]; then
        echo "setup: pyenv has no Python $version; its version test will be skipped"
        continue
    fi
    [ -f "$target/.installed-1" ] && continue
    "$interpreter" -m venv --clear "$target"
    "$target/bin/python" -m pip --disable-pip-version-check -q install numpy SimpleITK scipy Pillow pytest
    touch "$target/.installed-1"
done

# System packages the tests need, installed when missing (as root, as in CI): Qt's offscreen platform (the
# Slicer panel's tests, PySide6) loads the first libraries; the review page's test renders through Mesa's EGL
# (llvmpipe, no display: libegl-mesa0, libgl1-mesa-dri) and drives Debian's chromium (no browser download).
qt_libraries=(libEGL.so.1:libegl1 libGL.so.1:libgl1 libxkbcommon.so.0:libxkbcommon0 libfontconfig.so.1:libfontconfig1
              libdbus-1.so.3:libdbus-1-3 libEGL_mesa.so.0:libegl-mesa0)
missing=()
for entry in "${qt_libraries[@]}"; do
    ldconfig -p | grep -q "${entry%%:*}" || missing+=("${entry#*:}")
done
compgen -G "/usr/lib/*/dri/swrast_dri.so" >/dev/null || missing+=(libgl1-mesa-dri)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: the tests need: apt-get install ${missing[*]}" >&2
    fi
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
