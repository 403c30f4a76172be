"""The coarse-to-fine registration network: one small UNet per stage, displacements composed.

Working space. The network sees both images resampled onto its own grid: the fixed image's field of
view sampled at `NetworkSpec.size` voxels (default 128x128 in 2D, 96x112x96 (x, y, z) in 3D), the moving
image pulled onto that grid through physical space. Inside, every displacement is in *normalised*
coordinates of that grid ([-1, 1] corner to corner, grid_sample's align_corners=True convention, last
axis (x, y, z)), so the same weights apply to any stage and any field of view. `to_millimetres` turns
a normalised field into LPS mm for a given physical grid; the engine's regulariser then works in mm.

Stages run at 1/8, 1/4, 1/2 and full resolution (configurable). Stage s sees the fixed image and the
moving image warped by the map of the stages before it, predicts a displacement (or a stationary
velocity, integrated by scaling and squaring), and the maps compose: phi_s = phi_{s-1} o (id + u_s).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RegistrationError
from ..geometry.spatial import gaussian_smooth, sample
from ..geometry.transforms import channels_first, channels_last, integrate_velocity, resize_field, sample_field
from ..core.image import Grid

DEFAULT_SIZE = {2: (128, 128), 3: (96, 112, 96)}


MAX_WIDTH = 1024  # largest grid side, stage factor or channel count a checkpoint may describe


@dataclass
class NetworkSpec:
    """Architecture of a registration network; saved in every checkpoint so it can be rebuilt."""

    dim: int = 2
    size: tuple[int, ...] = ()  # network grid, voxels in (x, y, z) order; () -> DEFAULT_SIZE[dim]
    stages: tuple[int, ...] = (8, 4, 2, 1)  # shrink factor of each stage, coarse to fine
    channels: tuple[int, ...] = (16, 32, 32, 32)  # UNet encoder widths; depth shrinks on small stages
    output: str = "displacement"  # displacement | velocity
    integration_steps: int = 6

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise RegistrationError(f"network: dim must be 2 or 3, not {self.dim}.")
        self.size = tuple(int(v) for v in (self.size or DEFAULT_SIZE[self.dim]))
        self.stages = tuple(int(v) for v in self.stages)
        self.channels = tuple(int(v) for v in self.channels)
        if len(self.size) != self.dim:
            raise RegistrationError(f"network: grid size {self.size} has {len(self.size)} values but dim is "
                                    f"{self.dim}; give one size per axis (e.g. --grid 128,128).")
        if self.output not in ("displacement", "velocity"):
            raise RegistrationError(f"network: output must be 'displacement' or 'velocity', not '{self.output}'.")
        if not self.stages or any(s < 1 for s in self.stages) or list(self.stages) != sorted(self.stages, reverse=True):
            raise RegistrationError(f"network: stages {self.stages} must be shrink factors >= 1, coarse to fine "
                                    "(e.g. 8,4,2,1).")
        if min(self.size) // self.stages[0] < 4:
            raise RegistrationError(f"network: the coarsest stage (1/{self.stages[0]}) of a {self.size} grid has "
                                    "fewer than 4 voxels per side; use fewer stages or a larger grid.")
        if not self.channels or min(self.channels) < 1 or max(self.channels) > MAX_WIDTH:
            raise RegistrationError(f"network: channels {self.channels} must be widths from 1 to {MAX_WIDTH}.")
        if max(self.size) > MAX_WIDTH or max(self.stages) > MAX_WIDTH or not 0 <= int(self.integration_steps) <= 30:
            raise RegistrationError(f"network: grid {self.size}, stages {self.stages} or integration steps "
                                    f"{self.integration_steps} out of range (sizes and stages up to {MAX_WIDTH}, "
                                    "integration steps 0-30).")

    @property
    def shape(self) -> tuple[int, ...]:
        """Network grid in array order ((z,) y, x)."""
        return tuple(reversed(self.size))

    def stage_shape(self, factor: int) -> tuple[int, ...]:
        return tuple(max(int(round(n / factor)), 4) for n in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "NetworkSpec":
        return cls(**values)


def network_grid(fixed_grid: Grid, size: tuple[int, ...]) -> Grid:
    """The fixed image's field of view (corner voxel centres kept) sampled at `size` voxels (x, y, z)."""
    spacing = tuple(sp * (n - 1) / (m - 1) for sp, n, m in zip(fixed_grid.spacing, fixed_grid.size, size))
    return Grid(tuple(int(m) for m in size), spacing, fixed_grid.origin, fixed_grid.direction)


def normalised_grid(shape: tuple[int, ...]) -> Grid:
    """A grid whose physical points are grid_sample's normalised coordinates ([-1, 1], x first)."""
    size = tuple(reversed(shape))
    dim = len(size)
    return Grid(size, tuple(2.0 / (n - 1) for n in size), (-1.0,) * dim, tuple(np.eye(dim).ravel()))


def normalised_to_mm(grid: Grid) -> np.ndarray:
    """D x D matrix taking a normalised displacement (x, y, z) to LPS mm on `grid`."""
    half_extent = np.asarray(grid.spacing) * (np.asarray(grid.size) - 1) / 2
    return grid.direction_matrix @ np.diag(half_extent)


def to_millimetres(field: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Channels-first normalised field [B, D, *spatial] -> mm, with one D x D matrix per sample [B, D, D]."""
    return torch.einsum("bij,bj...->bi...", matrices.to(field.dtype), field)


def identity_points(shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised coordinates of every voxel, [1, *shape, D] (x, y, z last)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).unsqueeze(0)


def warp(image: torch.Tensor, displacement: torch.Tensor, padding_mode: str = "border",
         mode: str = "bilinear") -> torch.Tensor:
    """image(x + u(x)) for a normalised channels-first displacement u on the image's own grid."""
    points = identity_points(tuple(image.shape[2:]), image.device, image.dtype)
    return sample(image, points + channels_last(displacement), mode=mode, padding_mode=padding_mode)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Displacement of x -> y + first(y), y = x + second(x): `first` after `second`, normalised fields."""
    shape = tuple(second.shape[2:])
    grid = normalised_grid(shape)
    points = identity_points(shape, second.device, second.dtype)
    return second + channels_first(sample_field(resize_field(first, shape), grid, points + channels_last(second)))


def downsample(image: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Anti-aliased resize of [B, C, *spatial] to `shape`, corners aligned."""
    factor = max(n / m for n, m in zip(image.shape[2:], shape))
    if factor > 1:
        image = gaussian_smooth(image, 0.5 * factor)
    return F.interpolate(image, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear",
                         align_corners=True)


class _Block(torch.nn.Module):
    """Two 3x3 convolutions with LeakyReLU."""

    def __init__(self, dim: int, inputs: int, outputs: int, stride: int = 1):
        super().__init__()
        conv = (torch.nn.Conv2d, torch.nn.Conv3d)[dim - 2]
        self.layers = torch.nn.Sequential(conv(inputs, outputs, 3, stride, 1), torch.nn.LeakyReLU(0.2),
                                          conv(outputs, outputs, 3, 1, 1), torch.nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UNet(torch.nn.Module):
    """A small UNet: strided-convolution encoder, upsampling decoder with skips, D output channels.

    The last layer starts at zero, so an untrained stage predicts the identity.
    """

    def __init__(self, dim: int, channels: tuple[int, ...], inputs: int = 2):
        super().__init__()
        self.input = _Block(dim, inputs, channels[0])
        self.down = torch.nn.ModuleList(_Block(dim, a, b, stride=2) for a, b in zip(channels[:-1], channels[1:]))
        widths = list(channels)
        self.up = torch.nn.ModuleList(_Block(dim, widths[i + 1] + widths[i], widths[i])
                                      for i in reversed(range(len(widths) - 1)))
        conv = (torch.nn.Conv2d, torch.nn.Conv3d)[dim - 2]
        self.head = conv(channels[0], dim, 3, 1, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.mode = "bilinear" if dim == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.input(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.up:
            skip = skips.pop()
            out = F.interpolate(out, size=skip.shape[2:], mode=self.mode, align_corners=False)
            out = block(torch.cat([out, skip], dim=1))
        return self.head(out)


class RegistrationNetwork(torch.nn.Module):
    """Coarse-to-fine network: forward(fixed, moving) -> normalised fixed->moving displacement.

    Inputs are [B, 1, *spec.shape] in [0, 1] on the network grid; the output is [B, D, *spec.shape].
    """

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        self.unets = torch.nn.ModuleList()
        for factor in spec.stages:
            smallest = min(spec.stage_shape(factor))
            depth = max(1, min(len(spec.channels), int(math.log2(smallest / 4)) + 1))
            self.unets.append(UNet(spec.dim, spec.channels[:depth]))

    def stage_field(self, index: int, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Displacement predicted by stage `index` from the fixed and the currently warped image."""
        out = self.unets[index](torch.cat([fixed, warped], dim=1))
        if self.spec.output == "velocity":
            out = integrate_velocity(out, normalised_grid(tuple(out.shape[2:])), self.spec.integration_steps)
        return out

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        if tuple(fixed.shape[2:]) != self.spec.shape or fixed.shape != moving.shape:
            raise RegistrationError(f"network: inputs must be [B, 1, {self.spec.shape}], got {tuple(fixed.shape)} "
                                    f"and {tuple(moving.shape)}.")
        total = None
        for index, factor in enumerate(self.spec.stages):
            shape = self.spec.stage_shape(factor)
            fixed_s, moving_s = downsample(fixed, shape), downsample(moving, shape)
            warped = moving_s if total is None else warp(moving_s, resize_field(total, shape))
            step = self.stage_field(index, fixed_s, warped)
            total = step if total is None else compose(total, step)
        return resize_field(total, self.spec.shape)


def inverse_consistency(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """GradICON penalty: mean squared Frobenius distance of the Jacobian of phi_AB o phi_BA to I.

    Both fields are normalised channels-first displacements on the same grid; the Jacobian of the
    composition's displacement is taken by forward differences in normalised units.
    """
    composed = compose(forward, backward)
    shape = composed.shape[2:]
    total = composed.new_zeros(())
    for axis, n in enumerate(shape):
        step = 2.0 / (n - 1)
        total = total + (torch.diff(composed, dim=2 + axis) / step).pow(2).mean()
    return total
