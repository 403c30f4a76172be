"""Runs a backend command in a background process and follows its JSON progress lines, without Qt.

The Slicer panel polls `poll()` from a timer, so the GUI never blocks; scripts call `wait()`. Each
stdout line that is a JSON object with a "stage" becomes a Progress event; every other line of stdout
or stderr goes to the log. `cancel()` kills the whole process tree (the child runs in its own process
group on POSIX, `taskkill /T` on Windows) and removes the run's temporary folder.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional, Sequence, Union

from ..progress import Progress

WINDOWS_CREATE_NO_WINDOW = 0x08000000  # subprocess.CREATE_NO_WINDOW, which exists only on Windows


@dataclass(frozen=True)
class LogLine:
    """A line of output that is not a progress event; `stream` is "stdout" or "stderr"."""

    text: str
    stream: str = "stdout"


@dataclass(frozen=True)
class Finished:
    """The process ended with `returncode` (negative: killed by that signal on POSIX)."""

    returncode: int
    cancelled: bool = False


Event = Union[Progress, LogLine, Finished]


def json_event(text: str) -> Optional[dict]:
    """The object of a JSON event line (one with a string "stage"), else None."""
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("stage"), str) else None


def progress_from_event(data: dict) -> Progress:
    """The {"stage", "fraction", "message"} of an event object (other keys ignored)."""
    try:
        fraction = float(data.get("fraction", 0.0))
    except (TypeError, ValueError):
        fraction = 0.0
    return Progress(data["stage"], fraction, str(data.get("message", "")))


def parse_line(line: str) -> Union[Progress, LogLine]:
    """A JSON progress line ({"stage", "fraction", "message"}) as Progress; anything else as a log line."""
    text = line.rstrip("\r\n")
    data = json_event(text)
    return progress_from_event(data) if data is not None else LogLine(text, "stdout")


def drain(events: queue.Queue) -> list:
    """Every item in `events` now, without blocking."""
    drained = []
    while True:
        try:
            drained.append(events.get_nowait())
        except queue.Empty:
            return drained


def backend_environment(library_parent: Union[str, os.PathLike], base: Optional[dict] = None) -> dict:
    """The environment for `python -m DiffusionRegistrationLib.`: the module folder first on PYTHONPATH."""
    environment = dict(os.environ if base is None else base)
    parts = [str(library_parent)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(parts)
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def child_environment(env: Optional[dict]) -> dict:
    """`env` (default: this process's) with the child's standard streams in UTF-8, which the reader expects
    (on Windows a Python child would otherwise write in the ANSI code page)."""
    environment = dict(os.environ if env is None else env)
    environment["PYTHONUTF8"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"
    return environment


def kill_tree_windows(pid: int) -> None:
    """Ends a Windows process and its descendants, without flashing a console window."""
    subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                   creationflags=getattr(subprocess, "CREATE_NO_WINDOW", WINDOWS_CREATE_NO_WINDOW))


class RunStatus:
    """The outcome of a background run (a process, or a job on the warm backend) once it ended."""

    _finished: Optional[Finished] = None
    _cancelled = False

    @property
    def returncode(self) -> Optional[int]:
        return self._finished.returncode if self._finished is not None else None

    @property
    def cancelled(self) -> bool:
        return self._cancelled


class ProcessRunner(RunStatus):
    """One background process: start it, poll its events, wait for it or cancel it.

    With `stdin=True` the child reads lines that `send()` writes (a long-lived worker); with `merge_stderr=True`
    its stderr joins stdout in one pipe, so their lines keep the order in which the child wrote them; `parse`
    turns each stdout line into an event (default: parse_line).
    """

    def __init__(self, command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None,
                 temporary_folder: Optional[Union[str, os.PathLike]] = None, keep_stderr_lines: int = 200,
                 stdin: bool = False, merge_stderr: bool = False, parse: Callable[[str], object] = parse_line):
        self.command = [str(part) for part in command]
        self.env, self.cwd = env, cwd
        self._stdin, self._merge_stderr, self._parse = stdin, merge_stderr, parse
        self.temporary_folder = Path(temporary_folder) if temporary_folder is not None else None
        self.events: "queue.Queue[Event]" = queue.Queue()
        self.stderr_lines: list[str] = []
        self._keep = keep_stderr_lines
        self._process: Optional[subprocess.Popen] = None
        self._readers: list[threading.Thread] = []
        self._finished: Optional[Finished] = None
        self._cancelled = False
        self._lock = threading.Lock()
        # POSIX: the watcher reaps the child only under this lock, and the group is signalled only before
        # that, while the child's pid (its group's id) cannot have been given to another process
        self._reap_lock = threading.Lock()
        self._reaped = False
        self._exited = threading.Event()
        self._done = threading.Event()

    # -- running -------------------------------------------------------------------------------------
    def start(self) -> "ProcessRunner":
        if self._process is not None:
            raise RuntimeError("the process was already started")
        options: dict = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            options["start_new_session"] = True
        self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE if self._stdin else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT if self._merge_stderr else subprocess.PIPE,
                                         env=child_environment(self.env), cwd=self.cwd, text=True,
                                         encoding="utf-8", errors="replace", bufsize=1, **options)
        streams = [(self._process.stdout, "stdout")]
        if not self._merge_stderr:
            streams.append((self._process.stderr, "stderr"))
        self._readers = [threading.Thread(target=self._read, args=stream, daemon=True) for stream in streams]
        for reader in self._readers:
            reader.start()
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._finished is None

    def _read(self, stream: IO[str], name: str) -> None:
        for line in stream:
            if name == "stdout":
                self.events.put(self._parse(line))
            else:
                text = line.rstrip("\r\n")
                with self._lock:
                    self.stderr_lines.append(text)
                    del self.stderr_lines[:-self._keep]
                self.events.put(LogLine(text, "stderr"))
        stream.close()

    def _watch(self) -> None:
        pid = self._process.pid
        unreaped = os.name != "nt" and hasattr(os, "waitid")
        if unreaped:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: the pid stays ours
        else:  # Windows (the open handle keeps the pid), or a POSIX without waitid
            self._process.wait()
        self._exited.set()
        with self._reap_lock:
            if self._cancelled and unreaped:
                self._signal_group(pid, signal.SIGKILL)  # what the child left running in its group
            returncode = self._process.wait()
            self._reaped = True
        for reader in self._readers:
            reader.join()
        if self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:  # the child left unread lines in the pipe
                pass
        self._finished = Finished(returncode, self._cancelled)
        self.events.put(self._finished)
        self._done.set()

    def send(self, line: str) -> bool:
        """Writes one line to the child's stdin (`stdin=True`); False when the child no longer reads it."""
        if self._process is None or self._process.stdin is None:
            raise RuntimeError("the process was not started with stdin=True")
        try:
            self._process.stdin.write(line.rstrip("\n") + "\n")
            self._process.stdin.flush()
            return True
        except (BrokenPipeError, ValueError, OSError):  # ValueError: our end was already closed
            return False

    # -- following -----------------------------------------------------------------------------------
    def poll(self) -> list[Event]:
        """Every event queued since the last call, without blocking (for a GUI timer)."""
        return drain(self.events)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Blocks until the process and its readers are done; returns the exit code."""
        if self._process is None:
            raise RuntimeError("the process was not started")
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.command, timeout)
        return self._finished.returncode

    def error_message(self) -> str:
        """The backend's "error: ..." line if it printed one, else the last lines of its stderr."""
        with self._lock:
            lines = list(self.stderr_lines)
        for line in reversed(lines):
            if line.startswith("error: "):
                return line[len("error: "):]
        tail = "\n".join(line for line in lines[-15:] if line.strip())
        return tail or f"the process exited with code {self.returncode}"

    # -- stopping ------------------------------------------------------------------------------------
    def cancel(self, grace_seconds: float = 3.0) -> None:
        """Kills the process and everything it started, waits for it, and removes the temporary folder.

        POSIX: SIGTERM to the child's process group, then SIGKILL to what is left, but only while the
        child is not reaped (afterwards its pid may belong to another process). Windows: taskkill /T
        while the child runs (the open process handle keeps its pid from being reused).
        """
        self._cancelled = True
        process = self._process
        if process is not None:
            if os.name == "nt":
                if process.poll() is None:
                    kill_tree_windows(process.pid)
            else:
                with self._reap_lock:
                    if not self._reaped:
                        self._signal_group(process.pid, signal.SIGTERM)
                self._exited.wait(grace_seconds)
                with self._reap_lock:
                    if not self._reaped:
                        self._signal_group(process.pid, signal.SIGKILL)
            self.wait()
        self.remove_temporary_folder()

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def remove_temporary_folder(self) -> None:
        if self.temporary_folder is not None and self.temporary_folder.exists():
            shutil.rmtree(self.temporary_folder, ignore_errors=True)


def python_executable(preferred: Optional[str] = None) -> str:
    """The Python to run the backend with: the caller's choice (Slicer's PythonSlicer) or this one."""
    return preferred or sys.executable
