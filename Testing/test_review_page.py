"""`diffreg review` in headless Chromium: Playwright drives Debian's chromium (no browser download) against
the real server (trame-slicer views rendered off screen through Mesa's EGL).

The page is opened with its token on a server bound beyond loopback; the main job's pair at 4 mm (Colin27
skull-stripped onto Colin27 with skull under a known deformation) is picked from the data folder and
registered with `fast` (and the agreement map); the views must show content (they arrive over the websocket, so they are polled),
the checkerboard and overlay views must differ from the fixed view, switching the overlay's layer must
change that view, and the saved .mrb, loaded with slicer-core, must hold the run's transform: the one the
backend computes on the same files, which recovers the known deformation better than no registration; the
downloaded .h5 holds it too. Not skipped: `bash scripts/setup.sh` installs chromium and EGL."""
import re
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionRegistrationLib.cli.demo import demo_pair
from DiffusionRegistrationLib.engine.config import make_config
from DiffusionRegistrationLib.engine.registration import register
from DiffusionRegistrationLib.geometry.metrics import field_tre
from DiffusionRegistrationLib.io.images import read_image, write_image
from review_browser import choose, launch, review_server, run, shown, until

TOKEN = "test-token-for-the-page"
RUN_SECONDS = 240


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
    with review_server(root, root.parent / "review-server.log", "--host", "0.0.0.0", "--token", TOKEN) as address:
        yield address


def _status(url: str, headers=None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_command_line_loads_no_web_or_mrml_package_and_review_help_works():
    probe = "import sys; from DiffusionRegistrationLib.cli.main import build_parser; build_parser(); " \
            "print(sorted({m.split('.')[0] for m in sys.modules} & " \
            "{'trame', 'aiohttp', 'vtk', 'vtkmodules', 'slicer'}))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
    shown_help = subprocess.run([sys.executable, "-m", "DiffusionRegistrationLib.cli.main", "review", "--help"],
                                capture_output=True, text=True)
    assert shown_help.returncode == 0 and "--token" in shown_help.stdout and "ssh -L" in shown_help.stdout


def test_without_the_token_the_page_and_the_websocket_are_refused(server):
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert _status(f"{server}/") == 403
    assert _status(f"{server}/index.html?secret=wrong") == 403
    assert _status(f"{server}/ws", upgrade) == 403
    assert _status(f"{server}/index.html?secret={TOKEN}") == 200


def test_a_run_in_the_browser_shows_the_result_and_saves_a_scene_with_the_transform(server, pair, tmp_path):
    from playwright.sync_api import sync_playwright

    from DiffusionRegistrationLib.slicer import load_scene
    from DiffusionRegistrationLib.slicer.transforms import displacement_from_grid_transform

    root, truth = pair
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{server}/?secret={TOKEN}")
        page.wait_for_selector("#pick-fixed", timeout=120_000)
        choose(page, "pick-fixed", "fixed.nii.gz")
        choose(page, "pick-moving", "moving.nii.gz")
        page.locator("#agreement").check()
        run(page, RUN_SECONDS)
        views = until(lambda: shown(page), 60, "the views to show the run")
        for name in ("checkerboard", "overlay"):
            assert np.abs(views[name] - views["fixed"]).mean() > 5, f"the {name} view shows only the fixed image"

        second = browser.new_context().new_page()  # another browser: refused while this one reviews
        assert second.goto(f"{server}/?secret={TOKEN}").status == 409

        choose(page, "layer", "fixed")
        changed = until(lambda: (lambda now: now if now and np.abs(now["overlay"] - views["overlay"]).mean() > 2
                                 else None)(shown(page)), 30, "the overlay's layer to change")
        assert np.abs(changed["overlay"] - changed["fixed"]).mean() < 2  # now the fixed image alone
        assert not page.is_visible("#colour-bar")
        choose(page, "layer", "agreement")
        page.wait_for_selector("#colour-bar", state="visible", timeout=30_000)  # the map in colour, with its bar

        page.locator("#save").click()
        page.wait_for_function("document.querySelector('#saved').innerText.includes('.mrb')", timeout=60_000)
        saved = re.search(r"saved (\S+\.mrb)", page.inner_text("#saved")).group(1)
        with page.expect_download() as download:
            page.locator("#download").click()
        download.value.save_as(tmp_path / "transform.h5")
        browser.close()

    scene = load_scene(root / saved)
    nodes = scene.GetNodesByClass("vtkMRMLGridTransformNode")
    runs = [node for node in (nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems()))
            if node.GetAttribute("DiffusionRegistration.Run")]
    assert len(runs) == 1
    displacement, grid = displacement_from_grid_transform(runs[0])
    assert grid.same_as(truth["fixed"].grid, 1e-3)
    direct = register(read_image(root / "fixed.nii.gz"), read_image(root / "moving.nii.gz"), make_config("fast"))
    assert np.abs(displacement - direct.displacement).max() < 0.05  # mm: the run's own transform, whole
    before = field_tre(truth["field"], np.zeros_like(truth["field"]), truth["brain"])["mean"]
    after = field_tre(truth["field"], displacement, truth["brain"])["mean"]
    assert after < before, (before, after)

    downloaded = sitk.DisplacementFieldTransform(sitk.ReadTransform(str(tmp_path / "transform.h5")))
    field = sitk.GetArrayFromImage(downloaded.GetDisplacementField())
    assert np.abs(field - displacement).max() < 1e-3
