"""Runs in the review server's own process: the backend (torch) stays loaded, so a second run starts at once.

`InProcessRunner` keeps `ProcessRunner`'s interface (slicer/process_runner.py: start, poll, running,
returncode, cancelled, error_message, cancel, wait) but runs `diffreg register`'s own work
(`cli.main.register_files`, on the arguments the Slicer job builds) on a thread. Cancel raises `Cancelled`
from the next progress event (every fifth optimiser step), so the run stops soon and writes nothing. The
current estimate at the end of each level is kept for the page (`latest_preview`). `WarmJob` is the session's
`RegistrationJob` with this runner instead of a process or the shared worker (slicer/warm_backend.py),
which cannot hand the page its per-level estimates.
"""
from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...errors import Cancelled
from ...progress import Progress
from ...slicer.job import RegistrationJob
from ...slicer.process_runner import Event, Finished, LogLine, RunStatus, drain
from ..main import PLAIN_FAILURES, build_parser, failure, register_files

logger = logging.getLogger(__name__)
UNEXPECTED = 1


class InProcessRunner(RunStatus):
    """`diffreg register ARGS` on a thread of this process, followed like a ProcessRunner."""

    def __init__(self, argv: Sequence[str]):
        self.argv = [str(part) for part in argv]
        self.events: "queue.Queue[Event]" = queue.Queue()
        self._started = False
        self.stderr_lines: list[str] = []
        self._done = threading.Event()
        self._preview: Optional[np.ndarray] = None
        self._lock = threading.Lock()

    def start(self) -> "InProcessRunner":
        self._started = True
        threading.Thread(target=self._run, name="diffreg-review-run", daemon=True).start()
        return self

    @property
    def running(self) -> bool:
        return self._started and self._finished is None

    def poll(self) -> list[Event]:
        return drain(self.events)

    def _progress(self, event: Progress) -> None:
        if self._cancelled:
            raise Cancelled("the registration was cancelled")
        self.events.put(event)

    def _keep_preview(self, displacement: np.ndarray) -> None:
        with self._lock:
            self._preview = displacement
        self._progress(Progress("preview", 1.0, "current estimate"))

    def latest_preview(self) -> Optional[np.ndarray]:
        """The newest end-of-level estimate (fixed->moving displacement on the fixed grid) not yet taken."""
        with self._lock:
            preview, self._preview = self._preview, None
        return preview

    def _run(self) -> None:
        code = 0
        try:
            args = build_parser().parse_args(self.argv)
            register_files(args, self._progress, self._keep_preview)
        except PLAIN_FAILURES as error:
            code, _stage, message = failure(error)
            self._line(f"error: {message}")
        except SystemExit as error:  # argparse refused the arguments (and printed why on the console)
            code = int(error.code or 2)
            self._line("error: the run's arguments were refused; see the server's console")
        except Exception:  # a defect: the console gets the traceback, the page one line
            logger.exception("registration failed")
            code = UNEXPECTED
            self._line("error: the registration failed unexpectedly; the server's console has the details")
        self._finished = Finished(code, self.cancelled)
        self.events.put(self._finished)
        self._done.set()

    def _line(self, text: str) -> None:
        self.stderr_lines.append(text)
        self.events.put(LogLine(text, "stderr"))

    def wait(self, timeout: Optional[float] = None) -> int:
        if not self._done.wait(timeout):
            raise TimeoutError("the run did not end in time")
        return self._finished.returncode

    def error_message(self) -> str:
        for line in reversed(self.stderr_lines):
            if line.startswith("error: "):
                return line[len("error: "):]
        return f"the run ended with code {self.returncode}"

    def cancel(self, grace_seconds: float = 3.0) -> None:
        """Stops the run at its next progress event and waits up to `grace_seconds` for it to end."""
        self._cancelled = True
        self._done.wait(grace_seconds)


class WarmJob(RegistrationJob):
    """The session's job with the backend run in this process (see the module docstring)."""

    runner: Optional[InProcessRunner]

    def _launch(self, folder: Path) -> InProcessRunner:
        return InProcessRunner(self.arguments(folder)).start()
