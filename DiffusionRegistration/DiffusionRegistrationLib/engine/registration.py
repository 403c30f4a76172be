"""Instance optimisation: `register(fixed, moving, config) -> Result`.

Affine first (moments or centres, then multi-resolution Adam), then a dense displacement or
stationary velocity field, coarse to fine. The mapping is T(x) = A(x + u(x)) from fixed to moving
physical space; every similarity sees the moving image through the sampling grid of T.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .config import RegistrationConfig
from ..errors import RegistrationError
from ..io.images import Grid, Image, check_grid, check_image, check_mask, normalize
from ..progress import Progress, ProgressCallback, silent
from .quality import quality_warnings
from .result import Result
from ..similarity import build_similarity
from ..similarity.base import Similarity
from ..geometry.spatial import gaussian_smooth, physical_points, resample_to, sample, to_sampling_grid
from ..geometry.transforms import REGULARIZERS, AffineTransform, DenseTransform, channels_last, \
    resize_field, sample_field


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RegistrationError(f"device '{name}' was requested but no CUDA GPU is available; use --device cpu.")
    return device


@dataclass
class _Pyramid:
    """An image and optional mask as tensors, with their smoothed and subsampled levels (cached)."""

    image: torch.Tensor
    mask: Optional[torch.Tensor]
    grid: Grid

    def __post_init__(self) -> None:
        self._levels: dict[float, tuple[torch.Tensor, Optional[torch.Tensor], Grid]] = {}

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


def _center_of_mass(image: torch.Tensor, grid: Grid) -> np.ndarray:
    points = physical_points(grid, image.device).reshape(-1, grid.dim)
    weights = image.reshape(-1, 1)
    return ((points * weights).sum(0) / weights.sum().clamp(min=1e-12)).double().cpu().numpy()


def _initial_affine(fixed: _Pyramid, moving: _Pyramid, config: RegistrationConfig) -> AffineTransform:
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


def _mask_at(fixed_mask: Optional[torch.Tensor], moving_mask: Optional[torch.Tensor],
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


def _optimise(step: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, iterations: int,
              config: RegistrationConfig, report: Callable[[int, float], None], setting: str) -> dict:
    """Adam steps with a cosine schedule until `iterations` or convergence. Non-finite losses or parameters
    stop it before they reach grid_sample (whose backward crashes on them), naming `setting` to lower."""
    convergence = _Convergence(config.tolerance, config.patience)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations, eta_min=0.0)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    loss_value, start_loss, done = float("nan"), None, 0
    for done in range(1, iterations + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = step()
        loss_value = float(loss.detach())
        if not np.isfinite(loss_value):
            raise _diverged(setting, "the loss is not finite")
        start_loss = loss_value if start_loss is None else start_loss
        loss.backward()
        optimizer.step()
        schedule.step()
        if not all(bool(torch.isfinite(p).all()) for p in parameters):
            raise _diverged(setting, "the transform's parameters are not finite")
        report(done, loss_value)
        if convergence.done(loss_value):
            break
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


def _usable_levels(grid: Grid, levels: tuple[float, ...], iterations: tuple[int, ...]) -> list[tuple[float, int]]:
    """The (factor, iterations) pairs whose level keeps at least MIN_LEVEL_VOXELS along every axis.

    Tiny levels of small images mislead the optimiser; the finest level is always kept.
    """
    kept = [(f, n) for f, n in zip(levels, iterations) if min(grid.size) / f >= MIN_LEVEL_VOXELS]
    return kept or [(min(levels), iterations[levels.index(min(levels))])]


def _affine_similarity(config: RegistrationConfig) -> Similarity:
    if config.affine_similarity is not None:
        return build_similarity(config.affine_similarity, **config.affine_similarity_params)
    if config.similarity == "diffusion":
        return build_similarity("mi")
    return build_similarity(config.similarity, **config.similarity_params)


def register(fixed: Image, moving: Image, config: Optional[RegistrationConfig] = None,
             fixed_mask: Optional[Image] = None, moving_mask: Optional[Image] = None,
             progress: ProgressCallback = silent, inverse: bool = False) -> Result:
    """Registers `moving` onto `fixed`; returns the fixed->moving mapping on the fixed grid.

    Images may lie on different grids and orientations: everything happens in physical space.
    The progress callback may raise `Cancelled` to stop the run.
    """
    config = _checked_arguments(fixed, moving, config, fixed_mask, moving_mask)
    start = time.perf_counter()
    if fixed.dim != moving.dim:
        raise RegistrationError(f"fixed {fixed.name} is {fixed.dim}D but moving {moving.name} is {moving.dim}D; "
                                "register images of the same dimension.")
    fixed_mask = None if fixed_mask is None else check_mask(fixed_mask, fixed, "fixed mask")
    moving_mask = None if moving_mask is None else check_mask(moving_mask, moving, "moving mask")
    if moving_mask is None and config.moving_foreground_mask:
        moving_mask = moving.with_array((moving.array != 0).astype(np.float32))
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    def prepared(image: Image, mask: Optional[Image]) -> _Pyramid:
        scaled = normalize(image, *config.percentiles) if config.normalize else image
        return _Pyramid(_tensor(scaled.array, device), None if mask is None else
                        _tensor((mask.array > 0).astype(np.float32), device), image.grid)

    fixed_pyramid, moving_pyramid = prepared(fixed, fixed_mask), prepared(moving, moving_mask)
    affine = _initial_affine(fixed_pyramid, moving_pyramid, config)
    history: list[dict] = []

    def level_reporter(stage: str, index: int, count: int, iterations: int):
        def report(step: int, loss: float) -> None:
            if step % 5 == 0 or step == iterations:
                fraction = (index + step / iterations) / count
                progress(Progress(stage, fraction, f"level {index + 1}/{count} step {step} loss {loss:.5f}"))
        return report

    if config.affine:
        similarity = _affine_similarity(config).to(device)
        plan = _usable_levels(fixed.grid, config.affine_levels, config.affine_iterations)
        for index, (factor, iterations) in enumerate(plan):
            f_image, f_mask, f_grid = fixed_pyramid.level(factor)
            m_image, m_mask, m_grid = moving_pyramid.level(factor)
            similarity.prepare(f_image, m_image, f_grid, m_grid)
            points = physical_points(f_grid, device)

            def affine_step() -> torch.Tensor:
                sampling = to_sampling_grid(affine(points), m_grid)
                return similarity.mapped_loss(f_image, m_image, sampling, _mask_at(f_mask, m_mask, sampling))

            optimizer = torch.optim.Adam([{"params": [affine.translation], "lr": config.affine_lr * 100},
                                          {"params": [affine.linear], "lr": config.affine_lr}])
            outcome = _optimise(affine_step, optimizer, iterations, config,
                                level_reporter("affine", index, len(plan), iterations), "affine_lr")
            history.append({"stage": "affine", "level": factor, **outcome})
        progress(Progress("affine", 1.0, "done"))
    affine.requires_grad_(False)

    dense: Optional[DenseTransform] = None
    if config.transform != "none":
        plan = _usable_levels(fixed.grid, config.levels, config.iterations)
        similarity = build_similarity(config.similarity, **config.similarity_params).to(device)
        regularizer = REGULARIZERS[config.regularizer]
        for index, (factor, iterations) in enumerate(plan):
            f_image, f_mask, f_grid = fixed_pyramid.level(factor)
            m_image, m_mask, m_grid = moving_pyramid.level(factor)
            control = f_grid.scaled(config.control_spacing) if config.control_spacing > 1 else f_grid
            level = DenseTransform(f_grid, control, config.transform, smoothing=config.field_smoothing,
                                   integration_steps=config.integration_steps).to(device)
            if dense is not None:
                level.load_coarser(dense)
            dense = level
            similarity.prepare(f_image, m_image, f_grid, m_grid)
            base, to_normalised = _affine_sampling(affine, f_grid, m_grid, device)

            def dense_step() -> torch.Tensor:
                field, displacement = dense.fields()
                sampling = base + channels_last(displacement) @ to_normalised
                loss = similarity.mapped_loss(f_image, m_image, sampling, _mask_at(f_mask, m_mask, sampling))
                return loss + config.regularization * regularizer(field, f_grid)

            optimizer = torch.optim.Adam(dense.parameters(), lr=config.lr * float(np.mean(f_grid.spacing)))
            outcome = _optimise(dense_step, optimizer, iterations, config,
                                level_reporter("deformable", index, len(plan), iterations), "lr")
            history.append({"stage": "deformable", "level": factor, **outcome})
        progress(Progress("deformable", 1.0, "done"))

    with torch.no_grad():
        points = physical_points(fixed.grid, device)
        if dense is None:
            deformation = torch.zeros_like(points)
        else:
            deformation = channels_last(resize_field(dense.displacement(), fixed.grid.shape))
        mapped = affine(points + deformation)
        displacement = (mapped - points)[0].cpu().numpy().astype(np.float32)
        warped = sample(_tensor(moving.array, device), to_sampling_grid(mapped, moving.grid), padding_mode="zeros")
        inverse_field = None
        if inverse:
            inverse_field = _inverse_on_moving_grid(affine, dense, fixed.grid, moving.grid, device)
    result = Result(fixed.grid, moving.grid, displacement, affine=affine.matrix()[0],
                    warped=Image(warped[0, 0].cpu().numpy(), fixed.grid, None), inverse=inverse_field,
                    seconds=time.perf_counter() - start, config=config.to_dict(), history=history)
    result.warnings = quality_warnings(result, fixed, moving, config.similarity)
    return result


def _checked_arguments(fixed: Image, moving: Image, config: Optional[RegistrationConfig],
                       fixed_mask: Optional[Image], moving_mask: Optional[Image]) -> RegistrationConfig:
    """The API's entrance: TypeError naming a wrong argument; in-memory images get the file checks
    (finite voxels, usable grid); the settings are validated again (attributes may have been changed)."""
    given = {"fixed": fixed, "moving": moving, "fixed_mask": fixed_mask, "moving_mask": moving_mask}
    for name, value in given.items():
        if value is not None and not isinstance(value, Image):
            raise TypeError(f"register(): {name} must be an Image (io.images.Image or read_image(path)), "
                            f"not {type(value).__name__}.")
    if config is not None and not isinstance(config, RegistrationConfig):
        raise TypeError(f"register(): config must be a RegistrationConfig (make_config(...)), not "
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
