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


class StageReporter:
    """Maps the fraction of one sub-task into a slice [start, end] of an overall stage."""

    def __init__(self, callback: ProgressCallback, stage: str, start: float = 0.0, end: float = 1.0):
        self.callback, self.stage, self.start, self.end = callback, stage, start, end

    def __call__(self, fraction: float, message: str = "") -> None:
        self.callback(Progress(self.stage, self.start + (self.end - self.start) * fraction, message))

    def part(self, start: float, end: float) -> "StageReporter":
        span = self.end - self.start
        return StageReporter(self.callback, self.stage, self.start + span * start, self.start + span * end)
