"""`diffreg worker`: a long-lived backend process that runs the registrations sent to it, torch imported once.

A registration run as its own process pays Python's start-up and the import of torch and SimpleITK before
it starts; a worker pays them once, so that the Slicer panel and the review page start the next run at once.

Protocol: one JSON object per line each way.
- In (stdin): ``{"id": "7", "argv": ["register", "--fixed", ..., "--config", "job.json"]}``: the arguments of
  `diffreg register` (paths absolute or relative to the worker's folder); `--progress json` is implied.
- Out (stdout), once, after the imports: ``{"stage": "ready", ..., "pid": P, "import_seconds": S}``.
- Out, per job: ``{"stage": "started", "job": ID, ...}``; then exactly the lines `diffreg register --progress
  json` prints (progress events, then "done" with report.json's path, or "error"/"cancelled" with the reason);
  then ``{"stage": "exit", "job": ID, "returncode": N, "pid": P, "warm": bool, "seconds": S, "cpu_seconds": C}``,
  where N is the exit code the same command would have had as a process, `warm` says torch was loaded before
  the job, and C is the CPU time of all the worker's threads during the job.
- Human-readable lines (warnings, the `error:` line, tracebacks) go to stderr, as from `diffreg register`.

A bad line, bad arguments or an unexpected exception end that job with an "error" event (code 2; 1 for an
unexpected exception) and the worker carries on. A signal that stops a job (SIGTERM, SIGHUP, Ctrl-C) ends
it as it ends `diffreg register` (no partial outputs), then the worker. At the end of its input the worker
exits after the current job; when its parent process is gone (a killed client) it stops as on SIGTERM;
after `--idle-timeout` seconds without a job it exits (``{"stage": "stopped", ...}``).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Optional, TextIO

from ..errors import RegistrationError

DEFAULT_IDLE_SECONDS = 600.0
PARENT_CHECK_SECONDS = 0.5
EXIT_CODE_FOR_BUGS = 1  # what Python exits with on an uncaught exception
SIGNALLED = 128  # `diffreg` exits with 128 + the signal's number when a signal stopped it


def add_worker_parser(subparsers) -> None:
    parser = subparsers.add_parser("worker", help="run registrations sent as JSON lines on stdin, paying the "
                                                  "start-up and torch's import once (for the Slicer panel)")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_SECONDS,
                        help="exit after this many seconds without a job (default %(default)s)")
    parser.set_defaults(handler=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    if not args.idle_timeout > 0:
        raise RegistrationError(f"--idle-timeout {args.idle_timeout}: give a positive number of seconds.")
    return Worker(sys.stdin, sys.stdout, args.idle_timeout).serve()


class Worker:
    """Reads jobs on a thread, runs each on the main thread (where signals arrive) and reports on `out`."""

    def __init__(self, source: TextIO, out: TextIO, idle_seconds: float):
        self.out, self.idle_seconds = out, idle_seconds
        self.jobs: "queue.Queue[Optional[str]]" = queue.Queue()
        self.client_gone = False
        threading.Thread(target=self._read, args=(source,), daemon=True).start()
        threading.Thread(target=self._watch_parent, args=(os.getppid(),), daemon=True).start()

    def _read(self, source: TextIO) -> None:
        for line in source:
            if line.strip():
                self.jobs.put(line)
        self.jobs.put(None)  # end of input

    @staticmethod
    def _watch_parent(parent: int) -> None:
        """SIGTERM to this process once the parent is gone (it is then re-parented): a killed client leaves no
        worker running, even in the middle of a job."""
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    def emit(self, stage: str, message: str = "", fraction: float = 1.0, **extra: Any) -> None:
        """One event line; a client that no longer reads ends the worker after the current job."""
        try:
            self.out.write(json.dumps({"stage": stage, "fraction": fraction, "message": message, **extra}) + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):
            self.client_gone = True

    def serve(self) -> int:
        started = time.perf_counter()
        preload()
        self.emit("ready", "the backend is loaded", pid=os.getpid(), import_seconds=time.perf_counter() - started)
        while not self.client_gone:
            try:
                line = self.jobs.get(timeout=self.idle_seconds)
            except queue.Empty:
                self.emit("stopped", f"no job for {self.idle_seconds:g} s")
                return 0
            if line is None:
                return 0
            code = self.run(line)
            if code >= SIGNALLED:
                return code
        return 0

    def run(self, line: str) -> int:
        """Runs one job line; returns the exit code `diffreg register` would have had."""
        from .main import main

        started, cpu, warm, job = time.perf_counter(), time.process_time(), "torch" in sys.modules, None
        try:
            request = parse_request(line)
            job = request.get("id")
            self.emit("started", "", 0.0, job=job)
            code = main(job_arguments(request))
        except RegistrationError as error:
            code = self._fail(str(error), 2)
        except Exception as error:  # a bug: the traceback to the log, the job ends, the worker carries on
            import traceback

            traceback.print_exc()
            code = self._fail(f"unexpected {type(error).__name__}: {error}", EXIT_CODE_FOR_BUGS)
        sys.stderr.flush()
        self.emit("exit", f"exit code {code}", job=job, returncode=code, pid=os.getpid(), warm=warm,
                  seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu)
        gc.collect()
        return code

    def _fail(self, message: str, code: int) -> int:
        self.emit("error", message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return code


def parse_request(line: str) -> dict:
    """A job line's object, or RegistrationError saying what is wrong."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError:
        request = None
    if not isinstance(request, dict):
        raise RegistrationError("job line: send one JSON object per line, {\"id\": ..., \"argv\": [\"register\", "
                                "...]}.")
    return request


def job_arguments(request: dict) -> list[str]:
    """The full `diffreg` arguments of a job (JSON progress added), or RegistrationError saying what is wrong."""
    argv = request.get("argv")
    if not (isinstance(argv, list) and argv and argv[0] == "register" and all(isinstance(a, str) for a in argv)):
        raise RegistrationError("job line: \"argv\" must be the arguments of `diffreg register` as a list of "
                                "strings, starting with \"register\".")
    argv = [*argv, "--progress", "json"]
    check_arguments(argv)
    return argv


def check_arguments(argv: list[str]) -> None:
    """argparse's own check, its message as a RegistrationError (argparse would exit, and print usage)."""
    from .main import build_parser

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            build_parser().parse_args(argv)
    except SystemExit as stop:
        if not stop.code:
            raise RegistrationError("job arguments: --help is not a job; send the arguments of a registration.") \
                from None
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        reason = lines[-1] if lines else "the arguments were refused"
        raise RegistrationError(f"job arguments: {reason.split('error: ', 1)[-1]}") from None


def preload() -> None:
    """Imports what every registration needs (torch, SimpleITK, the engine), before the first job."""
    import SimpleITK  # noqa: F401
    import torch  # noqa: F401

    from ..engine import outputs, registration  # noqa: F401
    from ..io import images  # noqa: F401
