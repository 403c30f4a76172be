"""The warm backend (`diffreg worker` and its client WarmBackend): real worker processes, real signals, and
registrations of the small BrainWeb T1 slice onto the PD slice under a known smooth field.

- A job on the warm worker writes the same transform, bit for bit, as `diffreg register` run as a process of
  its own with the same arguments (job.json as the Slicer job writes it), after the worker ran other jobs with
  other settings; every job runs in the same worker process, which had torch loaded before the job began.
- Bad jobs (a missing file, arguments argparse refuses, lines that are not a job) end with an "error" event and
  an exit code, and the same worker then reads the next line and runs a good job.
- Cancel stops the worker's process group at once and leaves no file in the output folder; a fresh worker is
  started and the next job succeeds on it.
- A worker that was idle too long exits by itself, one killed outright is replaced, and a job sent to either
  still runs; close() and a client killed outright (SIGKILL, mid-job) leave no worker process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.core.image import Image
from DiffusionRegistrationLib.engine.config import save_config
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement
from DiffusionRegistrationLib.io.transform_files import read_displacement
from DiffusionRegistrationLib.progress import Progress
from DiffusionRegistrationLib.engine.options import RegistrationOptions
from DiffusionRegistrationLib.slicer.process_runner import Finished, backend_environment
from DiffusionRegistrationLib.slicer.warm_backend import WarmBackend
from test_process_runner import alive

LIBRARY_PARENT = Path(__file__).resolve().parents[1] / "DiffusionRegistration"
QUICK = {"threads": 1, "affine_iterations": (10, 5)}
TIMEOUT = 300  # seconds for one small job on a loaded 2-core machine


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture(scope="module")
def pair(t1_slice, pd_slice, tmp_path_factory) -> tuple[str, str]:
    """(fixed, moving) files: the PD slice under a known smooth field, and the T1 slice."""
    folder = tmp_path_factory.mktemp("pair")
    field = random_smooth_displacement(t1_slice.grid, max_mm=8.0, seed=0, smoothness_mm=25.0)
    fixed = Image(warp_with_displacement(pd_slice, field).array, pd_slice.grid)
    paths = str(folder / "fixed.nrrd"), str(folder / "moving.nrrd")
    for image, path in zip((fixed, t1_slice), paths):
        sitk.WriteImage(image.to_sitk(), path)
    return paths


def job(pair, output: Path, config: Path, steps: int = 20, similarity: str = "mi", **overrides) -> list[str]:
    """The arguments of a Slicer job: input files, job.json (a saved RegistrationConfig) and an output folder."""
    options = RegistrationOptions(preset="fast", similarity=similarity, steps=steps, device="cpu", seed=1,
                                  overrides={**QUICK, **overrides})
    save_config(options.config(), config)
    return ["register", "--fixed", pair[0], "--moving", pair[1], "--output-dir", str(output), "--config", str(config),
            "--progress", "json"]


def new_backend(**options) -> WarmBackend:
    return WarmBackend(env=backend_environment(LIBRARY_PARENT), cwd=str(LIBRARY_PARENT), **options)


@pytest.fixture(scope="module")
def backend():
    with new_backend() as started:
        yield started


def events_of(run) -> list:
    assert run.wait(TIMEOUT) is not None
    return run.poll()


def test_warm_jobs_match_a_cold_process_bit_for_bit_in_one_worker(backend, pair, tmp_path):
    first = backend.submit(job(pair, tmp_path / "first", tmp_path / "first.json", similarity="lncc",
                               threads=2, steps=15))
    events = events_of(first)
    assert first.returncode == 0, first.error_message()
    assert isinstance(events[-1], Finished) and events[-1].returncode == 0

    missing = backend.submit(["register", "--fixed", str(tmp_path / "nowhere.nrrd"), "--moving", pair[1],
                              "--output-dir", str(tmp_path / "missing")])
    assert missing.wait(TIMEOUT) == 2 and "nowhere.nrrd: no such file" in missing.error_message()
    refused = backend.submit(["register", "--fixed", pair[0], "--moving", pair[1], "--output-dir",
                              str(tmp_path / "refused"), "--preset", "fast", "--bogus"])
    assert any(isinstance(e, Progress) and e.stage == "error" for e in missing.poll())
    assert refused.wait(TIMEOUT) == 2 and "unrecognized arguments: --bogus" in refused.error_message()
    assert not (tmp_path / "missing").exists() and not (tmp_path / "refused").exists()

    arguments = job(pair, tmp_path / "warm", tmp_path / "job.json")
    second = backend.submit(arguments)
    events = events_of(second)
    assert second.returncode == 0, second.error_message()
    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert "affine" in stages and "deformable" in stages and stages[-1] == "done"
    assert events[-2].message == str((tmp_path / "warm" / "report.json").resolve())

    # one worker, the one that said it was ready; torch was loaded before the later jobs began
    pids = {run.exit["pid"] for run in (first, missing, refused, second)}
    assert pids == {backend.ready["pid"]} == {backend.pid}
    assert second.exit["warm"] and refused.exit["warm"]

    cold = [sys.executable, "-m", "DiffusionRegistrationLib",
            *[str(tmp_path / "cold") if a == str(tmp_path / "warm") else a for a in arguments]]
    done = subprocess.run(cold, env=backend_environment(LIBRARY_PARENT), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    warm_field, warm_grid = read_displacement(tmp_path / "warm" / "transform.h5")
    cold_field, cold_grid = read_displacement(tmp_path / "cold" / "transform.h5")
    assert np.abs(cold_field).max() > 0.5  # it did register
    assert np.array_equal(warm_field, cold_field) and warm_grid.same_as(cold_grid, 0.0)
    warped = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / run / "warped.nii.gz"))) for run in ("warm", "cold")]
    assert np.array_equal(*warped)
    assert sorted(p.name for p in (tmp_path / "warm").iterdir()) == sorted(p.name for p in (tmp_path / "cold").iterdir())


def test_lines_that_are_not_jobs_get_an_error_each_and_the_worker_reads_on():
    """The protocol itself: every bad line gets an "error" event and an exit event with code 2; at the end of
    its input the worker exits with 0."""
    lines = ["not json", json.dumps(["register"]), json.dumps({"id": "a", "argv": ["apply", "--input", "x"]}),
             json.dumps({"id": "b", "argv": ["register", "--help"]}), json.dumps({"id": "c", "argv": "register"})]
    done = subprocess.run([sys.executable, "-m", "DiffusionRegistrationLib", "worker"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, env=backend_environment(LIBRARY_PARENT), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["stage"] == "ready"
    errors = [e["message"] for e in events if e["stage"] == "error"]
    exits = [(e["job"], e["returncode"]) for e in events if e["stage"] == "exit"]
    assert exits == [(None, 2), (None, 2), ("a", 2), ("b", 2), ("c", 2)]
    assert "one JSON object per line" in errors[0] and "one JSON object per line" in errors[1]
    assert all("starting with \"register\"" in message for message in (errors[2], errors[4]))
    assert "--help is not a job" in errors[3]
    assert {e["pid"] for e in events if e["stage"] == "exit"} == {events[0]["pid"]}


def test_cancel_kills_the_worker_leaves_no_file_and_the_next_job_runs(backend, pair, tmp_path):
    output = tmp_path / "cancelled"
    run = backend.submit(job(pair, output, tmp_path / "long.json", steps=20000))
    deadline = time.monotonic() + TIMEOUT
    while not any(isinstance(e, Progress) and e.stage == "deformable" for e in run.poll()):
        assert run.running and time.monotonic() < deadline
        time.sleep(0.02)
    worker = run.pid
    run.cancel()
    assert run.cancelled and not run.running and isinstance(run.poll()[-1], Finished)
    assert gone_within(worker, 10)
    assert not output.exists() or list(output.rglob("*")) == []

    assert backend.pid not in (None, worker)  # a fresh worker started in the background
    after = backend.submit(job(pair, tmp_path / "after", tmp_path / "after.json", steps=5))
    assert after.wait(TIMEOUT) == 0, after.error_message()
    assert after.exit["pid"] == backend.pid != worker
    assert read_displacement(tmp_path / "after" / "transform.h5")[0].shape[:2] == sitk.ReadImage(pair[0]).GetSize()[::-1]


def test_close_ends_the_worker(pair):
    backend = new_backend().start()
    pid = backend.pid
    backend.close()
    assert backend.pid is None and gone_within(pid, 10)


def test_a_new_environment_restarts_the_worker_only_when_the_backend_reads_what_changed():
    environment = backend_environment(LIBRARY_PARENT)
    backend = new_backend().start()
    try:
        pid = backend.pid
        backend.configure({**environment, "KMP_DUPLICATE_LIB_OK": "True"}, str(LIBRARY_PARENT))  # torch sets it
        assert backend.pid == pid
        backend.configure({**environment, "DIFFREG_CACHE": "/elsewhere"}, str(LIBRARY_PARENT))
        assert backend.pid is None and gone_within(pid, 10)
        assert backend.start().pid not in (None, pid)
    finally:
        backend.close()


def test_idle_worker_exits_and_a_dead_worker_is_replaced(pair, tmp_path):
    backend = new_backend(idle_seconds=1)
    try:
        first = backend.start().pid
        deadline = time.monotonic() + TIMEOUT
        while backend.pid is not None or alive(first):  # it loads, waits a second without a job and exits
            backend.pump(timeout=0.1)
            assert time.monotonic() < deadline
        assert backend.ready is not None and backend.ready["pid"] == first

        after_idle = backend.submit(job(pair, tmp_path / "after_idle", tmp_path / "a.json", steps=5))
        assert after_idle.wait(TIMEOUT) == 0, after_idle.error_message()
        assert after_idle.exit["pid"] != first

        os.kill(after_idle.exit["pid"], signal.SIGKILL)  # killed outright, and a job sent at once
        after_kill = backend.submit(job(pair, tmp_path / "after_kill", tmp_path / "b.json", steps=5))
        assert after_kill.wait(TIMEOUT) == 0, after_kill.error_message()
        assert after_kill.exit["pid"] not in (first, after_idle.exit["pid"])
        assert (tmp_path / "after_kill" / "report.json").is_file()
    finally:
        backend.close()


CLIENT = textwrap.dedent('''
    import json, os, sys, time
    from DiffusionRegistrationLib.slicer.process_runner import backend_environment
    from DiffusionRegistrationLib.slicer.warm_backend import WarmBackend
    from DiffusionRegistrationLib.progress import Progress

    backend = WarmBackend(env=backend_environment(sys.argv[1]), cwd=sys.argv[1])
    run = backend.submit(json.loads(sys.argv[2]))
    while not any(isinstance(e, Progress) and e.stage == "deformable" for e in run.poll()):
        time.sleep(0.02)
    holder = os.fork()  # a forked child keeps the worker's pipes open: no end of input, no broken pipe
    if holder == 0:
        time.sleep(600)
        os._exit(0)
    print(run.pid, holder, flush=True)
    time.sleep(600)
''')


def test_a_client_killed_mid_job_leaves_no_worker(pair, tmp_path):
    """Even while a process forked from the client holds the worker's pipes open, the worker notices that its
    parent is gone and stops (its job cleans up as on SIGTERM)."""
    arguments = job(pair, tmp_path / "orphan", tmp_path / "long.json", steps=20000)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(LIBRARY_PARENT), json.dumps(arguments)],
                              stdout=subprocess.PIPE, text=True, env=backend_environment(LIBRARY_PARENT))
    worker = holder = None
    try:
        worker, holder = map(int, client.stdout.readline().split())
        assert alive(worker)
        client.kill()
        client.wait()
        assert gone_within(worker, 15)
        assert not (tmp_path / "orphan").exists() or list((tmp_path / "orphan").rglob("*")) == []
    finally:
        client.kill()
        client.wait()
        for pid in (holder, worker):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_slicer_jobs_run_on_the_worker_that_warm_up_started(colin_small, tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML library from PyPI) is not installed")
    from DiffusionRegistrationLib.slicer import volume_node_from_image
    from DiffusionRegistrationLib.slicer.job import RegistrationJob, idle_backend, warm_up
    from DiffusionRegistrationLib.slicer.warm_backend import WarmRun

    field = random_smooth_displacement(colin_small.grid, max_mm=6.0, seed=2, smoothness_mm=25.0)
    scene = slicer.vtkMRMLScene()
    fixed = volume_node_from_image(colin_small, scene=scene, name="fixed")
    moving = volume_node_from_image(Image(warp_with_displacement(colin_small, field).array, colin_small.grid),
                                    scene=scene, name="moving")
    options = RegistrationOptions(preset="fast", similarity="mse", steps=5, device="cpu", overrides=QUICK)
    backend = idle_backend()
    try:
        warm_up()
        worker = backend.pid
        assert worker is not None
        pids = []
        for _ in range(2):
            job = RegistrationJob(scene, fixed, moving, options, work_folder=str(tmp_path)).start()
            result = job.wait()
            assert isinstance(job.runner, WarmRun) and result.transform.IsA("vtkMRMLGridTransformNode")
            pids.append(job.runner.exit["pid"])
        assert pids == [worker, worker] and list(tmp_path.iterdir()) == []
    finally:
        backend.close()
    assert gone_within(worker, 10)
