"""Swapping the process's signal handlers for the length of a block: the one place that does it, for holding
stop signals back during a commit (io.atomic) and for turning SIGTERM/SIGHUP into an exception (cli)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

STOPPING = ("SIGINT", "SIGTERM", "SIGHUP")  # the signals that ask a process to stop (SIGHUP: POSIX only)


@contextmanager
def handlers_swapped(handler: Callable, names: Sequence[str] = STOPPING) -> Iterator[None]:
    """Installs `handler` for the named signals this platform has during the block, then restores the previous
    handlers. Outside the main thread, where Python cannot install handlers, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    numbers = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {number: signal.signal(number, handler) for number in numbers}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@contextmanager
def signals_held(names: Sequence[str] = STOPPING) -> Iterator[None]:
    """Delays the named signals until the block ends; then the usual handler acts (main thread only).

    Python-level handlers are swapped rather than the signal mask set: the mask of the main thread does not
    stop a signal sent to the process from being taken by another thread (torch's workers)."""
    caught: list[int] = []
    try:
        with handlers_swapped(lambda number, frame: caught.append(number), names):
            yield
    finally:
        if caught:
            signal.raise_signal(caught[0])
