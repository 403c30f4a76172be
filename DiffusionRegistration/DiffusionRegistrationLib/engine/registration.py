"""Instance optimisation: `register(fixed, moving, config) -> Result`.

Three stages share one level loop: an affine stage (moments or centres, then multi-resolution Adam),
a deformable stage (dense displacement or stationary velocity field, coarse to fine), and the result
on the fixed grid. The mapping is T(x) = A(x + u(x)) from fixed to moving physical space; every
similarity sees the moving image through the sampling grid of T.

Resolution levels are physical: a level's shrink factor applies to `config.level_spacing_mm` (never
finer than the image), so a 1 mm and a 2 mm image of the same anatomy get the same levels in mm.
A run changes no process-wide state: torch's thread count is restored afterwards, and every random
draw comes from the similarity's own generator, seeded from `config.seed`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ..errors import RegistrationError
from ..geometry.spatial import gaussian_smooth, physical_points, resample_to, sample, to_sampling_grid
from ..geometry.transforms import (REGULARIZERS, AffineTransform, DenseTransform, channels_last, resize_field,
                                   sample_field)
from ..core.image import Grid, Image
from ..io.images import check_grid, check_image, check_mask, normalize
from ..progress import Progress, ProgressCallback, silent
from ..similarity import build_similarity
from ..similarity.base import Similarity
from ..similarity.registry import affine_similarity_name
from .config import RegistrationConfig
from .device import resolve_device
from .foreground import MaskDecision, decide_masks
from .optimizer import CosineAdam, ParameterGroup
from .quality import quality_warnings
from .result import Result


@contextlib.contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """Runs the block with `count` torch threads (None: unchanged) and restores the previous count."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Pyramid:
    """An image and optional mask as tensors, with their smoothed and subsampled levels (cached)."""

    image: torch.Tensor
    mask: Optional[torch.Tensor]
    grid: Grid
    _levels: dict = field(default_factory=dict, init=False, repr=False)

    def level(self, factor: float) -> tuple[torch.Tensor, Optional[torch.Tensor], Grid]:
        if factor not in self._levels:
            if factor == 1:
                self._levels[factor] = (self.image, self.mask, self.grid)
            else:
                grid = self.grid.scaled(factor)
                smoothed = gaussian_smooth(self.image, 0.5 * factor)
                image = resample_to(smoothed, self.grid, grid)
                mask = None if self.mask is None else (resample_to(self.mask, self.grid, grid) > 0.5).float()
                self._levels[factor] = (image, mask, grid)
        return self._levels[factor]


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=device)[None, None]


def prepare(image: Image, mask: Optional[Image], config: RegistrationConfig, device: torch.device) -> Pyramid:
    """The normalised image (and mask) of one side as a pyramid on `device`."""
    scaled = normalize(image, *config.percentiles) if config.normalize else image
    return Pyramid(_tensor(scaled.array, device),
                   None if mask is None else _tensor((mask.array > 0).astype(np.float32), device), image.grid)


def _center_of_mass(image: torch.Tensor, grid: Grid) -> np.ndarray:
    points = physical_points(grid, image.device).reshape(-1, grid.dim)
    weights = image.reshape(-1, 1)
    return ((points * weights).sum(0) / weights.sum().clamp(min=1e-12)).double().cpu().numpy()


def _initial_affine(fixed: Pyramid, moving: Pyramid, config: RegistrationConfig) -> AffineTransform:
    dim = fixed.grid.dim
    if config.init == "moments":
        fixed_weight = fixed.image if fixed.mask is None else fixed.image * fixed.mask
        moving_weight = moving.image if moving.mask is None else moving.image * moving.mask
        center = _center_of_mass(fixed_weight, fixed.grid)
        translation = _center_of_mass(moving_weight, moving.grid) - center
    elif config.init == "centers":
        center = fixed.grid.center()
        translation = moving.grid.center() - center
    else:
        center, translation = fixed.grid.center(), np.zeros(dim)
    return AffineTransform(dim, center, translation).to(fixed.image.device)


def mask_at(fixed_mask: Optional[torch.Tensor], moving_mask: Optional[torch.Tensor],
             sampling_grid: torch.Tensor) -> Optional[torch.Tensor]:
    """Where the similarity is measured: the fixed mask and the moving mask pulled into fixed space."""
    if moving_mask is None:
        return fixed_mask
    pulled = (sample(moving_mask, sampling_grid.detach(), padding_mode="zeros") > 0.5).float()
    return pulled if fixed_mask is None else fixed_mask * pulled


class _Convergence:
    """Stops when the mean loss of the last `patience` steps improved by less than `tolerance` (relative)."""

    def __init__(self, tolerance: float, patience: int):
        self.tolerance, self.patience, self.losses = tolerance, max(patience, 2), []

    def done(self, loss: float) -> bool:
        self.losses.append(loss)
        n = self.patience
        if len(self.losses) < 2 * n:
            return False
        previous = float(np.mean(self.losses[-2 * n:-n]))
        recent = float(np.mean(self.losses[-n:]))
        return previous - recent < self.tolerance * max(abs(previous), 1e-8)


def _diverged(setting: str, what: str) -> RegistrationError:
    return RegistrationError(f"the optimisation diverged ({what}); lower {setting} (e.g. --set {setting}=...) to "
                             "half its value or less, or raise the regularization.")


def _optimise(step: Callable[[], torch.Tensor], groups: list[ParameterGroup], iterations: int,
              config: RegistrationConfig, report: Callable[[int, float], None], setting: str,
              keep_best: bool = True) -> dict:
    """Adam steps with a cosine schedule until `iterations` or convergence. Non-finite losses or parameters
    stop it before they reach grid_sample (whose backward crashes on them), naming `setting` to lower.

    With `keep_best` (losses of different steps comparable: no random sampling per step) the parameters
    with the lowest loss seen are kept. Adam's normalised steps have the size of the learning rate
    whatever the gradient, so a level that starts at its optimum (an image registered to itself, or a
    finer level whose coarser one found the answer) would otherwise end wherever the oscillation of the
    last steps left it."""
    convergence = _Convergence(config.tolerance, config.patience)
    optimizer = CosineAdam(groups, iterations)
    parameters = optimizer.parameters
    loss_value, start_loss, done = float("nan"), None, 0
    best_loss, best, best_step = float("inf"), None, 0
    for done in range(1, iterations + 1):
        optimizer.zero_grad()
        loss = step()
        loss_value = float(loss.detach())
        if not np.isfinite(loss_value):
            raise _diverged(setting, "the loss is not finite")
        start_loss = loss_value if start_loss is None else start_loss
        if keep_best and loss_value < best_loss:
            best_loss, best_step = loss_value, done
            best = [p.detach().clone() for p in parameters]
        loss.backward()
        optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in parameters):
            raise _diverged(setting, "the transform's parameters are not finite")
        report(done, loss_value)
        if convergence.done(loss_value):
            break
    if best is not None and best_step < done:  # the last step's update is kept when its start was the best
        with torch.no_grad():
            for parameter, value in zip(parameters, best):
                parameter.copy_(value)
        loss_value = best_loss
    return {"steps": done, "loss": loss_value, "start_loss": start_loss}


def _affine_sampling(affine: AffineTransform, fixed_grid: Grid, moving_grid: Grid,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For T(x) = A(x + u): the sampling grid of A alone, and the matrix taking u (mm) to its change.

    Both parts are linear, so `base + u @ matrix` is the sampling grid of T without recomputing the
    affine map and the physical-to-index conversion of every voxel at every step.
    """
    with torch.no_grad():
        base = to_sampling_grid(affine(physical_points(fixed_grid, device)), moving_grid)
    dim = fixed_grid.dim
    scale = np.diag(2.0 / np.maximum(np.asarray(moving_grid.size, dtype=np.float64) - 1, 1))
    matrix = scale @ moving_grid.physical_to_index()[:dim, :dim] @ affine.matrix()[0][:dim, :dim]
    return base, torch.as_tensor(matrix.T, dtype=torch.float32, device=device)


MIN_LEVEL_VOXELS = 16


def level_plan(grid: Grid, levels: tuple[float, ...], iterations: tuple[int, ...],
               level_spacing_mm: Optional[float]) -> list[tuple[float, int]]:
    """(shrink factor of the image grid, iterations) of each level, coarse to fine.

    A level's spacing is its factor times `level_spacing_mm` for a 3D volume (2D, or None: the image's
    own spacing), never finer than the image. A level with 0 iterations is skipped, as in ANTs
    (`--convergence [100x70x0]`); none left: the stage is skipped. Levels that fall onto the same factor
    keep the first; levels with fewer than MIN_LEVEL_VOXELS along an axis are dropped (they mislead the
    optimiser), except that the finest level that runs is always kept.
    """
    voxel_mm = float(min(grid.spacing))
    base = 1.0 if level_spacing_mm is None or grid.dim == 2 else max(level_spacing_mm / voxel_mm, 1.0)
    running = [(float(level * base), count) for level, count in zip(levels, iterations) if count > 0]
    plan: list[tuple[float, int]] = []
    for factor, count in running:
        if min(grid.size) / factor >= MIN_LEVEL_VOXELS and all(factor != f for f, _ in plan):
            plan.append((factor, count))
    if running and not plan:
        plan = [min(running)]
    return plan


def _affine_similarity(config: RegistrationConfig) -> Similarity:
    if config.affine_similarity is not None:
        return build_similarity(config.affine_similarity, **config.affine_similarity_params)
    name = affine_similarity_name(config.similarity)
    return build_similarity(name, **(config.similarity_params if name == config.similarity else {}))


@dataclass
class Run:
    """What every stage of one run shares: both pyramids, the device, settings, progress and history."""

    fixed: Pyramid
    moving: Pyramid
    config: RegistrationConfig
    device: torch.device
    progress: ProgressCallback
    history: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    preview: Optional[PreviewCallback] = None


# receives the current estimate at the end of each level: the fixed->moving displacement on the fixed grid
PreviewCallback = Callable[[np.ndarray], None]
LevelBuilder = Callable[[float], tuple[Callable[[], torch.Tensor], list[ParameterGroup]]]
Estimate = Callable[[], tuple[AffineTransform, Optional[DenseTransform]]]


def _run_levels(run: Run, stage: str, plan: list[tuple[float, int]], build: LevelBuilder, setting: str,
                similarity: Similarity, estimate: Estimate) -> None:
    """The level loop every stage shares: build the level's step and optimiser, optimise, record, and show
    the `estimate` (affine, field) to `run.preview` if there is one.

    `setting` is the learning rate to name if the optimisation diverges."""
    for index, (factor, iterations) in enumerate(plan):
        start = time.perf_counter()
        step, groups = build(factor)

        def report(done: int, loss: float, index=index, iterations=iterations) -> None:
            if done % 5 == 0 or done == iterations:
                fraction = (index + done / iterations) / len(plan)
                run.progress(Progress(stage, fraction, f"level {index + 1}/{len(plan)} step {done} loss {loss:.5f}"))

        outcome = _optimise(step, groups, iterations, run.config, report, setting, not similarity.stochastic)
        spacing = float(np.mean(run.fixed.level(factor)[2].spacing))
        run.history.append({"stage": stage, "level": factor, "spacing_mm": round(spacing, 3), **outcome,
                            "seconds": round(time.perf_counter() - start, 3)})
        if run.preview is not None:
            run.preview(displacement_on(run.fixed.grid, *estimate(), run.device))
    run.progress(Progress(stage, 1.0, "done"))


def _seeded(similarity: Similarity, seed: int, device: torch.device) -> Similarity:
    similarity.reseed(seed)
    return similarity.to(device)


def affine_stage(run: Run) -> AffineTransform:
    """The initial alignment, then (if config.affine) the affine optimised level by level."""
    config = run.config
    affine = _initial_affine(run.fixed, run.moving, config)
    if config.affine:
        similarity = _seeded(_affine_similarity(config), config.seed, run.device)

        def build(factor: float):
            f_image, f_mask, f_grid = run.fixed.level(factor)
            m_image, m_mask, m_grid = run.moving.level(factor)
            similarity.prepare(f_image, m_image, f_grid, m_grid)
            points = physical_points(f_grid, run.device)

            def step() -> torch.Tensor:
                sampling = to_sampling_grid(affine(points), m_grid)
                return similarity.mapped_loss(f_image, m_image, sampling, mask_at(f_mask, m_mask, sampling))

            return step, [([affine.translation], config.affine_lr * 100), ([affine.linear], config.affine_lr)]

        _run_levels(run, "affine", level_plan(run.fixed.grid, config.affine_levels, config.affine_iterations,
                                              config.level_spacing_mm), build, "affine_lr", similarity,
                    lambda: (affine, None))
    affine.requires_grad_(False)
    return affine


class DeformableLevel:
    """One level of the deformable stage: its images, field, similarity and the loss of one step.

    The parts are attributes so that benchmarks/profile_registration.py can time each of them.
    """

    def __init__(self, run: Run, factor: float, affine: AffineTransform, similarity: Similarity,
                 coarser: Optional[DenseTransform]):
        config = run.config
        self.fixed, self.fixed_mask, self.grid = run.fixed.level(factor)
        self.moving, self.moving_mask, self.moving_grid = run.moving.level(factor)
        control = self.grid.scaled(config.control_spacing) if config.control_spacing > 1 else self.grid
        self.dense = DenseTransform(self.grid, control, config.transform, smoothing=config.field_smoothing,
                                    integration_steps=config.integration_steps).to(run.device)
        if coarser is not None:
            self.dense.load_coarser(coarser)
        self.similarity = similarity
        similarity.prepare(self.fixed, self.moving, self.grid, self.moving_grid)
        self.base, self.to_normalised = _affine_sampling(affine, self.grid, self.moving_grid, run.device)
        self.mask = self.fixed_mask if self.moving_mask is None else self._pulled_mask()
        self.regularizer = REGULARIZERS[config.regularizer]
        self.weight = config.regularization * (1.0 if run.moving.mask is None else config.masked_regularization_factor)
        self.lr = config.lr * float(np.mean(self.grid.spacing))

    def _pulled_mask(self) -> Optional[torch.Tensor]:
        """Where the similarity is measured at this level: the moving mask pulled through the transform the
        level starts from, kept for the level: pulled anew at every step, the measured region moved under
        the optimiser and the pairs with skull registered worse (README, measured results)."""
        with torch.no_grad():
            start = self.sampling(self.dense.fields(self.to_normalised)[1])
        return mask_at(self.fixed_mask, self.moving_mask, start)

    def sampling(self, normalised: torch.Tensor) -> torch.Tensor:
        """Sampling grid of T = A(x + u), from u already in normalised moving units (`to_normalised`)."""
        return self.base + channels_last(normalised)

    def loss(self) -> torch.Tensor:
        field, normalised = self.dense.fields(self.to_normalised)
        sampling = self.sampling(normalised)
        loss = self.similarity.mapped_loss(self.fixed, self.moving, sampling, self.mask)
        return loss + self.weight * self.regularizer(field, self.dense.control_grid)


def deformable_stage(run: Run, affine: AffineTransform) -> Optional[DenseTransform]:
    """The dense field, optimised coarse to fine, each level starting from the coarser one's field."""
    config = run.config
    if config.transform == "none":
        return None
    similarity = _seeded(build_similarity(config.similarity, **config.similarity_params), config.seed, run.device)
    current: list[DeformableLevel] = []  # only the level being optimised is kept (its grids are large)

    def build(factor: float):
        current[:] = [DeformableLevel(run, factor, affine, similarity, current[0].dense if current else None)]
        return current[0].loss, [(list(current[0].dense.parameters()), current[0].lr)]

    _run_levels(run, "deformable", level_plan(run.fixed.grid, config.levels, config.iterations,
                                              config.level_spacing_mm), build, "lr", similarity,
                lambda: (affine, current[0].dense))
    return current[0].dense if current else None


def _mapped_points(grid: Grid, affine: AffineTransform, dense: Optional[DenseTransform],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Physical points of every voxel of `grid` and where T = A(x + u) maps them, [1, *shape, D] each."""
    points = physical_points(grid, device)
    deformation = torch.zeros_like(points) if dense is None else \
        channels_last(resize_field(dense.displacement(), grid.shape))
    return points, affine(points + deformation)


def displacement_on(grid: Grid, affine: AffineTransform, dense: Optional[DenseTransform],
                    device: torch.device) -> np.ndarray:
    """The fixed->moving displacement T(x) - x on `grid`, [*shape, D] float32 in LPS mm."""
    with torch.no_grad():
        points, mapped = _mapped_points(grid, affine, dense, device)
        return (mapped - points)[0].cpu().numpy().astype(np.float32)


def _result(run: Run, fixed: Image, moving: Image, affine: AffineTransform, dense: Optional[DenseTransform],
            inverse: bool, start: float, decision: MaskDecision) -> Result:
    """The fixed->moving displacement on the full fixed grid, the warped moving image and the inverse."""
    device = run.device
    with torch.no_grad():
        points, mapped = _mapped_points(fixed.grid, affine, dense, device)
        displacement = (mapped - points)[0].cpu().numpy().astype(np.float32)
        sampling = to_sampling_grid(mapped, moving.grid)
        if not bool((sampling.abs() <= 1.0).all(-1).any()):
            raise RegistrationError(f"the registration mapped every voxel of fixed {fixed.name} outside moving "
                                    f"{moving.name}: the images do not overlap after the affine stage (fixed "
                                    f"spans {_span(fixed.grid)}, moving {_span(moving.grid)}). Check that they "
                                    "show the same anatomy, try --set init=centers, or fix the origins.")
        warped = sample(_tensor(moving.array, device), sampling, padding_mode="zeros")
        inverse_field = _inverse_on_moving_grid(affine, dense, fixed.grid, moving.grid, device) if inverse else None
    result = Result(fixed.grid, moving.grid, displacement, affine=affine.matrix()[0],
                    warped=Image(warped[0, 0].cpu().numpy(), fixed.grid, None), inverse=inverse_field,
                    seconds=time.perf_counter() - start, config=run.config.to_dict(), history=run.history,
                    foreground=decision.reasons)
    result.warnings = run.warnings + quality_warnings(result, fixed, moving, run.config.similarity,
                                                      (decision.fixed, decision.moving))
    return result


def physical_box(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest LPS coordinates of a grid's voxels (their outer edges), per axis."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in grid.size], indexing="ij")).reshape(grid.dim, -1).T
    matrix = grid.index_to_physical()
    points = corners @ matrix[:grid.dim, :grid.dim].T + matrix[:grid.dim, grid.dim]
    return points.min(0), points.max(0)


def overlap(fixed: Grid, moving: Grid) -> bool:
    """Whether the two grids' boxes in physical space share any point."""
    (f_low, f_high), (m_low, m_high) = physical_box(fixed), physical_box(moving)
    return bool(np.all(f_low < m_high) and np.all(m_low < f_high))


def _span(grid: Grid) -> str:
    low, high = physical_box(grid)
    return " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(low, high)) + " mm"


def overlap_warnings(fixed: Image, moving: Image, config: RegistrationConfig) -> list[str]:
    """RegistrationError when the images lie apart in physical space and init=none keeps them apart; a
    warning (for the report) when the initial alignment has to bring them together."""
    if overlap(fixed.grid, moving.grid):
        return []
    where = f"fixed {fixed.name} spans {_span(fixed.grid)}, moving {moving.name} spans {_span(moving.grid)}"
    if config.init == "none":
        raise RegistrationError(f"the images do not overlap in physical space ({where}) and init=none keeps them "
                                "apart. Use --set init=moments (the default) or init=centers, or fix the origin "
                                "in the image headers.")
    return [f"the images do not overlap in physical space as given ({where}); they were first aligned by their "
            f"{'centres of mass' if config.init == 'moments' else 'centres'}: check that they show the same anatomy."]


def _check_inputs(fixed: Image, moving: Image, fixed_mask: Optional[Image], moving_mask: Optional[Image],
                  config: RegistrationConfig) -> tuple[MaskDecision, RegistrationConfig]:
    """Checked masks, the foreground masks decided, and the config with both decisions (what the report shows)."""
    if fixed.dim != moving.dim:
        raise RegistrationError(f"fixed {fixed.name} is {fixed.dim}D but moving {moving.name} is {moving.dim}D; "
                                "register images of the same dimension.")
    fixed_mask = None if fixed_mask is None else check_mask(fixed_mask, fixed, "fixed mask")
    moving_mask = None if moving_mask is None else check_mask(moving_mask, moving, "moving mask")
    decision = decide_masks(fixed, moving, fixed_mask, moving_mask, config.fixed_foreground_mask,
                            config.moving_foreground_mask)
    config = dataclasses.replace(config, fixed_foreground_mask=decision.fixed_foreground_mask,
                                 moving_foreground_mask=decision.moving_foreground_mask)
    return decision, config


def register(fixed: Image, moving: Image, config: Optional[RegistrationConfig] = None,
             fixed_mask: Optional[Image] = None, moving_mask: Optional[Image] = None,
             progress: ProgressCallback = silent, inverse: bool = False,
             preview: Optional[PreviewCallback] = None) -> Result:
    """Registers `moving` onto `fixed`; returns the fixed->moving mapping on the fixed grid.

    Images may lie on different grids and orientations: everything happens in physical space.
    The progress callback may raise `Cancelled` to stop the run. `preview`, if given, receives the current
    fixed->moving displacement on the fixed grid at the end of every level (a live view of the run).
    """
    config = _checked_arguments(fixed, moving, config, fixed_mask, moving_mask)
    start = time.perf_counter()
    decision, config = _check_inputs(fixed, moving, fixed_mask, moving_mask, config)
    warnings = overlap_warnings(fixed, moving, config)
    device = resolve_device(config.device)
    with torch_threads(config.threads or (1 if fixed.dim == 2 else None)):
        run = Run(prepare(fixed, decision.fixed_mask, config, device),
                  prepare(moving, decision.moving_mask, config, device), config, device, progress,
                  warnings=warnings, preview=preview)
        affine = affine_stage(run)
        dense = deformable_stage(run, affine)
        return _result(run, fixed, moving, affine, dense, inverse, start, decision)


def _checked_arguments(fixed: Image, moving: Image, config: Optional[RegistrationConfig],
                       fixed_mask: Optional[Image], moving_mask: Optional[Image]) -> RegistrationConfig:
    """The API's entrance: TypeError naming a wrong argument; in-memory images get the file checks
    (finite voxels, usable grid); the settings are validated again (attributes may have been changed)."""
    given = {"fixed": fixed, "moving": moving, "fixed_mask": fixed_mask, "moving_mask": moving_mask}
    for name, value in given.items():
        if value is not None and not isinstance(value, Image):
            raise TypeError(f"register(): {name} must be an Image (core.image.Image or io.images.read_image(path)), "
                            f"not {type(value).__name__}.")
    if config is not None and not isinstance(config, RegistrationConfig):
        raise TypeError(f"register(): config must be a RegistrationConfig (RegistrationOptions(...).config()), not "
                        f"{type(config).__name__}.")
    for name, image in (("fixed image", fixed), ("moving image", moving)):
        check_grid(image.grid, f"{name} {image.name}")
        check_image(image, name)
    return RegistrationConfig(**(config or RegistrationConfig()).to_dict())


def _inverse_on_moving_grid(affine: AffineTransform, dense: Optional[DenseTransform], fixed_grid: Grid,
                            moving_grid: Grid, device: torch.device) -> np.ndarray:
    """Moving->fixed displacement on the moving grid: y -> (id + u)^-1 (A^-1 y)."""
    matrix = torch.as_tensor(np.linalg.inv(affine.matrix()[0]), dtype=torch.float32, device=device)
    dim = fixed_grid.dim
    points = physical_points(moving_grid, device)
    pulled = points @ matrix[:dim, :dim].T + matrix[:dim, dim]
    if dense is not None:
        inverse = resize_field(dense.inverse_displacement(), fixed_grid.shape)
        pulled = pulled + sample_field(inverse, fixed_grid, pulled)
    return (pulled - points)[0].cpu().numpy().astype(np.float32)
