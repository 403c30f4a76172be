"""The background-process runner the Slicer logic uses: real child processes, real signals."""
from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from DiffusionRegistrationLib.slicer import process_runner
from DiffusionRegistrationLib.slicer.process_runner import (Finished, LogLine, ProcessRunner, backend_environment,
                                                     parse_line)
from DiffusionRegistrationLib.progress import Progress

CHILD = textwrap.dedent('''
    import json, subprocess, sys, time
    mode = sys.argv[1]
    print("starting up")
    for i in range(3):
        print(json.dumps({"stage": "deformable", "fraction": (i + 1) / 4, "message": f"step {i}"}), flush=True)
    print("{not json", flush=True)
    print("warning: something", file=sys.stderr, flush=True)
    if mode == "fail":
        print("error: fixed image /x.nii.gz: no such file. Check the path.", file=sys.stderr, flush=True)
        sys.exit(2)
    if mode == "tree":
        pids = []
        for _ in range(2):
            grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            pids.append(grandchild.pid)
        with open(sys.argv[2], "w") as handle:
            handle.write(" ".join(map(str, pids)))
        print(json.dumps({"stage": "waiting", "fraction": 0.0, "message": "grandchildren started"}), flush=True)
        time.sleep(120)
    print(json.dumps({"stage": "done", "fraction": 1.0, "message": ""}), flush=True)
''')


def alive(pid: int) -> bool:
    """True while `pid` runs: it exists (signal 0) and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


@pytest.fixture()
def child_script(tmp_path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


def collect(runner: ProcessRunner, timeout: float = 30.0) -> list:
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += runner.poll()
        if events and isinstance(events[-1], Finished):
            return events
        time.sleep(0.02)
    raise AssertionError(f"no Finished event within {timeout} s; got {events}")


def test_parse_line_separates_progress_from_log():
    assert parse_line('{"stage": "affine", "fraction": 0.5, "message": "level 1"}\n') == \
        Progress("affine", 0.5, "level 1")
    assert parse_line("plain text\n") == LogLine("plain text")
    assert parse_line('{"no_stage": 1}') == LogLine('{"no_stage": 1}')
    assert parse_line("{broken") == LogLine("{broken")


def test_runner_follows_json_lines_and_log(child_script, tmp_path):
    runner = ProcessRunner([sys.executable, str(child_script), "ok"]).start()
    events = collect(runner)
    progress = [e for e in events if isinstance(e, Progress)]
    logs = [e for e in events if isinstance(e, LogLine)]
    assert [p.fraction for p in progress] == [0.25, 0.5, 0.75, 1.0]
    assert [p.message for p in progress[:3]] == ["step 0", "step 1", "step 2"]
    assert LogLine("starting up", "stdout") in logs and LogLine("{not json", "stdout") in logs
    assert LogLine("warning: something", "stderr") in logs
    assert events[-1] == Finished(0, False) and runner.returncode == 0 and not runner.running
    assert runner.poll() == []


def test_runner_reports_the_backend_error_line(child_script):
    runner = ProcessRunner([sys.executable, str(child_script), "fail"]).start()
    assert runner.wait(timeout=30) == 2
    assert runner.error_message() == "fixed image /x.nii.gz: no such file. Check the path."


def test_cancel_kills_child_and_grandchildren_and_removes_temporary_folder(child_script, tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "fixed.nrrd").write_bytes(b"input copy")
    pid_file = tmp_path / "grandchildren.txt"
    runner = ProcessRunner([sys.executable, str(child_script), "tree", str(pid_file)], temporary_folder=work).start()
    deadline = time.monotonic() + 30
    seen = []
    while not any(isinstance(e, Progress) and e.stage == "waiting" for e in seen):
        assert time.monotonic() < deadline, seen
        seen += runner.poll()
        time.sleep(0.02)
    grandchildren = [int(p) for p in pid_file.read_text().split()]
    assert len(grandchildren) == 2 and all(alive(p) for p in grandchildren) and alive(runner.pid)

    runner.cancel()
    deadline = time.monotonic() + 10  # init may take a moment to reap the orphaned grandchildren
    while any(alive(p) for p in grandchildren + [runner.pid]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(runner.pid)
    assert not any(alive(p) for p in grandchildren)
    assert not work.exists()
    assert runner.cancelled and not runner.running and runner.returncode != 0
    assert isinstance(runner.poll()[-1], Finished)


def test_backend_environment_puts_the_module_folder_first():
    environment = backend_environment("/opt/module", base={"PYTHONPATH": "/a" + os.pathsep + "/b"})
    assert environment["PYTHONPATH"].split(os.pathsep) == ["/opt/module", "/a", "/b"]
    assert environment["PYTHONUNBUFFERED"] == "1"


def test_cancel_after_the_child_was_reaped_signals_no_process_group(monkeypatch):
    """Once the child is reaped its pid (its group's id) may belong to another process: no kill may follow."""
    runner = ProcessRunner([sys.executable, "-c", "pass"]).start()
    assert runner.wait(timeout=30) == 0
    signalled = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: signalled.append((pgid, sig)))
    runner.cancel()
    assert signalled == []


def test_child_writes_utf8_whatever_the_environment_says():
    code = "import os, sys; print(os.environ['PYTHONUTF8'], sys.stdout.encoding, 'Zürich Ω')"
    runner = ProcessRunner([sys.executable, "-c", code], env={**os.environ, "PYTHONIOENCODING": "latin-1",
                                                               "PYTHONUTF8": "0"}).start()
    assert runner.wait(timeout=30) == 0
    lines = [e.text for e in runner.poll() if not isinstance(e, Finished)]
    assert lines == ["1 utf-8 Zürich Ω"]


def test_windows_tree_kill_opens_no_console(monkeypatch):
    calls = []
    monkeypatch.setattr(process_runner.subprocess, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    process_runner.kill_tree_windows(4321)
    (command,), options = calls[0]
    assert command == ["taskkill", "/F", "/T", "/PID", "4321"]
    assert options["creationflags"] == 0x08000000  # CREATE_NO_WINDOW
