"""Packaging: a wheel built from the repository, installed into a fresh virtual environment and run from
outside the source tree, finds its model catalog (package data) and registers a pair."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*command, cwd, check=True) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # the wheel, not a source tree
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with only the wheel installed; the heavy dependencies (torch, SimpleITK ...) are borrowed
    from the test environment through a path entry, so nothing is downloaded and no editable finder runs."""
    work = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", work / "dist", ROOT,
         cwd=work)
    wheel = next((work / "dist").glob("diffusion_registration-*.whl"))
    venv = work / "venv"
    _run(getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv, cwd=work)
    python = venv / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=work).stdout.strip())
    (purelib / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=work)
    return venv, work


def test_wheel_installs_lists_models_and_registers(installed, t1_slice, write_image_file):
    venv, work = installed
    where = _run(venv / "bin" / "python", "-c", "import DiffusionRegistrationLib as d; print(d.__file__)", cwd=work)
    assert Path(where.stdout.strip()).is_relative_to(venv), "the wheel's package must be the one imported"
    listed = _run(venv / "bin" / "diffreg", "models", "list", cwd=work)
    assert "adm-256-uncond" in listed.stdout
    fixed = write_image_file(t1_slice, work / "fixed.nii.gz")
    moving = write_image_file(t1_slice.with_array(t1_slice.array[::-1].copy()), work / "moving.nii.gz")
    _run(venv / "bin" / "diffreg", "register", "--fixed", fixed, "--moving", moving, "--output-dir", work / "out",
         "--preset", "fast", "--set", "iterations=[5,5]", "--progress", "none", cwd=work)
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["config"]["iterations"] == [5, 5] and (work / "out" / "transform.h5").stat().st_size > 0
