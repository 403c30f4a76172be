"""The review page's runs without a browser: the engine's per-level preview, and `diffreg register` run on a
thread of the server's process (cli/review/warm.py) that a cancel really stops and whose errors are one line."""
import time

import numpy as np
import pytest

from DiffusionRegistrationLib.engine.config import make_config
from DiffusionRegistrationLib.engine.registration import register
from DiffusionRegistrationLib.geometry.synthetic import random_smooth_displacement, warp_with_displacement
from DiffusionRegistrationLib.progress import Progress


@pytest.fixture(scope="module")
def warped_pair(colin_small):
    field = random_smooth_displacement(colin_small.grid, 6.0, 3)
    return warp_with_displacement(colin_small, field), colin_small


def test_the_preview_shows_each_level_and_the_last_one_is_the_result(warped_pair):
    fixed, moving = warped_pair
    previews = []
    result = register(fixed, moving, make_config("fast"), preview=previews.append)
    assert len(previews) == len(result.history)  # one per level of every stage
    assert all(p.shape == result.displacement.shape for p in previews)
    np.testing.assert_allclose(previews[-1], result.displacement, atol=1e-4)
    assert np.abs(previews[0] - previews[-1]).max() > 0.5  # the estimate moved after the first level


def _argv(folder, fixed, moving, *extra):
    return ["register", "--fixed", str(fixed), "--moving", str(moving), "--output-dir", str(folder / "out"),
            "--preset", "fast", *extra]


@pytest.fixture
def files(tmp_path, warped_pair, write_image_file):
    fixed, moving = warped_pair
    return write_image_file(fixed, tmp_path / "fixed.nii.gz"), write_image_file(moving, tmp_path / "moving.nii.gz")


def _follow(runner, seconds=300):
    events, deadline = [], time.monotonic() + seconds
    while runner.running:
        events += runner.poll()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return events + runner.poll()


def test_a_warm_run_reports_progress_keeps_the_last_preview_and_writes_the_outputs(tmp_path, files):
    from DiffusionRegistrationLib.cli.review.warm import InProcessRunner
    from DiffusionRegistrationLib.slicer.process_runner import Finished

    runner = InProcessRunner(_argv(tmp_path, *files)).start()
    events = _follow(runner)
    assert isinstance(events[-1], Finished) and runner.returncode == 0
    stages = {event.stage for event in events if isinstance(event, Progress)}
    assert {"affine", "deformable", "preview", "done"} <= stages
    assert runner.latest_preview() is not None and runner.latest_preview() is None  # taken once
    assert (tmp_path / "out" / "transform.h5").is_file()


def test_cancel_stops_the_run_within_a_step_and_writes_nothing(tmp_path, files):
    from DiffusionRegistrationLib.cli.review.warm import InProcessRunner

    runner = InProcessRunner(_argv(tmp_path, *files, "--set", "iterations=[4000,4000]")).start()
    while not any(isinstance(event, Progress) and event.stage == "deformable" for event in runner.poll()):
        assert runner.running, runner.error_message()
        time.sleep(0.02)
    started = time.monotonic()
    runner.cancel(grace_seconds=30)
    assert not runner.running and time.monotonic() - started < 10
    assert runner.cancelled and runner.returncode == 130
    assert not (tmp_path / "out" / "transform.h5").exists()


def test_a_failed_warm_run_ends_with_one_error_line(tmp_path, files):
    from DiffusionRegistrationLib.cli.review.warm import InProcessRunner

    runner = InProcessRunner(_argv(tmp_path, files[0], tmp_path / "missing.nii.gz")).start()
    _follow(runner)
    assert runner.returncode == 2
    assert "missing.nii.gz" in runner.error_message() and "\n" not in runner.error_message()


def test_the_session_runs_warm_in_this_process_and_a_cancel_leaves_the_scene_as_it_was(warped_pair):
    slicer = pytest.importorskip("slicer", reason="slicer-core (test extra) is not installed")
    from DiffusionRegistrationLib.cli.review.warm import InProcessRunner, WarmJob
    from DiffusionRegistrationLib.slicer import volume_node_from_image
    from DiffusionRegistrationLib.engine.options import RegistrationOptions
    from DiffusionRegistrationLib.slicer.session import ReviewSession

    scene = slicer.vtkMRMLScene()
    session = ReviewSession(scene)
    session.job_class = WarmJob
    session.set_inputs(fixed=volume_node_from_image(warped_pair[0], scene=scene, name="fixed"),
                       moving=volume_node_from_image(warped_pair[1], scene=scene, name="moving"))
    job = session.start(RegistrationOptions(preset="fast"))
    run = session.wait()
    assert isinstance(job.prepared(30).runner, InProcessRunner) and job.runner.returncode == 0
    assert run.transform.GetScene() is scene and session.runs == [run]

    nodes = scene.GetNumberOfNodes()
    job = session.start(RegistrationOptions(preset="fast", overrides={"iterations": [4000, 4000]}))
    runner = job.prepared(30).runner
    while not any(isinstance(event, Progress) and event.stage == "deformable" for event in runner.poll()):
        assert runner.running, runner.error_message()
        time.sleep(0.02)
    session.cancel()
    assert job.stopped(30) and runner.cancelled and runner.returncode == 130
    assert scene.GetNumberOfNodes() == nodes and session.runs == [run] and not session.running
