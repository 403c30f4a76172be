"""One registration run for the Slicer logic: MRML nodes in, backend in a background process, nodes out.

`RegistrationJob` writes the input volumes (with their world geometry) and job.json (the resolved settings,
a saved RegistrationConfig) to a temporary folder, runs `diffreg register ... --config job.json --progress
json` on the warm backend (a worker process shared by the jobs: no start-up and torch import per run; see
warm_backend.py) or, with `warm=False` or while that worker is busy with another job, as a process of its
own through ProcessRunner, and on success imports the results: a
transform node (read through its storage node, Fixed/Moving references, set as the moving volume's parent
transform), an optional warped volume, a checkerboard volume and, on request, the agreement map.
Nodes are created only when the run succeeded, so a cancelled or failed run leaves no nodes, no files
and no process behind. No Qt and no Slicer application are needed.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from ..engine.config import save_config
from ..engine.options import RegistrationOptions
from ..errors import Cancelled, RegistrationError
from ..core.image import Image
from ..io.images import check_mask, read_image, write_image
from ..progress import Progress
from .checkerboard import checkerboard_volume
from .process_runner import Event, Finished, ProcessRunner, backend_environment, python_executable
from .transforms import MOVING_ROLE, end_in_frame, load_transform, matrix_from_world, set_registration_references
from .volumes import image_from_volume_node, volume_node_from_image
from .warm_backend import WarmBackend, WarmRun, shared_backend

LIBRARY_PARENT = Path(__file__).resolve().parents[2]  # the folder holding DiffusionRegistrationLib
CHECKERBOARD_ROLE = "Checkerboard"
AGREEMENT_ROLE = "Agreement"
JOB_FILE = "job.json"


@dataclass
class JobResult:
    """The nodes a finished run created or filled, the backend's report.json and the run's log."""

    transform: object
    warped: Optional[object]
    checkerboard: object
    report: dict
    log: list[str]
    agreement: Optional[object] = None


# Slicer's ColdToHotRainbow table (vtkMRMLColorLogic, 5.8 and later): blue for low values, red for high
AGREEMENT_COLOURS = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"


def colour_overlay(volume_node, colour_table: str = AGREEMENT_COLOURS) -> None:
    """Shows a map in [-1, 1] in colour (blue: disagreement, red: agreement), for a foreground layer."""
    volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colour_table)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(-1.0, 1.0)


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


def _check_mask(mask_node, image: Image, role: str) -> Image:
    return check_mask(image_from_volume_node(mask_node, role), image, role, f"'{mask_node.GetName()}'")


class RegistrationJob:
    """Prepare, start, follow, then `finish()` (import results) or `cancel()` one background registration."""

    def __init__(self, scene, fixed, moving, options: Optional[RegistrationOptions] = None, fixed_mask=None,
                 moving_mask=None, output_transform=None, output_volume=None, python: Optional[str] = None,
                 work_folder: Optional[str] = None, warm: bool = True):
        if fixed is None or moving is None:
            raise RegistrationError("Select both a fixed and a moving volume.")
        if fixed is moving or fixed.GetID() == moving.GetID():
            raise RegistrationError(f"The fixed and the moving volume are the same node ('{fixed.GetName()}'). "
                                    "Select two different volumes.")
        self.scene, self.fixed, self.moving = scene, fixed, moving
        self.options = options or RegistrationOptions()
        self.fixed_mask, self.moving_mask = fixed_mask, moving_mask
        self.output_transform, self.output_volume = output_transform, output_volume
        self.python = python_executable(python)
        self.work_folder = work_folder
        self.warm = warm
        self.folder: Optional[Path] = None
        self.runner: Optional[Union[ProcessRunner, WarmRun]] = None
        self.log: list[str] = []
        self.last_progress: Optional[Progress] = None
        self._world_to_moving = None

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

    def start(self) -> "RegistrationJob":
        """Resolves the settings, writes the inputs and job.json, and starts the backend; returns at once."""
        config = self.options.config()
        fixed = image_from_volume_node(self.fixed, "fixed volume")
        through_parent = self.moving.GetParentTransformNode() is not None and not self._under_previous_result()
        moving = image_from_volume_node(self.moving, "moving volume", include_parent_transform=through_parent)
        # the result replaces the user's parent transforms as the volume's parent, so it must end where they did
        self._world_to_moving = matrix_from_world(self.moving.GetParentTransformNode()) if through_parent else None
        masks = {"fixed_mask": _check_mask(self.fixed_mask, fixed, "fixed mask") if self.fixed_mask else None,
                 "moving_mask": _check_mask(self.moving_mask, moving, "moving mask") if self.moving_mask else None}
        self.folder = Path(tempfile.mkdtemp(prefix="diffreg-slicer-", dir=self.work_folder)).resolve()
        try:
            write_image(fixed, self.folder / "fixed.nrrd")
            write_image(moving, self.folder / "moving.nrrd")
            for name, mask in masks.items():
                if mask is not None:
                    write_image(mask, self.folder / f"{name}.nrrd")
            save_config(config, self.folder / JOB_FILE)
            self.runner = self._launch(self.folder)
        except BaseException:
            self._remove_folder()
            raise
        return self

    def _launch(self, folder: Path) -> Union[ProcessRunner, WarmRun]:
        """The job on the idle warm backend, else as a process of its own."""
        backend = idle_backend(self.python) if self.warm else None
        if backend is not None:
            return backend.submit(self.arguments(folder), temporary_folder=folder)
        return ProcessRunner([self.python, "-m", "DiffusionRegistrationLib.cli.main", *self.arguments(folder)],
                             env=backend_environment(LIBRARY_PARENT), cwd=str(LIBRARY_PARENT),
                             temporary_folder=folder).start()

    def _under_previous_result(self) -> bool:
        """Whether the moving volume sits under an earlier registration of itself (re-running Apply):
        that transform is replaced by the new result, so the volume is registered without it."""
        parent = self.moving.GetParentTransformNode()
        reference = parent.GetNodeReference(MOVING_ROLE) if parent is not None else None
        return reference is not None and reference.GetID() == self.moving.GetID()

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running

    def poll(self) -> list[Event]:
        """New events since the last call (Progress, LogLine, Finished); keeps the log and last progress."""
        events = self.runner.poll() if self.runner is not None else []
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
        """Kills the backend's whole process tree and removes the temporary folder; creates no nodes."""
        if self.runner is not None:
            self.runner.cancel()
        self._remove_folder()

    # -- results -------------------------------------------------------------------------------------
    def finish(self) -> JobResult:
        """After the process ended: imports the outputs into the scene, or raises; always cleans up."""
        runner = self.runner
        try:
            if runner is None or runner.returncode is None:
                raise RuntimeError("finish() called before the background process ended")
            if runner.cancelled:
                raise Cancelled("the registration was cancelled")
            if runner.returncode != 0:
                raise RegistrationError(runner.error_message())
            return self._import(self.folder / "output")
        finally:
            self._remove_folder()

    def _import(self, output: Path) -> JobResult:
        report_path = output / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        outputs = report.get("outputs", {})
        transform_path = Path(outputs.get("transform", output / "transform.h5"))
        warped_path = Path(outputs.get("warped", output / "warped.nii.gz"))
        created: list = []
        try:
            transform = self.output_transform
            if transform is None:
                transform = self.scene.AddNewNodeByClass("vtkMRMLGridTransformNode",
                                                         f"{self.moving.GetName()} to {self.fixed.GetName()}")
                created.append(transform)
            had_storage = transform.GetStorageNode() is not None
            load_transform(transform_path, self.scene, node=transform)
            if self._world_to_moving is not None:
                end_in_frame(transform, self._world_to_moving)
            if not had_storage:
                created.append(transform.GetStorageNode())
            storage = transform.GetStorageNode()
            storage.SetFileName(f"{transform.GetName()}.h5")  # the temporary file goes; saving writes it anew
            transform.StorableModified()
            set_registration_references(transform, self.fixed, self.moving)
            warped = read_image(warped_path, "warped moving volume")
            fixed_image = image_from_volume_node(self.fixed, "fixed volume")
            if warped.array.size != fixed_image.array.size:
                raise RegistrationError(f"warped volume {warped_path}: does not lie on the fixed volume's grid.")
            warped_on_fixed = Image(warped.array.reshape(fixed_image.array.shape), fixed_image.grid)
            volume = None
            if self.output_volume is not None:
                volume = volume_node_from_image(warped_on_fixed, node=self.output_volume)
            board = transform.GetNodeReference(CHECKERBOARD_ROLE)
            if board is None:
                board = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{self.moving.GetName()} checkerboard")
                created.append(board)
            checkerboard_volume(self.fixed, warped_on_fixed, self.options.checkerboard_square_mm, node=board)
            transform.SetNodeReferenceID(CHECKERBOARD_ROLE, board.GetID())
            agreement = None
            if "agreement" in outputs:
                agreement = transform.GetNodeReference(AGREEMENT_ROLE)
                if agreement is None:
                    agreement = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                             f"{self.moving.GetName()} agreement")
                    created.append(agreement)
                image = read_image(outputs["agreement"], "agreement map")
                volume_node_from_image(Image(image.array.reshape(fixed_image.array.shape), fixed_image.grid),
                                       node=agreement)
                colour_overlay(agreement)
                transform.SetNodeReferenceID(AGREEMENT_ROLE, agreement.GetID())
            self.moving.SetAndObserveTransformNodeID(transform.GetID())
            return JobResult(transform, volume, board, report, list(self.log), agreement)
        except BaseException:
            for node in reversed(created):
                if node.GetScene() is not None:
                    self.scene.RemoveNode(node)
            raise

    def _remove_folder(self) -> None:
        if self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)
