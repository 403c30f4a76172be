"""The review session: one registration review on one MRML scene, without any GUI.

The Slicer panel (DiffusionRegistration.py) and the browser review page (`diffreg review`) are two views of
this one object, so they behave alike. It holds:

- the inputs: `fixed`, `moving`, `fixed_mask`, `moving_mask` and `initial_transform` (the user's own
  placement of the moving volume: by default its current parent transform, kept and restored, never replaced);
- the run history: every successful run has its own transform node, warped volume, checkerboards (after and
  before), agreement map (on request), Jacobian determinant and report, all recorded on the transform node
  (attribute `DiffusionRegistration.Run`, node references by role), so a saved and reloaded scene has its
  runs again (`runs`). A run never refills another run's nodes unless the caller passes `overwrite=True`
  after asking `overwrite_question()`;
- the layers shown (`show(layer, after)` returns a `View` for the caller's slice views): fixed, moving (under
  the result, or under the initial transform "before"), warped, checkerboard, agreement, Jacobian;
- saving the scene (`save`, .mrb or .mrml); a reloaded scene's runs come back (`ReviewSession(scene).runs`),
  with the reviewer's verdict (`Run.set_review(accepted, comment)`, kept in the run's report).

Runs go to the shared warm backend when it is idle (`warm=False`: a process per run). The session does not
observe the scene: a view calls `close()` (cancels a run) when the scene closes; a run whose input nodes left
the scene ends with a RegistrationError and adds nothing.

Use:
    session = ReviewSession(scene)
    session.set_inputs(fixed=f, moving=m)               # initial transform: m's current parent
    session.start(RegistrationOptions(preset="fast"))   # returns at once
    while ...: events = session.poll()                  # a Finished event ends the run
    run = session.finish()                              # the new Run, shown; or RegistrationError
    view = session.show("checkerboard", after=False)

MRML only: no Qt, no slicer application module (slicer-core suffices).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..engine.options import RegistrationOptions
from ..errors import RegistrationError
from .job import JobResult, RegistrationJob
from .process_runner import Event, Finished
from .scene import save_scene
from .transforms import FIXED_ROLE, MOVING_ROLE

RUN_ATTRIBUTE = "DiffusionRegistration.Run"
REPORT_ATTRIBUTE = "DiffusionRegistration.Report"
# node reference roles on a run's transform node (Fixed and Moving as set_registration_references writes them)
ROLES = {"fixed": FIXED_ROLE, "moving": MOVING_ROLE, "fixed_mask": "FixedMask", "moving_mask": "MovingMask",
         "initial_transform": "InitialTransform", "warped": "Warped", "checkerboard": "Checkerboard",
         "checkerboard_before": "CheckerboardBefore", "agreement": "Agreement", "jacobian": "Jacobian"}
LAYERS = ("fixed", "moving", "warped", "checkerboard", "agreement", "jacobian")
OVERLAY_OPACITY = 0.5
_UNCHANGED = object()


@dataclass(frozen=True)
class View:
    """What the slice views show: `background`, `foreground` over it at `opacity` (None: nothing over it).

    `after` False shows the moving volume as its initial transform places it (before registration)."""

    layer: str
    background: object
    foreground: Optional[object]
    opacity: float
    after: bool


class Run:
    """One finished registration, read from (and kept on) its transform node."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and other.transform is self.transform

    def __hash__(self) -> int:
        return hash(self.transform.GetID())

    def __repr__(self) -> str:
        return f"Run({self.number}, {self.transform.GetName()!r})"

    @property
    def number(self) -> int:
        return int(self.transform.GetAttribute(RUN_ATTRIBUTE) or 0)

    def node(self, role: str):
        """The run's node of `role` (a key of ROLES), or None."""
        return self.transform.GetNodeReference(ROLES[role])

    def __getattr__(self, role: str):
        if role in ROLES:
            return self.node(role)
        raise AttributeError(role)

    @property
    def report(self) -> dict:
        text = self.transform.GetAttribute(REPORT_ATTRIBUTE)
        return json.loads(text) if text else {}

    def set_review(self, accepted: bool, comment: str = "") -> None:
        """Records the reviewer's verdict in the run's report (saved with the scene)."""
        report = self.report
        report["review"] = {"accepted": bool(accepted), "comment": comment}
        self.transform.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report))

    def nodes(self) -> list:
        """The transform and every output node of the run."""
        return [self.transform] + [self.node(r) for r in ("warped", "checkerboard", "checkerboard_before",
                                                            "agreement", "jacobian") if self.node(r) is not None]


def is_run(transform) -> bool:
    return transform is not None and bool(transform.GetAttribute(RUN_ATTRIBUTE))


def default_initial_transform(moving):
    """The moving volume's current placement: its parent transform, unless that is a registration result
    (re-running), then the initial transform that run started from."""
    parent = moving.GetParentTransformNode() if moving is not None else None
    return Run(parent).initial_transform if is_run(parent) else parent


class ReviewSession:
    """Inputs, runs and the layers shown, on one MRML scene (see the module docstring)."""

    job_class = RegistrationJob  # the review page's runs stay in its process (cli/review/warm.py)

    def __init__(self, scene, python: Optional[str] = None, work_folder: Optional[str] = None,
                 keep_files: bool = False, warm: bool = True) -> None:
        """`warm`: runs go to the shared warm backend when it is idle (slicer/warm_backend.py), else each is a
        process of its own."""
        self.scene = scene
        self.python, self.work_folder, self.keep_files, self.warm = python, work_folder, keep_files, warm
        self.fixed = self.moving = self.fixed_mask = self.moving_mask = self.initial_transform = None
        self.job: Optional[RegistrationJob] = None
        self.current: Optional[Run] = None
        self.view: Optional[View] = None
        self.last_folder: Optional[Path] = None  # the last run's files, when keep_files
        self._outputs: tuple = (None, None)
        runs = self.runs
        if runs:
            self.current = runs[-1]
            self.set_inputs(**{role: runs[-1].node(role) for role in ("fixed", "moving", "fixed_mask", "moving_mask",
                                                                     "initial_transform")})

    def close(self) -> None:
        """Cancels a running job; a view calls it when the scene closes. (The session does not observe the
        scene itself: a Python observer called while a scene is destroyed crashes VTK. A run that outlives its
        input nodes ends with a RegistrationError and adds nothing.)"""
        self.cancel()

    # -- inputs --------------------------------------------------------------------------------------
    def set_inputs(self, fixed=_UNCHANGED, moving=_UNCHANGED, fixed_mask=_UNCHANGED, moving_mask=_UNCHANGED,
                   initial_transform=_UNCHANGED) -> None:
        """Sets the given inputs; a new moving volume without an initial transform gets its default one."""
        if fixed is not _UNCHANGED:
            self.fixed = fixed
        if fixed_mask is not _UNCHANGED:
            self.fixed_mask = fixed_mask
        if moving_mask is not _UNCHANGED:
            self.moving_mask = moving_mask
        if moving is not _UNCHANGED:
            self.moving = moving
            if initial_transform is _UNCHANGED:
                initial_transform = default_initial_transform(moving)
        if initial_transform is not _UNCHANGED:
            self.initial_transform = initial_transform

    def input_problem(self, output_transform=None, output_volume=None) -> Optional[str]:
        """Why a run cannot start with these inputs and outputs, or None when it can."""
        if self.fixed is None or self.moving is None:
            return "Select a fixed and a moving volume."
        if self.fixed is self.moving:
            return "The fixed and the moving volume must be two different volumes."
        inputs = {"fixed volume": self.fixed, "moving volume": self.moving, "fixed mask": self.fixed_mask,
                  "moving mask": self.moving_mask}
        for role, node in inputs.items():
            if node is not None and node is output_volume:
                return f"The output volume is the {role} '{node.GetName()}': its voxels would be overwritten. " \
                       "Choose another output volume or none (a new one is made)."
        if output_transform is not None and output_transform is self.initial_transform:
            return f"The output transform '{output_transform.GetName()}' is the initial transform: the starting " \
                   "placement would be lost. Choose another output transform or none (a new one is made)."
        if is_run(self.initial_transform):
            return f"The initial transform '{self.initial_transform.GetName()}' is a registration result; choose a " \
                   "linear transform (or none)."
        if self.initial_transform is not None and not self.initial_transform.IsTransformToWorldLinear():
            return f"The initial transform '{self.initial_transform.GetName()}' is not linear; choose a linear one " \
                   "or harden it into the moving volume."
        return None

    def overwrite_question(self, output_transform=None, output_volume=None) -> Optional[str]:
        """The question to ask before a run refills these chosen output nodes, or None if nothing is lost."""
        users = []
        if output_transform is not None:
            names = [n.GetName() for n in self._nodes_under(output_transform)]
            if names or is_run(output_transform) or output_transform.GetTransformFromParent() is not None:
                used = f" (it places {', '.join(repr(n) for n in names)})" if names else ""
                users.append(f"the transform '{output_transform.GetName()}'{used}")
        if output_volume is not None and output_volume.GetImageData() is not None:
            users.append(f"the voxels of '{output_volume.GetName()}'")
        if not users:
            return None
        return "This run will overwrite " + " and ".join(users) + ". Earlier results in them are lost. Overwrite?"

    def _nodes_under(self, transform) -> list:
        nodes = self.scene.GetNodesByClass("vtkMRMLTransformableNode")
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())
                if nodes.GetItemAsObject(i).GetTransformNodeID() == transform.GetID()]

    # -- running -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self, options: Optional[RegistrationOptions] = None, output_transform=None, output_volume=None,
              overwrite: bool = False) -> RegistrationJob:
        """Starts a run on the current inputs; returns its job at once. Without `overwrite`, chosen output
        nodes that hold something are refused (ask overwrite_question() first). Nothing in the scene changes
        until finish()."""
        if self.job is not None:
            raise RegistrationError("A registration is already running; cancel it or wait for it to finish.")
        problem = self.input_problem(output_transform, output_volume)
        if problem:
            raise RegistrationError(problem)
        question = self.overwrite_question(output_transform, output_volume)
        if question and not overwrite:
            raise RegistrationError(question.replace(" Overwrite?", " Choose another output or confirm."))
        number = max([run.number for run in self.runs], default=0) + 1
        name = f"{self.moving.GetName()} to {self.fixed.GetName()} #{number}"
        job = self.job_class(self.scene, self.fixed, self.moving, options or RegistrationOptions(), self.fixed_mask,
                              self.moving_mask, self.initial_transform, python=self.python,
                              work_folder=self.work_folder, keep_files=self.keep_files, name=name, warm=self.warm)
        self.job, self._outputs, self._number = job.start(), (output_transform, output_volume), number
        self.last_folder = job.folder if self.keep_files else None
        return job

    def poll(self) -> list[Event]:
        """The running job's new events (Progress, LogLine, Finished); [] when none runs."""
        return self.job.poll() if self.job is not None else []

    def cancel(self) -> None:
        """Stops the running job at once (its process ends in the background); the scene is not changed."""
        job, self.job = self.job, None
        if job is not None:
            job.cancel()

    def wait(self, progress: Optional[Callable[[Event], None]] = None, interval: float = 0.05) -> Run:
        """Follows the running job to its end (for scripts and tests) and finishes it."""
        import time

        while self.job is not None:
            for event in self.poll():
                if progress is not None:
                    progress(event)
                if isinstance(event, Finished):
                    return self.finish()
            time.sleep(interval)
        raise RegistrationError("No registration is running.")

    def finish(self) -> Run:
        """After the job's Finished event: records the run (new nodes, or the confirmed output nodes refilled),
        places the moving volume under its result and shows it. Raises RegistrationError (or Cancelled) when
        the run failed, leaving the scene as it was."""
        job, self.job = self.job, None
        if job is None:
            raise RegistrationError("No registration is running.")
        result = job.finish()
        try:
            run = self._record(job, result)
        except BaseException:
            for node in result.nodes():
                if node.GetScene() is not None:
                    self.scene.RemoveNode(node)
            raise
        self.current = run
        self.show("moving", after=True)
        return run

    def _record(self, job: RegistrationJob, result: JobResult) -> Run:
        output_transform, output_volume = self._outputs
        transform, warped = result.transform, result.warped
        if output_volume is not None and output_volume.GetScene() is self.scene:
            output_volume.SetIJKToRASMatrix(_ijk_to_ras(warped))
            output_volume.SetAndObserveImageData(warped.GetImageData())
            if output_volume.GetDisplayNode() is None:
                output_volume.CreateDefaultDisplayNodes()
            self.scene.RemoveNode(warped)
            warped = output_volume
        if output_transform is not None and output_transform.GetScene() is self.scene:
            output_transform.SetAndObserveTransformFromParent(transform.GetTransformFromParent())
            if output_transform.GetStorageNode() is None:
                output_transform.AddDefaultStorageNode()
            output_transform.GetStorageNode().SetFileName(f"{output_transform.GetName()}.h5")
            output_transform.StorableModified()
            for role in ROLES.values():  # an earlier run in this node ends here (the user confirmed it)
                output_transform.RemoveNodeReferenceIDs(role)
            self.scene.RemoveNode(transform)
            transform = output_transform
        transform.SetAttribute(RUN_ATTRIBUTE, str(self._number))
        transform.SetAttribute(REPORT_ATTRIBUTE, json.dumps(result.report))
        nodes = {"fixed": job.fixed, "moving": job.moving, "fixed_mask": job.fixed_mask,
                 "moving_mask": job.moving_mask, "initial_transform": job.initial_transform, "warped": warped,
                 "checkerboard": result.checkerboard, "checkerboard_before": result.checkerboard_before,
                 "agreement": result.agreement, "jacobian": result.jacobian}
        for role, node in nodes.items():
            transform.SetNodeReferenceID(ROLES[role], node.GetID() if node is not None else None)
        return Run(transform)

    # -- history and layers --------------------------------------------------------------------------
    @property
    def runs(self) -> list[Run]:
        """Every finished run in the scene, by number."""
        nodes = self.scene.GetNodesByClass("vtkMRMLTransformNode")
        found = [Run(nodes.GetItemAsObject(i)) for i in range(nodes.GetNumberOfItems())
                 if is_run(nodes.GetItemAsObject(i))]
        return sorted(found, key=lambda run: run.number)

    def select(self, run: Run, after: bool = True) -> View:
        """Makes `run` the current one and shows it (its moving volume under its result when `after`)."""
        self.current = run
        return self.show(self.view.layer if self.view is not None else "moving", after)

    def show(self, layer: str = "moving", after: Optional[bool] = None) -> View:
        """Shows `layer` of the current run, after registration or before it (None: as now).

        Places the run's moving volume under its result (after) or its initial transform (before), and
        returns what the slice views show: the fixed volume in the background and over it the moving volume
        ("moving"), the warped volume ("warped"), the agreement map or the Jacobian (colour, after only;
        before: the moving volume); nothing over it ("fixed"); or the checkerboard alone. Before any run,
        only fixed and moving exist."""
        if layer not in LAYERS:
            raise ValueError(f"layer {layer!r}: choose one of {', '.join(LAYERS)}")
        after = (self.view.after if self.view is not None else True) if after is None else after
        run = self.current
        if run is None:
            self.view = View(layer, self.fixed, self.moving if layer != "fixed" else None, OVERLAY_OPACITY, False)
            return self.view
        fixed, moving = run.fixed, run.moving
        if moving is not None:
            placement = run.transform if after else run.initial_transform
            moving.SetAndObserveTransformNodeID(placement.GetID() if placement is not None else None)
        background, foreground = fixed, moving
        if layer == "fixed":
            foreground = None
        elif layer == "warped" and after:
            foreground = run.warped
        elif layer == "checkerboard":
            background, foreground = (run.checkerboard if after else run.checkerboard_before), None
        elif layer in ("agreement", "jacobian") and after and run.node(layer) is not None:
            foreground = run.node(layer)
        self.view = View(layer, background, foreground, OVERLAY_OPACITY, after)
        return self.view

    def restore_initial(self) -> None:
        """Puts the moving volume back under its initial transform (the user's placement)."""
        if self.moving is not None:
            placement = self.initial_transform
            self.moving.SetAndObserveTransformNodeID(placement.GetID() if placement is not None else None)

    def save(self, path) -> Path:
        """Writes the scene (with every run) to a .mrb bundle or a .mrml file with its data beside it."""
        return save_scene(self.scene, path)


def _ijk_to_ras(volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix
