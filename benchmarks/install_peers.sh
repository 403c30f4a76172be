#!/usr/bin/env bash
# Installs the benchmark peers that cannot live in the project's environment, each in a virtual environment of
# its own under the peers cache ($DIFFREG_PEERS, default ${XDG_CACHE_HOME:-~/.cache}/diffusionregistration/peers),
# with their programs linked into its bin/ (where benchmarks/peers.py looks for them):
# - NiftyReg (reg_aladin, reg_f3d, reg_transform, reg_resample): PyPI's `niftyreg` is a source package whose
#   CMakeLists asks for CMake < 3.5, which CMake 4 refuses unless CMAKE_POLICY_VERSION_MINIMUM is set; the
#   build takes several minutes on two cores.
# - FireANTs (fireants-python: a Python with FireANTs): it pins SimpleITK 2.2.1, older than the project's; torch
#   is installed first and pinned, as in scripts/setup.sh, so that no CUDA wheels are pulled.
# Not part of scripts/setup.sh (the tests do not need it). Idempotent: a second run only checks.
set -euo pipefail
peers="${DIFFREG_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/diffusionregistration/peers}"
python="${PYTHON:-python3}"
mkdir -p "$peers/bin"

if [ ! -x "$peers/bin/reg_f3d" ]; then
    "$python" -m venv --clear "$peers/niftyreg"
    CMAKE_POLICY_VERSION_MINIMUM=3.5 "$peers/niftyreg/bin/python" -m pip --disable-pip-version-check -q \
        install "niftyreg==1.5.70rc1"
    programs="$("$peers/niftyreg/bin/python" -c 'import niftyreg; print(niftyreg.bin_path)')"
    for program in reg_aladin reg_f3d reg_transform reg_resample; do
        ln -sf "$programs/$program" "$peers/bin/$program"
    done
fi
if [ ! -x "$peers/bin/fireants-python" ]; then
    "$python" -m venv --clear "$peers/fireants"
    pip=("$peers/fireants/bin/python" -m pip --disable-pip-version-check -q)
    "${pip[@]}" install "torch==2.13.0"
    "${pip[@]}" install "fireants==1.5.0" "torch==2.13.0"
    # a wrapper, not a link: a venv's Python finds its environment from the path it is started by
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$peers/fireants/bin/python" > "$peers/bin/fireants-python"
    chmod +x "$peers/bin/fireants-python"
fi
"$peers/bin/reg_f3d" --version >/dev/null
"$peers/bin/fireants-python" -c "import fireants.registration.greedy"
echo "install_peers: NiftyReg $("$peers/bin/reg_f3d" --version 2>&1 | tail -n1) and FireANTs in $peers/bin"
