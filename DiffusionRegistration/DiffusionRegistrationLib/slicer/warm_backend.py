"""A warm backend: one `diffreg worker` process kept in the background, so a run starts without paying Python's
start-up and the import of torch (the worker's protocol is in cli/worker.py).

`WarmBackend.start()` launches the worker and returns at once (the imports happen in the worker, e.g. while
the panel opens); `submit(argv)` sends one job (the arguments of `diffreg register`) and returns a `WarmRun`,
which is followed like a ProcessRunner: `poll()` from a GUI timer (reader threads put the worker's lines in a
queue, so nothing blocks), `wait()`, `cancel()`, `returncode`, `cancelled`, `error_message()`; its events are the
same Progress and LogLine events, ending with Finished. One job runs at a time.

- Cancel kills the worker's whole process group (SIGTERM, which leaves no partial output, then SIGKILL), and a
  fresh worker starts in the background for the next job.
- A worker that died (killed, crashed, or exited after its idle timeout) is started again by the next job; a
  job the worker never accepted is sent once more to the new one.
- `close()` (and the end of this process) ends the worker; a client killed outright closes the worker's input
  and leaves its parent gone, and the worker then stops by itself.
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import subprocess
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from ..progress import Progress
from .process_runner import (Event, Finished, LogLine, ProcessRunner, RunStatus, drain, json_event, progress_from_event,
                             python_executable)

IDLE_SECONDS = 600.0  # the worker exits after this long without a job, giving its memory back
# the environment variables that change what a worker does: the backend's settings and caches, where Python
# finds the Lib, torch's threads and devices; others (libraries set some on import) do not restart it
WORKER_VARIABLE_PREFIXES = ("DIFFREG_", "PYTHON", "CUDA_", "OMP_", "GOMP_", "MKL_", "TORCH", "HF_", "XDG_")
WORKER_VARIABLES = ("HOME", "PATH", "LD_LIBRARY_PATH", "TMPDIR")
LOG_LINES = 200
_OPEN: "weakref.WeakSet[WarmBackend]" = weakref.WeakSet()
_SHARED: dict[str, "WarmBackend"] = {}


@dataclass(frozen=True)
class WorkerEvent:
    """One JSON event line of the worker, every key kept (job id, exit code, pid)."""

    data: dict


def worker_environment(env: Optional[dict]) -> dict:
    """The part of `env` (default: this process's) that a worker started with it depends on."""
    environment = os.environ if env is None else env
    return {name: value for name, value in environment.items()
            if name.startswith(WORKER_VARIABLE_PREFIXES) or name in WORKER_VARIABLES}


def parse_worker_line(line: str) -> Union[WorkerEvent, LogLine]:
    text = line.rstrip("\r\n")
    data = json_event(text)
    return WorkerEvent(data) if data is not None else LogLine(text, "stdout")


class WarmRun(RunStatus):
    """One job on a WarmBackend, with ProcessRunner's interface (the Slicer job uses either)."""

    def __init__(self, backend: "WarmBackend", job_id: str, argv: Sequence[str],
                 temporary_folder: Optional[Union[str, Path]] = None):
        self.backend, self.job_id, self.argv = backend, job_id, [str(part) for part in argv]
        self.temporary_folder = Path(temporary_folder) if temporary_folder is not None else None
        self.pid: Optional[int] = None  # the worker's
        self.accepted = False  # the worker said it started this job
        self.resent = False
        self.exit: Optional[dict] = None  # the worker's exit event: returncode, pid, warm, seconds
        self._events: "queue.Queue[Event]" = queue.Queue()
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._error: Optional[str] = None
        self._finished: Optional[Finished] = None
        self._cancelled = False

    @property
    def running(self) -> bool:
        return self._finished is None

    def poll(self) -> list[Event]:
        """Every event since the last call, without blocking (for a GUI timer)."""
        self.backend.pump()
        return drain(self._events)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Blocks until the job ended; returns its exit code (events stay queued for poll())."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout)
            self.backend.pump(timeout=0.05)
        return self.returncode

    def cancel(self) -> None:
        """Stops the job at once by killing the worker (a fresh one starts) and removes the temporary folder."""
        self.backend.cancel(self)
        self.remove_temporary_folder()

    def error_message(self) -> str:
        """The job's "error" event if it sent one, else the last lines of the worker's output."""
        if self._error:
            return self._error
        tail = "\n".join(line for line in list(self._log)[-15:] if line.strip())
        return tail or f"the backend worker ended the job with code {self.returncode}"

    def remove_temporary_folder(self) -> None:
        if self.temporary_folder is not None and self.temporary_folder.exists():
            import shutil

            shutil.rmtree(self.temporary_folder, ignore_errors=True)

    # -- called by the backend, under its lock -------------------------------------------------------
    def _add(self, event: Event) -> None:
        if isinstance(event, LogLine):
            self._log.append(event.text)
        elif isinstance(event, Progress) and event.stage in ("error", "cancelled"):
            self._error = event.message
        self._events.put(event)

    def _end(self, finished: Finished, error: Optional[str] = None) -> None:
        if error and not self._error:
            self._error = error
        self._cancelled = self._cancelled or finished.cancelled
        self._finished = finished
        self._events.put(finished)


class WarmBackend:
    """A `python -m DiffusionRegistrationLib worker` process kept running, and the job it runs."""

    def __init__(self, python: Optional[str] = None, env: Optional[dict] = None, cwd: Optional[str] = None,
                 idle_seconds: float = IDLE_SECONDS):
        self.python = python_executable(python)
        self.env, self.cwd, self.idle_seconds = env, cwd, idle_seconds
        self.ready: Optional[dict] = None  # the worker's ready event: pid, import_seconds
        self._worker: Optional[ProcessRunner] = None
        self._run: Optional[WarmRun] = None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        _OPEN.add(self)

    def command(self) -> list[str]:
        return [self.python, "-m", "DiffusionRegistrationLib", "worker", "--idle-timeout", f"{self.idle_seconds:g}"]

    @property
    def pid(self) -> Optional[int]:
        """The running worker's process id (None before start and after it ended)."""
        worker = self._worker
        return worker.pid if worker is not None and worker.running else None

    @property
    def busy(self) -> bool:
        return self._run is not None and self._run.running

    def start(self) -> "WarmBackend":
        """Starts the worker unless one runs; returns at once (it imports torch in the background)."""
        with self._lock:
            if self._worker is None or not self._worker.running:
                self.ready = None
                self._worker = ProcessRunner(self.command(), env=self.env, cwd=self.cwd, stdin=True,
                                             merge_stderr=True, parse=parse_worker_line).start()
        return self

    def configure(self, env: Optional[dict], cwd: Optional[str]) -> None:
        """Sets the environment and folder of the workers started from now on; a running worker whose settings
        differ in what matters (worker_environment, the folder) is ended, and the next job starts one."""
        with self._lock:
            if (worker_environment(env), cwd) != (worker_environment(self.env), self.cwd):
                if self.busy:
                    raise RuntimeError("the warm backend is running a job")
                self._stop_worker()
            self.env, self.cwd = env, cwd

    def submit(self, argv: Sequence[str], temporary_folder: Optional[Union[str, Path]] = None) -> WarmRun:
        """Sends a job (the arguments of `diffreg register`) to the worker, starting one if needed."""
        with self._lock:
            self.pump()  # a worker that ended since the last job (idle, killed) is noticed here
            if self.busy:
                raise RuntimeError("the warm backend is running a job; wait for it or cancel it first")
            run = WarmRun(self, str(next(self._ids)), argv, temporary_folder)
            self._run = run
            self._send(run)
            return run

    def _send(self, run: WarmRun) -> None:
        self.start()
        run.pid = self._worker.pid
        self._worker.send(json.dumps({"id": run.job_id, "argv": run.argv}))  # if it died, its Finished follows

    # -- following -----------------------------------------------------------------------------------
    def pump(self, timeout: float = 0.0) -> None:
        """Hands the worker's queued lines to the job they belong to; waits up to `timeout` for the first."""
        worker = self._worker
        if worker is None:
            time.sleep(timeout)
            return
        try:
            first = worker.events.get(timeout=timeout) if timeout > 0 else worker.events.get_nowait()
        except queue.Empty:
            return
        with self._lock:
            for event in [first, *worker.poll()]:
                if worker is self._worker:
                    self._dispatch(event)

    def _dispatch(self, event: object) -> None:
        run = self._run if self._run is not None and self._run.running else None
        if isinstance(event, Finished):  # the worker process ended
            self._worker = None
            if run is None:
                return
            if not run.accepted and not run.resent:  # it exited (idle, killed) before it read the job
                run.resent = True
                self._send(run)
            else:
                self._run = None
                said = [line[len("error: "):] for line in run._log if line.startswith("error: ")]
                run._end(Finished(event.returncode or 1, False),
                         said[-1] if said else f"the backend worker ended unexpectedly (exit code {event.returncode})")
            return
        if isinstance(event, LogLine):
            if run is not None:
                run._add(event)
            return
        data = event.data
        stage, mine = data["stage"], run is not None and data.get("job") == run.job_id
        if stage == "ready":
            self.ready = data
        elif stage == "started":
            if mine:
                run.accepted = True
        elif stage == "exit":
            if mine:
                self._run, run.exit = None, data
                run._end(Finished(int(data.get("returncode", 1)), False))
        elif stage != "stopped" and run is not None:
            run._add(progress_from_event(data))

    # -- stopping ------------------------------------------------------------------------------------
    def cancel(self, run: WarmRun) -> None:
        """Stops `run` by killing the worker's process group, then starts a fresh worker in the background."""
        with self._lock:
            run._cancelled = True
            if run is self._run and run.running:
                self._kill_job()
                self.start()

    def close(self) -> None:
        """Cancels the running job, if any, and ends the worker."""
        with self._lock:
            if self.busy:
                self._run._cancelled = True
                self._kill_job()
            self._stop_worker()

    def _kill_job(self) -> None:
        run, self._run, worker = self._run, None, self._worker
        self._stop_worker()
        run._end(Finished(worker.returncode if worker is not None else 1, True))

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()  # SIGTERM to the group (a job cleans up), SIGKILL after a grace period; waits

    def __enter__(self) -> "WarmBackend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def shared_backend(python: Optional[str] = None) -> WarmBackend:
    """The warm backend of this process for `python` (one worker per interpreter, shared by the panel's jobs)."""
    key = python_executable(python)
    if key not in _SHARED:
        _SHARED[key] = WarmBackend(key)
    return _SHARED[key]


@atexit.register
def _close_all() -> None:
    for backend in list(_OPEN):
        backend.close()
