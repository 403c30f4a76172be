"""Transformation models in physical space, their composition, inversion and regularisers.

Every model maps fixed physical points to moving physical points (the resampling direction), with
points as tensors [B, *spatial, D] in LPS mm, last axis (x, y, z). Dense fields are stored channels-
first, [B, D, *spatial], on a Grid that covers the fixed image.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..core.image import Grid
from .spatial import gaussian_smooth, linear_resize_matrix, physical_points, sample, separable_apply, to_sampling_grid


def channels_last(field: torch.Tensor) -> torch.Tensor:
    """[B, D, *spatial] -> [B, *spatial, D]."""
    return field.movedim(1, -1)


def channels_first(field: torch.Tensor) -> torch.Tensor:
    """[B, *spatial, D] -> [B, D, *spatial]."""
    return field.movedim(-1, 1)


def sample_field(field: torch.Tensor, field_grid: Grid, points: torch.Tensor) -> torch.Tensor:
    """Values of a channels-first field [B, D, *spatial] at physical points [B, *out, D] -> [B, *out, D]."""
    return channels_last(sample(field, to_sampling_grid(points, field_grid), padding_mode="border"))


def resize_field(field: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Resamples a channels-first field to another grid over the same physical extent (corners aligned).

    The numbers of F.interpolate's (bi/tri)linear mode with align_corners=True, as one small matrix
    product per axis: about three times faster on one CPU thread, forward and backward together.
    """
    if tuple(field.shape[2:]) == tuple(shape):
        return field
    return separable_apply(field, [None if n_in == n_out else
                                   linear_resize_matrix(n_in, n_out, field.device, field.dtype)
                                   for n_in, n_out in zip(field.shape[2:], shape)])


def integrate_velocity(velocity: torch.Tensor, grid: Grid, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of exp(v) for a stationary velocity field [B, D, *spatial]."""
    points = physical_points(grid, velocity.device, velocity.dtype)
    displacement = velocity / (2 ** steps)
    for _ in range(steps):
        displacement = displacement + channels_first(
            sample_field(displacement, grid, points + channels_last(displacement)))
    return displacement


def invert_displacement(displacement: torch.Tensor, grid: Grid, iterations: int = 30) -> torch.Tensor:
    """Inverse of x -> x + u(x) on the same grid by fixed-point iteration v(y) = -u(y + v(y))."""
    points = physical_points(grid, displacement.device, displacement.dtype)
    inverse = -displacement
    for _ in range(iterations):
        inverse = -channels_first(sample_field(displacement, grid, points + channels_last(inverse)))
    return inverse


class AffineTransform(torch.nn.Module):
    """y = (I + M)(x - c) + c + t around a fixed centre c; parameters M [B, D, D] and t [B, D] in mm."""

    def __init__(self, dim: int, center: np.ndarray, translation: Optional[np.ndarray] = None,
                 batch: int = 1, linear: bool = True):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(np.asarray(center), dtype=torch.float32).reshape(1, dim))
        start = torch.zeros(batch, dim) if translation is None else \
            torch.as_tensor(np.asarray(translation), dtype=torch.float32).reshape(1, dim).repeat(batch, 1)
        self.translation = torch.nn.Parameter(start)
        self.linear = torch.nn.Parameter(torch.zeros(batch, dim, dim), requires_grad=linear)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        batch, dim = points.shape[0], points.shape[-1]
        matrix = torch.eye(dim, device=points.device, dtype=points.dtype) + self.linear.to(points.dtype)
        flat = (points.reshape(batch, -1, dim) - self.center) @ matrix.transpose(1, 2)
        return (flat + self.center + self.translation[:, None]).reshape(points.shape)

    def matrix(self) -> np.ndarray:
        """Homogeneous [B, D+1, D+1] float64 matrices of the mapping."""
        linear = np.eye(self.center.shape[1]) + self.linear.detach().double().cpu().numpy()
        center = self.center.detach().double().cpu().numpy()[0]
        offset = center + self.translation.detach().double().cpu().numpy() - linear @ center
        out = np.tile(np.eye(self.center.shape[1] + 1), (linear.shape[0], 1, 1))
        out[:, :-1, :-1], out[:, :-1, -1] = linear, offset
        return out


class DenseTransform(torch.nn.Module):
    """A dense displacement (or stationary velocity) field parameterised on a control grid.

    The parameter lives on `control_grid` (the level grid, or a coarser one for implicit smoothness),
    is optionally Gaussian-smoothed (sigma given in `grid` voxels) and linearly upsampled onto `grid`; with
    kind == "svf" it is a velocity integrated by scaling and squaring (diffeomorphic by construction).
    """

    def __init__(self, grid: Grid, control_grid: Grid, kind: str = "displacement", batch: int = 1,
                 smoothing: float = 0.0, integration_steps: int = 7):
        super().__init__()
        if kind not in ("displacement", "svf"):
            raise ValueError(f"unknown dense transform '{kind}'")
        self.grid, self.control_grid, self.kind = grid, control_grid, kind
        self.smoothing, self.integration_steps = smoothing, integration_steps
        self.field = torch.nn.Parameter(torch.zeros(batch, grid.dim, *control_grid.shape))

    def _control_field(self) -> torch.Tensor:
        """The parameter on the control grid, smoothed (sigma converted from `grid` voxels)."""
        if self.smoothing <= 0:
            return self.field
        ratio = [n / c for n, c in zip(self.grid.shape, self.control_grid.shape)]
        return gaussian_smooth(self.field, [self.smoothing / r for r in ratio])

    def fields(self, mix: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(smoothed control field, displacement on `grid`) from one smoothing of the parameter.

        The control field is what the regulariser measures (on `control_grid`: the linearly upsampled
        field has the same first derivatives, at a fraction of the voxels). A velocity is integrated on
        the control grid, where it lives, then upsampled: the same smooth map at a fraction of the cost
        of integrating on `grid`. `mix` [D, D] (optional) maps the displacement's components, row vector
        times matrix, before upsampling: linear maps commute with linear interpolation, and the control
        grid has far fewer points.
        """
        control = self._control_field()
        moved = control if self.kind == "displacement" else \
            integrate_velocity(control, self.control_grid, self.integration_steps)
        if mix is not None:
            moved = torch.einsum("bc...,cd->bd...", moved, mix)
        return control, resize_field(moved, self.grid.shape)

    def displacement(self) -> torch.Tensor:
        """The displacement on `grid`, [B, D, *grid.shape]."""
        return self.fields()[1]

    def inverse_displacement(self) -> torch.Tensor:
        if self.kind == "svf":
            return resize_field(integrate_velocity(-self._control_field(), self.control_grid,
                                                   self.integration_steps), self.grid.shape)
        return invert_displacement(self.displacement(), self.grid)

    @torch.no_grad()
    def load_coarser(self, other: "DenseTransform") -> None:
        """Initialises this level's parameter from a coarser level's (same physical extent)."""
        self.field.copy_(resize_field(other.field, self.control_grid.shape))


def _differences(field: torch.Tensor, spacing_zyx: list[float]) -> list[torch.Tensor]:
    dim = field.dim() - 2
    return [torch.diff(field, dim=2 + axis) / spacing_zyx[axis] for axis in range(dim)]


def diffusion_energy(field: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Mean squared first derivative of a channels-first field (mm/mm): the diffusion regulariser."""
    spacing = list(reversed(grid.spacing))
    return sum(d.pow(2).mean() for d in _differences(field, spacing))


def bending_energy(field: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Mean squared second derivatives (pure and mixed, mixed counted twice): thin-plate bending energy."""
    spacing = list(reversed(grid.spacing))
    first = _differences(field, spacing)
    total = field.new_zeros(())
    for i, derivative in enumerate(first):
        for j, second in enumerate(_differences(derivative, spacing)):
            if j >= i:
                total = total + (1 if i == j else 2) * second.pow(2).mean()
    return total


REGULARIZERS = {"diffusion": diffusion_energy, "bending": bending_energy}
