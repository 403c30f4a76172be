"""Renders the Slicer panel from its .ui with real Qt (PySide6, offscreen) after a real run, as a PNG.

The panel is DiffusionRegistration.py's own widget, loaded the way the tests load it (Testing/pythonqt_shim.py and
the CTK/qMRML widget stand-ins of Testing/fake_slicer_app.py, on a slicer-core MRML scene). It loads the sample
pair (the main job's pair: Colin27 skull-stripped onto Colin27 with skull under a known deformation, 2 mm),
presses Apply and waits for the background run, then grabs the panel.

Run: QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/make_panel_screenshot.py   (needs bash scripts/setup.sh)
"""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DiffusionRegistration"), str(ROOT / "Testing")]
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "slicer_panel.png"


def main() -> None:
    import slicer
    from _pytest.monkeypatch import MonkeyPatch

    import fake_slicer_app
    from pythonqt_shim import APPLICATION

    patch = MonkeyPatch()
    module = fake_slicer_app.import_module_file(patch, slicer.vtkMRMLScene())
    torch_utils = types.ModuleType("PyTorchUtils")  # torch is installed here; the extension is Slicer's
    torch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(torchInstalled=lambda: True)
    sys.modules["PyTorchUtils"] = torch_utils
    widget = module.DiffusionRegistrationWidget()
    widget.setup()
    widget.parent.isEntered = True
    widget.ui.sampleDataButton.click()
    widget._parameterNode.device = "cpu"
    start = time.perf_counter()
    widget.ui.applyButton.click()
    while widget._job is not None:
        APPLICATION.processEvents()
        time.sleep(0.05)
    print(f"run through the panel: {time.perf_counter() - start:.1f} s; status: {widget.ui.statusLabel.text}")
    panel = widget.parent
    panel.resize(520, panel.sizeHint.height())
    panel.show()
    APPLICATION.processEvents()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    panel.grab().save(str(SCREENSHOT))
    print(f"wrote {SCREENSHOT}")
    widget.cleanup()
    patch.undo()


if __name__ == "__main__":
    main()
