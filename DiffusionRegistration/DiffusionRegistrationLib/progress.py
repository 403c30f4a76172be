"""Progress reporting: a callback receives (stage, fraction, message) events.

The command line turns them into one JSON object per line so that the Slicer logic (or any caller)
can follow a background run; people get a progress bar instead.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional, TextIO


@dataclass(frozen=True)
class Progress:
    stage: str
    fraction: float
    message: str = ""


ProgressCallback = Callable[[Progress], None]


def silent(_: Progress) -> None:
    """A callback that ignores every event."""


def json_lines(stream: Optional[TextIO] = None) -> ProgressCallback:
    """Writes each event as one JSON line (default: the current stdout), flushed so a reader thread sees it."""

    def report(event: Progress) -> None:
        out = stream or sys.stdout
        out.write(json.dumps(asdict(event)) + "\n")
        out.flush()

    return report


def progress_bar(stream: Optional[TextIO] = None) -> ProgressCallback:
    """A tqdm bar per stage, for people at a terminal."""
    from tqdm import tqdm

    state: dict[str, Optional[tqdm]] = {"bar": None, "stage": None}
    finished: set[str] = set()

    def report(event: Progress) -> None:
        if event.stage in finished:  # a stage that already reached 100% (e.g. its closing "done")
            return
        if state["stage"] != event.stage:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=1000, desc=event.stage, file=stream or sys.stderr, leave=True,
                                bar_format="{desc:<14} {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
            state["stage"] = event.stage
        bar = state["bar"]
        bar.n = int(round(1000 * min(max(event.fraction, 0.0), 1.0)))
        if event.message:
            bar.set_postfix_str(event.message, refresh=False)
        bar.refresh()
        if event.fraction >= 1.0:
            finished.add(event.stage)
            bar.close()
            state["bar"], state["stage"] = None, None

    return report


def progress_kind(kind: str, piped: str) -> str:
    """`auto` resolved: a bar when stderr is a terminal, else `piped` ("json" or "none"); other kinds as given."""
    if kind == "auto":
        return "bar" if sys.stderr.isatty() else piped
    return kind


def progress_reporter(kind: str) -> ProgressCallback:
    """The callback for a resolved kind: "json" (JSON lines on stdout), "bar" (stderr) or "none"."""
    return {"json": json_lines, "bar": progress_bar, "none": lambda: silent}[kind]()
