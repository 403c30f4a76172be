"""The review page: a trame-slicer app that is a thin view of the review session (slicer/session.py).

Four real Slicer slice views (trame-slicer: MRML scene, slice logic and displayable managers rendered on the
server, streamed as images): the fixed volume, the moving volume under the result, the overlay (the
session's current layer over the fixed volume at the chosen opacity) and the checkerboard. Their slice
positions are linked (Slicer's linked slice control). Inputs are picked from files below the data root
(files.py); presets and similarities come from the registries. The run happens in this process (warm.py):
Run turns into Cancel, the progress bar shows the stage, the end of every level moves the moving volume
under the current estimate (live preview), and an error is one line without server paths (doors.page_text).
"""
from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from trame.app import TrameApp
from trame.widgets import html
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v3

from ...engine.config import presets
from ...errors import Cancelled, RegistrationError
from ...progress import Progress
from ...similarity.registry import SIMILARITIES
from ...engine.options import OPTION_SETTINGS, RegistrationOptions
from ...slicer.process_runner import Finished, LogLine
from ...slicer.session import LAYERS, ReviewSession
from ...slicer.transforms import grid_transform_from_displacement
from .doors import page_text
from .files import existing_file, image_names, inside
from .warm import WarmJob

VIEWS = {"fixed": "Fixed", "moving": "Moving", "overlay": "Overlay", "checkerboard": "Checkerboard"}
ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
SQUARE, AGREEMENT = OPTION_SETTINGS["checkerboard_square_mm"], OPTION_SETTINGS["agreement"]  # the declarations
COLOUR_LAYERS = ("agreement", "jacobian")  # maps shown in colour over the fixed image, with a colour bar
FALLBACK_COLOURS = "vtkMRMLColorTableNodeReverseRainbow"  # built into MRML: violet (low) to red (high)
INPUTS = ("fixed", "moving", "fixed_mask", "moving_mask")
SCENE_FOLDER = "review"
POLL_SECONDS = 0.1
MAX_LOG_LINES = 200


class ReviewPage(TrameApp):
    """One review session on one scene, shown in a browser page."""

    def __init__(self, data_root: Path, server=None):
        super().__init__(server=server)
        self.root = Path(data_root).resolve()
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server, slice_view_ui_f=_slice_view_ui)
        self.layouts = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        views = [ViewLayoutDefinition.slice_view("Axial", label=label) for label in VIEWS.values()]
        self.layouts.register_layout("Review", Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, views[:2]), Layout(LayoutDirection.Vertical, views[2:])]))
        self.layouts.set_layout("Review")
        _drop_segment_editor(self.slicer.scene)
        self.session = ReviewSession(self.slicer.scene)
        self.session.job_class = WarmJob
        self.loaded: dict[str, object] = {}  # file name -> volume node
        self.preview_node = None
        self.started_at: Optional[float] = None
        self.first_preview_s: Optional[float] = None
        self._init_state()
        self._build_ui()
        self._linking = False
        for view in self._views().values():
            view.get_view_node().AddObserver("ModifiedEvent", lambda node, _event: self._link(node))
        self.ctrl.on_client_connected.add(self.reset_views)
        self.ctrl.on_server_ready.add(self._ready)

    def _ready(self, **_) -> None:
        asyncio.ensure_future(self._follow())
        threading.Thread(target=_load_backend, name="diffreg-review-warm-up", daemon=True).start()

    # -- state ------------------------------------------------------------------------------------------
    def _init_state(self) -> None:
        state = self.state
        state.images = image_names(self.root)
        for role in INPUTS:
            state[role] = None
        state.presets = [{"title": name, "value": name, "subtitle": summary} for name, summary in presets().items()]
        state.preset = "fast"
        state.similarities = [{"title": "as the preset says", "value": "", "subtitle": ""}] + [
            {"title": name, "value": name, "subtitle": info.summary} for name, info in SIMILARITIES.items()]
        state.similarity, state.square, state.agreement = "", SQUARE.default, AGREEMENT.default
        state.running, state.progress, state.stage, state.error, state.log = False, 0, "", "", ""
        state.timing = ""
        state.runs, state.run = [], None
        state.layers, state.layer, state.after = list(LAYERS), "moving", True
        state.orientations, state.orientation, state.opacity = list(ORIENTATIONS), "Axial", 0.5
        state.comment, state.saved, state.colour_bar, state.colour_range = "", "", "", ["", "", ""]
        for role in INPUTS:
            state.change(role)(self._input_changed(role))
        state.change("layer", "after", "opacity")(lambda **_: self._guarded(self.show))
        state.change("orientation")(lambda orientation, **_: self._guarded(lambda: self.orient(orientation)))
        state.change("run")(lambda run, **_: self._guarded(lambda: self.select_run(run)))

    def _input_changed(self, role: str) -> Callable:
        def changed(**values):
            self._guarded(lambda: self.set_input(role, values[role]))
        return changed

    def _guarded(self, action: Callable[[], object]) -> None:
        """Runs a page action; a failure becomes the one error line (no traceback, no server path)."""
        try:
            action()
            self.state.error = ""
        except (RegistrationError, OSError, ValueError) as error:
            self.state.error = page_text(str(error), self.root)

    # -- the layout -------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, full_height=True) as self.ui:
            self.ui.title.set_text("DiffusionRegistration review")
            with self.ui.drawer as drawer:
                drawer.width = 380
                with v3.VContainer(classes="pa-2"):
                    self._inputs_ui()
                    self._run_ui()
                    self._review_ui()
            with self.ui.content:
                self.layouts.initialize_layout_grid(self.ui)

    def _inputs_ui(self) -> None:
        for role, label in (("fixed", "Fixed image"), ("moving", "Moving image"), ("fixed_mask", "Fixed mask"),
                            ("moving_mask", "Moving mask")):
            v3.VSelect(id=f"pick-{role}", label=label, v_model=(role,), items=("images",), clearable=True,
                       density="compact", hide_details=True, classes="mb-2")
        v3.VSelect(id="preset", label="Preset", v_model=("preset",), items=("presets",), item_props=True,
                   density="compact", hide_details=True, classes="mb-2")
        v3.VSelect(id="similarity", label="Similarity", v_model=("similarity",), items=("similarities",),
                   item_props=True, density="compact", hide_details=True, classes="mb-2")
        v3.VTextField(id="square", label=f"{SQUARE.label} ({SQUARE.unit})", v_model_number=("square",),
                      type="number", min=SQUARE.bounds[0], max=SQUARE.bounds[1], title=SQUARE.help,
                      density="compact", hide_details=True, classes="mb-2")
        v3.VCheckbox(id="agreement", v_model=("agreement",), label=AGREEMENT.label.lower(), title=AGREEMENT.help,
                     density="compact", hide_details=True)

    def _run_ui(self) -> None:
        v3.VBtn("Run", id="run", v_if=("!running",), click=self.run, color="primary", block=True)
        v3.VBtn("Cancel", id="cancel", v_else=True, click=self.cancel, color="warning", block=True)
        v3.VProgressLinear(id="progress", model_value=("progress",), height=6, classes="my-2")
        html.Div("{{ stage }}", id="stage", classes="text-caption")
        html.Div("{{ timing }}", id="timing", classes="text-caption")
        html.Div("{{ error }}", id="error", v_show=("error",), classes="text-error text-body-2 my-1")
        v3.VTextarea(id="log", model_value=("log",), label="Log", readonly=True, rows=3, density="compact",
                     hide_details=True, classes="my-2")

    def _review_ui(self) -> None:
        v3.VSelect(id="runs", label="Run", v_model=("run",), items=("runs",), density="compact", hide_details=True,
                   classes="mb-2")
        v3.VSelect(id="layer", label="Overlay layer", v_model=("layer",), items=("layers",), density="compact",
                   hide_details=True, classes="mb-2")
        v3.VSwitch(id="after", v_model=("after",), label="after registration", density="compact", hide_details=True)
        v3.VSlider(id="opacity", v_model=("opacity",), label="Opacity", min=0, max=1, step=0.05, density="compact",
                   hide_details=True)
        with v3.VBtnToggle(id="orientation", v_model=("orientation",), mandatory=True, density="compact"):
            for name in ORIENTATIONS:
                v3.VBtn(name, value=name, size="small")
        v3.VTextField(id="comment", v_model=("comment",), label="Comment", density="compact", hide_details=True,
                      classes="my-2")
        with html.Div(classes="d-flex ga-2"):
            v3.VBtn("Accept", id="accept", click=lambda: self._guarded(lambda: self.review(True)), size="small")
            v3.VBtn("Reject", id="reject", click=lambda: self._guarded(lambda: self.review(False)), size="small")
            v3.VBtn("Save scene", id="save", click=lambda: self._guarded(self.save), size="small")
            v3.VBtn("Download transform", id="download", size="small", click=(
                f"utils.download('transform.h5', trigger('{self.ctrl.trigger_name(self.transform_file)}'), "
                "'application/octet-stream')"))
        html.Div("{{ saved }}", id="saved", classes="text-caption")

    # -- views ------------------------------------------------------------------------------------------
    def _views(self) -> dict:
        return {key: self.slicer.view_manager.get_view(label) for key, label in VIEWS.items()}

    def reset_views(self, **_) -> None:
        views = self._views()
        for view in views.values():
            view.fit_view_to_content()
        self._link(views["fixed"].get_view_node())
        for view in views.values():
            view.schedule_render()

    def _link(self, slice_node) -> None:
        """Slice positions linked across the views: the others follow the view that moved. (Slicer links
        only moves made with interaction flags, as its Qt slice controller makes them; these are not.)"""
        if self._linking:
            return
        self._linking = True
        try:
            views = list(self._views().values())
            moved = next(view for view in views if view.get_view_node() is slice_node)
            for view in views:
                if view is not moved and view.get_orientation() == moved.get_orientation():
                    view.set_slice_value(moved.get_slice_value())
        finally:
            self._linking = False

    def orient(self, orientation: str) -> None:
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation {orientation!r}: choose one of {', '.join(ORIENTATIONS)}")
        for view in self._views().values():
            view.set_orientation(orientation)
        self.reset_views()

    def show(self) -> None:
        """The views as the session says: its current layer (before or after) in the overlay view."""
        state, session = self.state, self.session
        if session.fixed is None or session.moving is None:
            return self._place(fixed=session.fixed, moving=session.moving)
        shown = session.show(state.layer, after=bool(state.after))
        run = session.current
        checkerboard = None if run is None else (run.checkerboard if state.after else run.checkerboard_before)
        self._place(fixed=session.fixed, moving=session.moving, overlay=(shown.background, shown.foreground),
                    checkerboard=checkerboard, opacity=float(state.opacity))
        self._colour_bar(shown.foreground if state.layer in COLOUR_LAYERS else None)

    def _colour_bar(self, volume) -> None:
        """The colour bar under the overlay view for the map shown in colour (agreement, Jacobian), else none.
        Slicer's colour-legend node is left out: its class exists only where Slicer's Colors module runs, so a
        scene saved with it would not load with slicer-core alone."""
        display = volume.GetDisplayNode() if volume is not None else None
        if display is None:
            self.state.colour_bar = ""
            return
        if self.slicer.scene.GetNodeByID(display.GetColorNodeID() or "") is None:
            display.SetAndObserveColorNodeID(FALLBACK_COLOURS)  # Slicer's file tables are not in slicer-core
        table = display.GetColorNode().GetLookupTable()
        count = table.GetNumberOfTableValues()
        stops = [table.GetTableValue(round(i * (count - 1) / 8))[:3] for i in range(9)]
        gradient = ", ".join(f"rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f})" for r, g, b in stops)
        self.state.colour_bar = f"linear-gradient(to right, {gradient})"
        self.state.colour_range = [f"{display.GetWindowLevelMin():.2f}", self.state.layer,
                                   f"{display.GetWindowLevelMax():.2f}"]

    def _place(self, fixed=None, moving=None, overlay=(None, None), checkerboard=None, opacity=0.5) -> None:
        views = self._views()
        content = {"fixed": (fixed, None), "moving": (moving, None), "overlay": overlay,
                   "checkerboard": (checkerboard, None)}
        for key, (background, foreground) in content.items():
            views[key].set_background_volume_id(background.GetID() if background is not None else None)
            views[key].set_foreground_volume_id(foreground.GetID() if foreground is not None else None)
        views["overlay"].set_foreground_opacity(opacity)

    # -- inputs -----------------------------------------------------------------------------------------
    def set_input(self, role: str, name: Optional[str]) -> None:
        node = self._volume(name, role.replace("_", " ")) if name else None
        self.session.set_inputs(**{role: node})
        self.show()
        self.reset_views()

    def _volume(self, name: str, role: str):
        path = existing_file(self.root, name, role)
        if name not in self.loaded or self.loaded[name].GetScene() is None:
            nodes = self.slicer.io_manager.load_volumes([str(path)])
            if not nodes:
                raise RegistrationError(f"{role} '{name}': Slicer could not read it as a volume.")
            nodes[0].SetName(Path(name).name.split(".")[0])
            self.loaded[name] = nodes[0]
        return self.loaded[name]

    # -- running ----------------------------------------------------------------------------------------
    def run(self) -> None:
        state = self.state
        if self.session.running:
            return
        try:
            options = RegistrationOptions(preset=state.preset or "default", similarity=state.similarity or None,
                                          checkerboard_square_mm=_square_mm(state.square),
                                          agreement=bool(state.agreement))
            self.session.start(options)
        except RegistrationError as error:
            state.error = page_text(str(error), self.root)
            return
        self.started_at, self.first_preview_s = time.perf_counter(), None
        state.running, state.progress, state.stage, state.error, state.log, state.timing = True, 0, "starting", \
            "", "", ""

    def cancel(self) -> None:
        self.session.cancel()
        self._drop_preview()
        self.session.restore_initial()
        self.state.running, self.state.stage = False, "cancelled"

    async def _follow(self) -> None:
        """Follows the running job on the server's loop (MRML is changed only here, never on the run's thread)."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if not self.session.running:
                continue
            with self.state:
                try:
                    self._take_events()
                except Exception as error:  # a defect must not stop the loop; the page gets one line
                    self.state.error = page_text(f"the page could not follow the run ({type(error).__name__})",
                                                 self.root)
                    self.state.running = False

    def _take_events(self) -> None:
        state, job = self.state, self.session.job
        for event in self.session.poll():
            if isinstance(event, Progress):
                if event.stage != "preview":
                    if not state.stage.startswith(event.stage):
                        self._log(f"{event.stage} {event.message}".strip())
                    state.progress = round(100 * event.fraction)
                    state.stage = f"{event.stage}: {event.message}" if event.message else event.stage
            elif isinstance(event, LogLine):
                self._log(event.text)
            elif isinstance(event, Finished):
                return self._finish()
        runner = getattr(job, "runner", None)
        preview = runner.latest_preview() if runner is not None and hasattr(runner, "latest_preview") else None
        if preview is not None and job._plane is None:
            self._show_preview(job, preview)

    def _log(self, text: str) -> None:
        lines = (self.state.log.splitlines() + [page_text(text, self.root)])[-MAX_LOG_LINES:]
        self.state.log = "\n".join(lines)

    def _show_preview(self, job, displacement) -> None:
        if self.preview_node is None or self.preview_node.GetScene() is None:
            self.preview_node = self.slicer.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "preview")
        grid_transform_from_displacement(displacement, job._fixed_image.grid, node=self.preview_node)
        self.session.moving.SetAndObserveTransformNodeID(self.preview_node.GetID())
        if self.first_preview_s is None:
            self.first_preview_s = time.perf_counter() - self.started_at
            self.state.timing = f"first preview after {self.first_preview_s:.1f} s"

    def _drop_preview(self) -> None:
        if self.preview_node is not None and self.preview_node.GetScene() is not None:
            self.slicer.scene.RemoveNode(self.preview_node)
        self.preview_node = None

    def _finish(self) -> None:
        state = self.state
        self._drop_preview()
        state.running = False
        try:
            run = self.session.finish()
        except Cancelled:
            state.stage = "cancelled"
            self.session.restore_initial()
            return
        except RegistrationError as error:
            state.stage, state.error = "failed", page_text(str(error), self.root)
            self.session.restore_initial()
            return
        for warning in run.report.get("warnings", []):
            self._log(f"warning: {warning}")
        state.runs = [{"title": r.transform.GetName(), "value": r.number} for r in self.session.runs]
        state.progress, state.stage, state.layer, state.after, state.run = 100, "done", "moving", True, run.number
        self.show()
        total = time.perf_counter() - self.started_at
        first = f"first preview after {self.first_preview_s:.1f} s, " if self.first_preview_s is not None else ""
        state.timing = f"run {run.number}: {first}final views after {total:.1f} s"

    # -- review -----------------------------------------------------------------------------------------
    def select_run(self, number: Optional[int]) -> None:
        chosen = [run for run in self.session.runs if run.number == number]
        if chosen and chosen[0] != self.session.current:
            self.session.select(chosen[0], after=bool(self.state.after))
            self.show()

    def review(self, accepted: bool) -> None:
        if self.session.current is None:
            raise RegistrationError("no run to review yet; press Run first.")
        self.session.current.set_review(accepted, self.state.comment or "")
        self.state.saved = f"run {self.session.current.number} {'accepted' if accepted else 'rejected'}"

    def save(self) -> None:
        name = f"{SCENE_FOLDER}/scene-{time.strftime('%Y%m%d-%H%M%S')}.mrb"
        self.session.save(inside(self.root, name, "scene"))
        self.state.saved = f"saved {name} in the data folder"

    def transform_file(self) -> bytes:
        """The current run's transform as an ITK .h5 file, for the browser to download."""
        run = self.session.current
        if run is None:
            self.state.error = "no run to download yet; press Run first."
            return b""
        with tempfile.TemporaryDirectory(prefix="diffreg-review-") as folder:
            storage = self.slicer.scene.CreateNodeByClass("vtkMRMLTransformStorageNode")
            storage.SetFileName(str(Path(folder) / "transform.h5"))
            if not storage.WriteData(run.transform):
                self.state.error = "the transform could not be written; see the server's console."
                return b""
            return (Path(folder) / "transform.h5").read_bytes()

    def forget(self) -> None:
        """A new reviewer: nothing of the previous one's runs, inputs or log stays on the page."""
        self.session.cancel()
        self._drop_preview()
        for run in self.session.runs:
            for node in run.nodes():
                if node.GetScene() is not None:
                    self.slicer.scene.RemoveNode(node)
        for node in self.loaded.values():
            if node.GetScene() is not None:
                self.slicer.scene.RemoveNode(node)
        self.loaded.clear()
        self.session.current, self.session.view = None, None
        self.session.set_inputs(fixed=None, moving=None, fixed_mask=None, moving_mask=None)
        with self.state:
            for role in INPUTS:
                self.state[role] = None
            self.state.runs, self.state.run, self.state.log, self.state.error, self.state.saved = [], None, "", "", ""
            self.state.stage, self.state.progress, self.state.timing, self.state.running = "", 0, "", False


def _load_backend() -> None:
    """Imports the backend (torch) while the page loads, so the first run does not wait for it."""
    from ...engine import registration  # noqa: F401


def _drop_segment_editor(scene) -> None:
    """trame-slicer's segment editor node (this page edits no segments): its class is registered only where
    the Segmentations module runs, so a scene saved with it does not load with slicer-core alone."""
    nodes = scene.GetNodesByClass("vtkMRMLSegmentEditorNode")
    for index in range(nodes.GetNumberOfItems()):
        scene.RemoveNode(nodes.GetItemAsObject(index))


def _square_mm(value) -> float:
    """The checkerboard's square from the page's field, as a number; its range is the declaration's
    (RegistrationOptions checks it)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RegistrationError(f"checkerboard square '{value}': give a size in mm, e.g. "
                                f"{SQUARE.default:g}.") from None


def _slice_view_ui(server, view_id: str, view) -> None:
    """trame-slicer's controls of a slice view, the view's name in its corner and, in the overlay view, the
    colour bar of a map shown in colour."""
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    html.Div(view.name, classes="text-white text-subtitle-2",
             style="position: absolute; top: 6px; right: 12px; pointer-events: none;")
    if view.name == VIEWS["overlay"]:
        with html.Div(id="colour-bar", v_show=("colour_bar",), classes="text-white text-caption",
                      style="position: absolute; bottom: 34px; right: 12px; width: 40%; pointer-events: none;"):
            html.Div(style=("{ height: '10px', background: colour_bar }",))
            with html.Div(style="display: flex; justify-content: space-between;"):
                for index in range(3):
                    html.Span(f"{{{{ colour_range[{index}] }}}}")
