"""The Lib on the Pythons that Slicer ships: 3.9 (Slicer 5.8) and 3.12 (Slicer 5.10 and later).

Every .py file of the extension byte-compiles with each interpreter (pyenv's), and the torch-free unit
tests run in a small venv per interpreter (numpy, SimpleITK, scipy, Pillow and pytest only), made by
scripts/setup.sh under ~/.cache/diffusionregistration/venvs/<version>. A version that pyenv lacks is
skipped with the reason; a missing venv is a failure that names the set-up command.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("3.9.18", "3.12.1")
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
VENVS = Path(os.environ.get("DIFFREG_VENVS", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                            / "diffusionregistration" / "venvs"))
# the unit tests that need neither torch nor MRML: settings, catalog and weights, images and data,
# landmarks, atomic files, the process runner and the Slicer job's options
TORCH_FREE_TESTS = ("test_settings.py", "test_declarations.py", "test_catalog.py", "test_data.py", "test_landmarks.py",
                    "test_atomic.py", "test_process_runner.py")
COMPILE = """
import pathlib, sys
bad = []
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.py")):
    if any(part.startswith(".") or part in ("build", "out") for part in path.parts):
        continue
    try:
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    except SyntaxError as error:
        bad.append(f"{path}:{error.lineno}: {error.msg}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def interpreter(version: str) -> Path:
    path = PYENV / "versions" / version / "bin" / "python"
    if not path.is_file():
        pytest.skip(f"pyenv has no Python {version} ({path})")
    return path


@pytest.mark.parametrize("version", VERSIONS)
def test_every_file_compiles(version):
    done = subprocess.run([str(interpreter(version)), "-c", COMPILE, str(ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_torch_free_modules_import_and_their_tests_pass(version):
    interpreter(version)
    python = VENVS / version / "bin" / "python"
    assert python.is_file(), f"no test venv for Python {version} at {python}: run `bash scripts/setup.sh`"
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "DiffusionRegistration"), "PYTHONDONTWRITEBYTECODE": "1"}
    environment.pop("PYTHONHOME", None)
    imports = ("import DiffusionRegistrationLib.cli.main, DiffusionRegistrationLib.engine.config, "
               "DiffusionRegistrationLib.features.weights, DiffusionRegistrationLib.io.images, "
               "DiffusionRegistrationLib.io.landmarks, DiffusionRegistrationLib.engine.options, "
               "DiffusionRegistrationLib.slicer.process_runner, DiffusionRegistrationLib.similarity.registry, "
               "DiffusionRegistrationLib.slicer.panel_settings; "
               "import sys; assert 'torch' not in sys.modules")
    done = subprocess.run([str(python), "-c", imports], capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           *[str(ROOT / "Testing" / name) for name in TORCH_FREE_TESTS]],
                          capture_output=True, text=True, env=environment, cwd=str(ROOT), timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " error" not in done.stdout, done.stdout[-2000:]
