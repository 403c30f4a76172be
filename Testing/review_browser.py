"""Driving `diffreg review` in headless Chromium (Playwright on Debian's chromium), for the page's test and
for benchmarks/review_page.py.

Two things the page needs from a driver: its views arrive as images over the websocket, so a look at them
is polled until each shows content and stays still; and the server resets the views once the client is
connected (page.py `reset_views`), so nothing is read before the page's controls exist."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWS = ("fixed", "moving", "overlay", "checkerboard")  # the page's layout order (cli/review/page.py VIEWS)
START_SECONDS = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def review_server(data: Path, log_path: Path, *arguments: str) -> Iterator[str]:
    """`diffreg review --data DATA ARGUMENTS` in a child process; yields its address on 127.0.0.1."""
    port = free_port()
    with open(log_path, "w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "DiffusionRegistrationLib.cli.main", "review", "--data",
                                    str(data), "--port", str(port), *arguments], stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + START_SECONDS
            while "review: open" not in _read(log):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the review server did not start:\n{_read(log)[-3000:]}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(30)


def _read(log) -> str:
    log.seek(0)
    return log.read()


def launch(playwright):
    if not CHROMIUM:
        raise RuntimeError("Debian's chromium is missing: run `bash scripts/setup.sh` (as root it installs it)")
    # as root (CI) chromium needs --no-sandbox; containers often have a small /dev/shm
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])


def choose(page, element_id: str, option: str) -> None:
    """Picks `option` in the page's select `element_id` (Vuetify puts the id on the inner input)."""
    page.locator(f"#{element_id}").locator("xpath=ancestor::div[contains(@class,'v-field ')]").first.click()
    page.locator(".v-overlay .v-list-item-title").get_by_text(option, exact=True).click()


def run(page, seconds: float, number: int = 1) -> str:
    """Presses Run and waits for the final views of the session's run `number` or an error; returns the
    page's timing line."""
    page.locator("#run").click()
    page.wait_for_function(f"document.querySelector('#timing').innerText.startsWith('run {number}:') || "
                           "document.querySelector('#error').innerText", timeout=seconds * 1000)
    error = page.inner_text("#error")
    if error:
        raise AssertionError(f"the run failed on the page: {error}")
    return page.inner_text("#timing")


def views(page) -> list[np.ndarray]:
    """A grey-level look at each view, in VIEWS order."""
    from PIL import Image as Picture

    images = page.locator("img.image-display-area")
    return [np.asarray(Picture.open(io.BytesIO(images.nth(i).screenshot())).convert("L"), dtype=np.float32)
            for i in range(len(VIEWS))]


def shown(page) -> Optional[dict]:
    """The views once each shows content (not a blank image) and stays the same for one more look."""
    first = views(page)
    if min(view.std() for view in first) < 10:
        return None
    again = views(page)
    if any(np.abs(a - b).mean() >= 0.5 for a, b in zip(first, again)):
        return None
    return dict(zip(VIEWS, again))


def until(condition: Callable[[], Optional[object]], seconds: float, what: str):
    """Polls `condition` until it returns something other than None."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)
