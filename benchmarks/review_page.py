"""How long the review page takes on the main job's pair: from pressing Run to the first live preview and
to the final views, for a first and a second run in one server (the backend stays loaded), and a
screenshot of the page after the first run for the README.

The main job's pair (Colin27 skull-stripped onto Colin27 with skull under the known deformation, seed 0)
at 2 mm with the main job's intensity preset (`stripped`), through `diffreg review` in headless Chromium
(Testing/review_browser.py). The times are the page's own (server clock: Run's call arriving, the first
preview placed in the scene, the run's nodes shown); the browser shows them a frame later. Each page run
is followed by a whole `diffreg register` process on the same files for comparison.

    PYTHONPATH=DiffusionRegistration python benchmarks/review_page.py --screenshot Resources/Screenshots/review.png
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))

from review_browser import choose, launch, review_server, run, shown, until  # noqa: E402

from DiffusionRegistrationLib.cli.demo import demo_pair  # noqa: E402
from DiffusionRegistrationLib.io.atomic import write_text  # noqa: E402
from DiffusionRegistrationLib.io.images import write_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _seconds(timing: str, what: str) -> float | None:
    found = re.search(rf"{what} after ([0-9.]+) s", timing)
    return float(found.group(1)) if found else None


def _command_line(data: Path, preset: str, folder: Path) -> float:
    """Seconds of a whole `diffreg register` process on the same files (interleaved with the page's runs, so
    the machine's load hits both alike)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "DiffusionRegistrationLib.cli.main", "register", "--fixed",
                    str(data / "fixed.nii.gz"), "--moving", str(data / "moving.nii.gz"), "--output-dir",
                    str(folder / "cli"), "--preset", preset, "--progress", "none"], check=True, capture_output=True)
    return round(time.perf_counter() - started, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size of the pair in mm")
    parser.add_argument("--preset", default="stripped")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--screenshot", help="write the page after the first run here (PNG)")
    parser.add_argument("--name", default="review_page")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="diffreg-review-bench-") as folder:
        data = Path(folder) / "data"
        data.mkdir()
        pair = demo_pair(seed=0, spacing_mm=args.spacing)
        write_image(pair["fixed"], data / "fixed.nii.gz")
        write_image(pair["moving"], data / "moving.nii.gz")
        with review_server(data, Path(folder) / "server.log") as address, sync_playwright() as playwright:
            browser = launch(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(address)
            page.wait_for_selector("#pick-fixed", timeout=120_000)
            choose(page, "pick-fixed", "fixed.nii.gz")
            choose(page, "pick-moving", "moving.nii.gz")
            choose(page, "preset", args.preset)
            for index in range(args.runs):
                started = time.perf_counter()
                timing = run(page, 600, index + 1)
                until(lambda: shown(page), 60, "the views")
                clicked = round(time.perf_counter() - started, 2)
                rows.append({"run": index + 1, "first_preview_s": _seconds(timing, "first preview"),
                             "final_views_s": _seconds(timing, "final views"), "browser_click_to_views_s": clicked,
                             "diffreg_register_process_s": _command_line(data, args.preset, Path(folder))})
                print(f"{timing}; click to views in the browser {clicked:.1f} s; `diffreg register` process "
                      f"{rows[-1]['diffreg_register_process_s']:.1f} s", flush=True)
                if index == 0 and args.screenshot:
                    page.screenshot(path=args.screenshot)
            browser.close()
    result = {"pair": f"main job's pair at {args.spacing} mm (seed 0)", "preset": args.preset, "runs": rows,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "note": "shared machine (other jobs running)",
              "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    print("| run | Run -> first preview | Run -> final views | click -> views in the browser | `diffreg register` "
          "process, same pair |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['first_preview_s']} s | {row['final_views_s']} s | "
              f"{row['browser_click_to_views_s']} s | {row['diffreg_register_process_s']} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
