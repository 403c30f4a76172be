"""One registration run for the Slicer logic: MRML nodes in, backend in a background process, new nodes out.

`RegistrationJob` reads the input volumes (with their world geometry; the moving volume as its initial
transform places it) on the calling thread, then writes them uncompressed with job.json (the resolved
settings, a saved RegistrationConfig) to a temporary folder and starts `python -m DiffusionRegistrationLib.cli.main
register ... --config job.json --progress json` on a helper thread, so a large volume does not freeze the GUI:
on the warm backend (a worker process shared by the jobs: no start-up and torch import per run; see
warm_backend.py) or, with `warm=False` or while that worker is busy with another job, as a process of its own.
On success `finish()` imports the results into new nodes: a grid transform (read through its storage node),
the warped volume, checkerboards after and before, the Jacobian determinant and, on request, the agreement
map. It never changes an existing node: which nodes the run fills or shows is the review session's choice
(session.py). A cancelled or failed run leaves no nodes and no files; cancel() returns at once and the
process is ended in the background. No Qt and no Slicer application are needed.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..core.image import Image
from ..engine.config import save_config
from ..engine.options import RegistrationOptions
from ..errors import Cancelled, RegistrationError
from ..io.images import check_mask, read_image, write_image
from ..progress import Progress
from .checkerboard import checkerboard_volume
from .geometry import grid_from_ijk_to_ras, ijk_to_ras_from_grid
from .planes import Plane, field_to_world, in_plane, plane_of
from .process_runner import Event, Finished, LogLine, ProcessRunner, backend_environment, python_executable
from .transforms import (displacement_from_grid_transform, end_in_frame, grid_transform_from_displacement,
                         load_transform, matrix_from_world)
from .volumes import image_from_volume_node, volume_grid, volume_node_from_image
from .warm_backend import WarmBackend, WarmRun, shared_backend

LIBRARY_PARENT = Path(__file__).resolve().parents[2]  # the folder holding DiffusionRegistrationLib
JOB_FILE = "job.json"
OWN_PARENT = object()  # world_image: place the volume by its own parent transform
# exit code of a run whose inputs could not be written (the backend's own code for bad input)
NOT_STARTED = 2


@dataclass
class JobResult:
    """The nodes a finished run created (all new), the backend's report.json and the run's log."""

    transform: object
    warped: object
    checkerboard: object
    checkerboard_before: object
    report: dict
    log: list[str]
    agreement: Optional[object] = None
    jacobian: Optional[object] = None

    def nodes(self) -> list:
        return [n for n in (self.transform, self.warped, self.checkerboard, self.checkerboard_before, self.agreement,
                            self.jacobian) if n is not None]


# Slicer's ColdToHotRainbow table (vtkMRMLColorLogic, 5.8 and later): blue for low values, red for high
AGREEMENT_COLOURS = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"


def colour_overlay(volume_node, low: float = -1.0, high: float = 1.0, colour_table: str = AGREEMENT_COLOURS) -> None:
    """Shows a map in colour from `low` (blue) to `high` (red), for a foreground layer."""
    volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colour_table)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(low, high)


def idle_backend(python: Optional[str] = None) -> Optional[WarmBackend]:
    """The shared warm backend for `python`, set up to run this Lib; None while it runs another job."""
    backend = shared_backend(python)
    if backend.busy:
        return None
    backend.configure(backend_environment(LIBRARY_PARENT), str(LIBRARY_PARENT))
    return backend


def warm_up(python: Optional[str] = None) -> None:
    """Starts the shared worker in the background (when the panel or page opens), so that the first run is
    warm too; returns at once. Nothing happens while torch is not installed (it is installed on the first
    Apply) or while the worker runs a job."""
    if importlib.util.find_spec("torch") is None:
        return
    backend = idle_backend(python)
    if backend is not None:
        backend.start()


def world_image(node, role: str, transform=OWN_PARENT) -> Image:
    """The volume in world coordinates, placed by its own parent transform or by `transform` (None: none).

    Only a linear placement describes a grid: a non-linear one raises RegistrationError naming it."""
    if transform is OWN_PARENT:
        return image_from_volume_node(node, role)
    image = image_from_volume_node(node, role, include_parent_transform=False)
    if transform is None:
        return image
    if not transform.IsTransformToWorldLinear():
        raise RegistrationError(f"initial transform '{transform.GetName()}' of the {role}: is not linear. Choose a "
                                "linear transform, or harden it into the volume (Data module: right-click, Harden "
                                "transform).")
    ijk_to_ras = np.linalg.inv(matrix_from_world(transform)) @ ijk_to_ras_from_grid(image.grid)
    return Image(image.array, grid_from_ijk_to_ras(ijk_to_ras, image.grid.size))


def mask_image(mask_node, volume_node, image: Image, role: str) -> Image:
    """A mask for `image` (the volume `volume_node` as it is sent to the backend), as binary weights.

    A segmentation's segments, all of them, are exported on the volume's own voxels (Slicer's segmentation
    logic resamples them, with their transforms); a mask volume on the volume's own voxel grid follows the
    volume wherever it is placed; any other mask volume is taken where it lies in the world (through its own
    linear parent) and must cover the volume's grid there."""
    if mask_node.IsA("vtkMRMLSegmentationNode"):
        own = segments_on(mask_node, volume_node, role)
    else:
        own = image_from_volume_node(mask_node, role, include_parent_transform=False)
    mask = Image(own.array, image.grid) if own.grid.same_as(volume_grid(volume_node), 1e-3) \
        else world_image(mask_node, role)
    return check_mask(mask, image, role, f"'{mask_node.GetName()}'")


def segments_on(segmentation_node, volume_node, role: str) -> Image:
    """Every segment of the segmentation as one label map on the volume's own voxel grid."""
    from slicer import vtkSlicerSegmentationsModuleLogic
    import vtk

    scene = segmentation_node.GetScene()
    colour_tables = {scene.GetNthNodeByClass(i, "vtkMRMLColorNode").GetID()
                     for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorNode"))}
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segmentation_node.GetName()} (mask)")
    try:
        ids = vtk.vtkStringArray()
        segmentation_node.GetSegmentation().GetSegmentIDs(ids)
        if ids.GetNumberOfValues() == 0 or not vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labels, volume_node):
            raise RegistrationError(f"{role} '{segmentation_node.GetName()}': holds no segment that can be exported "
                                    "as a label map. Draw the region in the Segment Editor, or leave the mask out.")
        return image_from_volume_node(labels, role, include_parent_transform=False)
    finally:  # the export's label map, its display node and a colour table made for it
        display = labels.GetDisplayNode()
        colours = display.GetColorNode() if display is not None else None
        made = [labels, display] + ([colours] if colours is not None and colours.GetID() not in colour_tables else [])
        for node in made:
            if node is not None and node.GetScene() is scene:
                scene.RemoveNode(node)


class RegistrationJob:
    """Prepare, start, follow, then `finish()` (import results into new nodes) or `cancel()` one run."""

    def __init__(self, scene, fixed, moving, options: Optional[RegistrationOptions] = None, fixed_mask=None,
                 moving_mask=None, initial_transform=None, python: Optional[str] = None,
                 work_folder: Optional[str] = None, keep_files: bool = False, name: str = "", warm: bool = True):
        if fixed is None or moving is None:
            raise RegistrationError("Select both a fixed and a moving volume.")
        if fixed is moving or fixed.GetID() == moving.GetID():
            raise RegistrationError(f"The fixed and the moving volume are the same node ('{fixed.GetName()}'). "
                                    "Select two different volumes.")
        self.scene, self.fixed, self.moving = scene, fixed, moving
        self.options = options or RegistrationOptions()
        self.fixed_mask, self.moving_mask = fixed_mask, moving_mask
        self.initial_transform = initial_transform
        self.python = python_executable(python)
        self.work_folder, self.keep_files, self.warm = work_folder, keep_files, warm
        self.name = name or f"{moving.GetName()} to {fixed.GetName()}"
        self.folder: Optional[Path] = None
        self.runner: Optional[Union[ProcessRunner, WarmRun]] = None
        self.log: list[str] = []
        self.last_progress: Optional[Progress] = None
        self._world_to_moving = None
        self._plane: Optional[Plane] = None
        self._fixed_image: Optional[Image] = None
        self._moving_image: Optional[Image] = None
        self._writer: Optional[threading.Thread] = None
        self._write_error: Optional[BaseException] = None
        self._failed_to_start = False
        self._cancelled = threading.Event()
        self._stopped = threading.Event()

    # -- running -------------------------------------------------------------------------------------
    def arguments(self, folder: Path) -> list[str]:
        """`diffreg register` on the files in `folder`; the settings are job.json (a saved RegistrationConfig),
        except for a network without fine-tuning, which takes no similarity settings."""
        argv = ["register", "--fixed", str(folder / "fixed.nrrd"), "--moving", str(folder / "moving.nrrd"),
                "--output-dir", str(folder / "output"), "--progress", "json"]
        if self.fixed_mask is not None:
            argv += ["--fixed-mask", str(folder / "fixed_mask.nrrd")]
        if self.moving_mask is not None:
            argv += ["--moving-mask", str(folder / "moving_mask.nrrd")]
        if self.options.agreement:
            argv += ["--agreement"]
        if self.options.network:
            argv += ["--network", str(self.options.network), "--finetune-steps", str(int(self.options.finetune_steps))]
            if not self.options.finetune_steps:
                return argv + ["--device", self.options.device or "auto"]
        return argv + ["--config", str(folder / JOB_FILE)]

    def _launch(self, folder: Path) -> Union[ProcessRunner, WarmRun]:
        """The job on the idle warm backend, else as a process of its own."""
        backend = idle_backend(self.python) if self.warm else None
        if backend is not None:
            return backend.submit(self.arguments(folder), temporary_folder=folder)
        return ProcessRunner([self.python, "-m", "DiffusionRegistrationLib.cli.main", *self.arguments(folder)],
                             env=backend_environment(LIBRARY_PARENT), cwd=str(LIBRARY_PARENT),
                             temporary_folder=folder).start()

    def start(self) -> "RegistrationJob":
        """Reads and checks the inputs here (MRML is not thread-safe), then writes them and starts the backend
        on a helper thread; returns at once. Bad input raises RegistrationError before anything is written."""
        config = self.options.config()
        fixed = world_image(self.fixed, "fixed volume")
        moving = world_image(self.moving, "moving volume", self.initial_transform)
        self._world_to_moving = matrix_from_world(self.initial_transform) if self.initial_transform is not None \
            else None
        files = {"fixed": fixed, "moving": moving}
        if self.fixed_mask is not None:
            files["fixed_mask"] = mask_image(self.fixed_mask, self.fixed, fixed, "fixed mask")
        if self.moving_mask is not None:
            files["moving_mask"] = mask_image(self.moving_mask, self.moving, moving, "moving mask")
        self._fixed_image, self._moving_image = fixed, moving
        self._plane = plane_of(fixed.grid)
        if self._plane is not None:
            roles = {"fixed": "fixed volume", "moving": f"moving volume '{self.moving.GetName()}'",
                     "fixed_mask": "fixed mask", "moving_mask": "moving mask"}
            files = {name: in_plane(image, self._plane, roles[name]) for name, image in files.items()}
        self.folder = Path(tempfile.mkdtemp(prefix="diffreg-slicer-", dir=self.work_folder)).resolve()
        self._writer = threading.Thread(target=self._write_and_run, args=(files, config), daemon=True)
        self._writer.start()
        return self

    def _write_and_run(self, files: dict, config) -> None:
        try:
            for name, image in files.items():
                write_image(image, self.folder / f"{name}.nrrd", compress=False)
            save_config(config, self.folder / JOB_FILE)
            if not self._cancelled.is_set():
                self.runner = self._launch(self.folder)
        except BaseException as error:  # reported by poll() as a failed run
            self._write_error = error

    def prepared(self, timeout: Optional[float] = None) -> "RegistrationJob":
        """Waits until the inputs are written and the backend started; re-raises a failure to write them."""
        if self._writer is not None:
            self._writer.join(timeout)
        if self._write_error is not None:
            raise self._write_error
        return self

    @property
    def running(self) -> bool:
        return (self._writer is not None and self._writer.is_alive()) or \
            (self.runner is not None and self.runner.running)

    def poll(self) -> list[Event]:
        """New events since the last call (Progress, LogLine, Finished); keeps the log and last progress."""
        if self._writer is not None and self._writer.is_alive():
            return []
        if self.runner is None:
            if self._failed_to_start or self._cancelled.is_set():
                return []
            self._failed_to_start = True
            error = self._write_error or RuntimeError("the backend was not started")
            line = f"error: could not write the inputs to {self.folder}: {error}"
            self.log.append(line)
            return [LogLine(line, "stderr"), Finished(NOT_STARTED)]
        events = self.runner.poll()
        for event in events:
            if isinstance(event, Progress):
                self.last_progress = event
            elif not isinstance(event, Finished):
                self.log.append(event.text)
        return events

    def wait(self, progress: Optional[Callable[[Event], None]] = None, interval: float = 0.05) -> JobResult:
        """Follows the run to its end (calling `progress` for every event) and imports the results."""
        while True:
            for event in self.poll():
                if progress is not None:
                    progress(event)
                if isinstance(event, Finished):
                    return self.finish()
            time.sleep(interval)

    def cancel(self) -> None:
        """Returns at once: a helper thread kills the backend's whole process tree (after the inputs are
        written, if that is under way) and removes the temporary folder. Creates no nodes."""
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        threading.Thread(target=self._stop, daemon=True).start()

    def _stop(self) -> None:
        if self._writer is not None:
            self._writer.join()
        if self.runner is not None:
            self.runner.cancel()
        self._remove_folder(force=True)
        self._stopped.set()

    def stopped(self, timeout: Optional[float] = None) -> bool:
        """Waits until a cancelled run's process is gone and its folder removed."""
        return self._stopped.wait(timeout)

    # -- results -------------------------------------------------------------------------------------
    def finish(self) -> JobResult:
        """After the process ended: imports the outputs into new nodes, or raises; always cleans up."""
        runner = self.runner
        try:
            if self._cancelled.is_set() or (runner is not None and runner.cancelled):
                raise Cancelled("the registration was cancelled")
            if runner is None:
                raise RegistrationError(self.log[-1][len("error: "):] if self.log else "the backend was not started")
            if runner.returncode is None:
                raise RuntimeError("finish() called before the background process ended")
            if runner.returncode != 0:
                raise RegistrationError(runner.error_message())
            self._check_inputs_still_there()
            return self._import(self.folder / "output")
        finally:
            self._remove_folder()

    def _check_inputs_still_there(self) -> None:
        for role, node in (("fixed volume", self.fixed), ("moving volume", self.moving),
                           ("initial transform", self.initial_transform)):
            if node is not None and node.GetScene() is not self.scene:
                raise RegistrationError(f"The {role} '{node.GetName()}' was removed from the scene during the run; "
                                        "nothing was added. Load it again and press Apply.")

    def _on_fixed_grid(self, path: Path, role: str) -> Image:
        image = read_image(path, role)
        if image.array.size != self._fixed_image.array.size:
            raise RegistrationError(f"{role} {path}: does not lie on the fixed volume's grid.")
        return Image(image.array.reshape(self._fixed_image.array.shape), self._fixed_image.grid)

    def _import(self, output: Path) -> JobResult:
        report_path = output / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        outputs = report.get("outputs", {})
        created: list = []

        def volume(image: Image, suffix: str):
            node = volume_node_from_image(image, scene=self.scene, name=f"{self.name} {suffix}")
            created.append(node)
            return node

        try:
            transform = self.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", self.name)
            created.append(transform)
            load_transform(Path(outputs.get("transform", output / "transform.h5")), self.scene, node=transform)
            created.append(transform.GetStorageNode())
            if self._plane is not None:  # the field lies in the slice's (u, v) frame: place it in the world
                displacement, _grid = displacement_from_grid_transform(transform)
                grid_transform_from_displacement(field_to_world(displacement[0], self._plane),
                                                 self._fixed_image.grid, node=transform)
            if self._world_to_moving is not None:
                end_in_frame(transform, self._world_to_moving)
            transform.GetStorageNode().SetFileName(f"{self.name}.h5")  # the temporary file goes; saving writes anew
            transform.StorableModified()
            warped_image = self._on_fixed_grid(Path(outputs.get("warped", output / "warped.nii.gz")),
                                               "warped moving volume")
            warped = volume(warped_image, "warped")
            square = self.options.checkerboard_square_mm
            board = checkerboard_volume(self.fixed, warped_image, square, scene=self.scene,
                                        name=f"{self.name} checkerboard")
            created.append(board)
            board_before = checkerboard_volume(self.fixed, self._moving_on_fixed_grid(), square, scene=self.scene,
                                               name=f"{self.name} checkerboard before")
            created.append(board_before)
            agreement = jacobian = None
            if "agreement" in outputs:
                agreement = volume(self._on_fixed_grid(Path(outputs["agreement"]), "agreement map"), "agreement")
                colour_overlay(agreement)
            if "jacobian" in outputs:
                jacobian = volume(self._on_fixed_grid(Path(outputs["jacobian"]), "Jacobian determinant"), "Jacobian")
                colour_overlay(jacobian, 0.0, 2.0)
            return JobResult(transform, warped, board, board_before, report, list(self.log), agreement, jacobian)
        except BaseException:
            for node in reversed(created):
                if node is not None and node.GetScene() is not None:
                    self.scene.RemoveNode(node)
            raise

    def _moving_on_fixed_grid(self) -> Image:
        """The moving volume as its initial transform places it, resampled on the fixed grid (the 'before')."""
        import SimpleITK as sitk

        resampled = sitk.Resample(self._moving_image.to_sitk(), self._fixed_image.to_sitk(), sitk.Transform(),
                                  sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return Image(sitk.GetArrayFromImage(resampled), self._fixed_image.grid)

    def _remove_folder(self, force: bool = False) -> None:
        if self.folder is not None and self.folder.exists() and (force or not self.keep_files):
            shutil.rmtree(self.folder, ignore_errors=True)
