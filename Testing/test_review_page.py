"""`diffreg review` in headless Chromium: Playwright drives Debian's chromium (no browser download) against
the real server (trame-slicer views rendered off screen through Mesa's EGL).

The page is opened with its token on a server bound beyond loopback; the main job's pair at 4 mm (Colin27
skull-stripped onto Colin27 with skull under a known deformation) is picked from the data folder and
registered with `fast`; the views must show content (they arrive over the websocket, so they are polled),
the checkerboard and overlay views must differ from the fixed view, switching the overlay's layer must
change that view, and the saved .mrb, loaded with slicer-core, must hold the run's transform: the one the
backend computes on the same files, which recovers the known deformation better than no registration. Not skipped: `bash scripts/setup.sh` installs chromium and EGL."""
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from DiffusionRegistrationLib.cli.demo import demo_pair
from DiffusionRegistrationLib.engine.config import make_config
from DiffusionRegistrationLib.engine.registration import register
from DiffusionRegistrationLib.geometry.metrics import field_tre
from DiffusionRegistrationLib.io.images import read_image, write_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "test-token-for-the-page"
VIEWS = ("fixed", "moving", "overlay", "checkerboard")  # the page's layout order (cli/review/page.py VIEWS)
START_SECONDS, RUN_SECONDS = 180, 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-data")
    pair = demo_pair(seed=0, spacing_mm=4.0)
    write_image(pair["fixed"], root / "fixed.nii.gz")
    write_image(pair["moving"], root / "moving.nii.gz")
    return root, pair


@pytest.fixture(scope="module")
def server(pair):
    root, _ = pair
    port = _free_port()
    log = open(root.parent / "review-server.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "DiffusionRegistrationLib.cli.main", "review", "--data",
                                str(root), "--host", "0.0.0.0", "--port", str(port), "--token", TOKEN],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + START_SECONDS
    while "review: open" not in _read(log):
        assert process.poll() is None and time.monotonic() < deadline, f"the server did not start:\n{_read(log)}"
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(30)
    log.close()


def _read(log) -> str:
    log.seek(0)
    return log.read()


def _status(url: str, headers=None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_command_line_loads_no_web_or_mrml_package_and_review_help_works():
    probe = "import sys; from DiffusionRegistrationLib.cli.main import build_parser; build_parser(); " \
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'trame', 'aiohttp', 'vtk', 'vtkmodules', 'slicer'}))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
    shown = subprocess.run([sys.executable, "-m", "DiffusionRegistrationLib.cli.main", "review", "--help"],
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "--token" in shown.stdout and "ssh -L" in shown.stdout


def test_without_the_token_the_page_and_the_websocket_are_refused(server):
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert _status(f"{server}/") == 403
    assert _status(f"{server}/index.html?secret=wrong") == 403
    assert _status(f"{server}/ws", upgrade) == 403
    assert _status(f"{server}/index.html?secret={TOKEN}") == 200


def _views(page) -> list[np.ndarray]:
    from PIL import Image as Picture

    images = page.locator("img.image-display-area")
    return [np.asarray(Picture.open(io.BytesIO(images.nth(i).screenshot())).convert("L"), dtype=np.float32)
            for i in range(len(VIEWS))]


def _until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _shown(page) -> dict:
    """The views once each shows content (not a blank image) and stays the same for one more look."""
    views = _views(page)
    if min(view.std() for view in views) < 10:
        return None
    again = _views(page)
    same = all(np.abs(a - b).mean() < 0.5 for a, b in zip(views, again))
    return dict(zip(VIEWS, again)) if same else None


def _pick(page, field: str, name: str) -> None:
    page.locator(f"#pick-{field}").locator("xpath=ancestor::div[contains(@class,'v-field ')]").first.click()
    page.get_by_role("option", name=name, exact=True).click()


def test_a_run_in_the_browser_shows_the_result_and_saves_a_scene_with_the_transform(server, pair):
    assert CHROMIUM, "Debian's chromium is missing: run `bash scripts/setup.sh` (as root it installs it)"
    from playwright.sync_api import sync_playwright

    from DiffusionRegistrationLib.slicer import load_scene
    from DiffusionRegistrationLib.slicer.transforms import displacement_from_grid_transform

    root, truth = pair
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{server}/?secret={TOKEN}")
        page.wait_for_selector("#pick-fixed", timeout=START_SECONDS * 1000)
        _pick(page, "fixed", "fixed.nii.gz")
        _pick(page, "moving", "moving.nii.gz")
        page.locator("#run").click()
        page.wait_for_function("document.querySelector('#timing').innerText.includes('final views') || "
                               "document.querySelector('#error').innerText", timeout=RUN_SECONDS * 1000)
        assert page.inner_text("#error") == ""
        views = _until(lambda: _shown(page), 60, "the views to show the run")
        for name in ("checkerboard", "overlay"):
            assert np.abs(views[name] - views["fixed"]).mean() > 5, f"the {name} view shows only the fixed image"

        second = browser.new_context().new_page()  # another browser: refused while this one reviews
        assert second.goto(f"{server}/?secret={TOKEN}").status == 409

        page.locator("#layer").locator("xpath=ancestor::div[contains(@class,'v-field ')]").first.click()
        page.get_by_role("option", name="fixed", exact=True).click()
        overlay_fixed = _until(lambda: (lambda shown: shown if shown and np.abs(
            shown["overlay"] - views["overlay"]).mean() > 2 else None)(_shown(page)), 30, "the layer to change")
        assert np.abs(overlay_fixed["overlay"] - overlay_fixed["fixed"]).mean() < 2  # now only the fixed image

        page.locator("#save").click()
        page.wait_for_function("document.querySelector('#saved').innerText.includes('.mrb')", timeout=60_000)
        saved = re.search(r"saved (\S+\.mrb)", page.inner_text("#saved")).group(1)
        browser.close()

    scene = load_scene(root / saved)
    transforms = [node for node in (scene.GetNodesByClass("vtkMRMLGridTransformNode").GetItemAsObject(i)
                                    for i in range(scene.GetNodesByClass("vtkMRMLGridTransformNode").GetNumberOfItems()))
                  if node.GetAttribute("DiffusionRegistration.Run")]
    assert len(transforms) == 1
    displacement, grid = displacement_from_grid_transform(transforms[0])
    assert grid.same_as(truth["fixed"].grid, 1e-3)
    direct = register(read_image(root / "fixed.nii.gz"), read_image(root / "moving.nii.gz"), make_config("fast"))
    assert np.abs(displacement - direct.displacement).max() < 0.05  # mm: the run's own transform, whole
    before = field_tre(truth["field"], np.zeros_like(truth["field"]), truth["brain"])["mean"]
    after = field_tre(truth["field"], displacement, truth["brain"])["mean"]
    assert after < before, (before, after)  # `fast` at 4 mm: 3.07 -> 2.68 mm (default: 0.99 mm)
