"""The unsupervised training loss: similarity + lambda * regulariser (+ GradICON inverse consistency).

Shared by training and per-pair fine-tuning, so a fine-tuned pair optimises exactly what the network
was trained on. The similarity is any measure of the engine's registry (intensity or diffusion
features); the regulariser is the engine's, evaluated on the displacement in millimetres.
"""
from __future__ import annotations

import torch

from ..errors import RegistrationError
from ..geometry.transforms import REGULARIZERS, channels_last
from ..core.image import Grid
from ..similarity.base import Similarity
from .model import identity_points, inverse_consistency, normalised_grid, to_millimetres


class NetworkLoss:
    """Callable (model, batch) -> (loss, terms). `batch` holds fixed, moving, to_mm and spacing."""

    def __init__(self, similarity: Similarity, regularizer: str = "diffusion", regularization: float = 1.0,
                 inverse_consistency: float = 0.0):
        if regularizer not in REGULARIZERS:
            raise RegistrationError(f"regularizer '{regularizer}' is unknown; choose one of "
                                    f"{', '.join(sorted(REGULARIZERS))}.")
        if regularization < 0 or inverse_consistency < 0:
            raise RegistrationError("regularization and inverse_consistency weights must be >= 0.")
        self.similarity, self.regularizer = similarity, REGULARIZERS[regularizer]
        self.regularization, self.inverse_consistency = regularization, inverse_consistency

    def similarity_loss(self, fixed: torch.Tensor, moving: torch.Tensor, displacement: torch.Tensor,
                        spacing: torch.Tensor) -> torch.Tensor:
        shape = tuple(fixed.shape[2:])
        grid = _mm_grid(shape, spacing[0])
        self.similarity.prepare(fixed, moving, grid, grid)
        sampling = identity_points(shape, fixed.device, fixed.dtype) + channels_last(displacement)
        return self.similarity.mapped_loss(fixed, moving, sampling)

    def regularization_loss(self, displacement: torch.Tensor, to_mm: torch.Tensor,
                            spacing: torch.Tensor) -> torch.Tensor:
        """The engine's regulariser of the mm field, per sample (each has its own voxel size), averaged."""
        field = to_millimetres(displacement, to_mm)
        shape = tuple(field.shape[2:])
        return torch.stack([self.regularizer(field[i:i + 1], _mm_grid(shape, spacing[i]))
                            for i in range(field.shape[0])]).mean()

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        fixed, moving, to_mm, spacing = batch["fixed"], batch["moving"], batch["to_mm"], batch["spacing"]
        if self.inverse_consistency > 0:
            both = model(torch.cat([fixed, moving]), torch.cat([moving, fixed]))
            forward, backward = both.chunk(2)
            similarity = 0.5 * (self.similarity_loss(fixed, moving, forward, spacing)
                                + self.similarity_loss(moving, fixed, backward, spacing))
            regularization = 0.5 * (self.regularization_loss(forward, to_mm, spacing)
                                    + self.regularization_loss(backward, to_mm, spacing))
            consistency = inverse_consistency(forward, backward)
        else:
            forward = model(fixed, moving)
            similarity = self.similarity_loss(fixed, moving, forward, spacing)
            regularization = self.regularization_loss(forward, to_mm, spacing)
            consistency = similarity.new_zeros(())
        loss = similarity + self.regularization * regularization + self.inverse_consistency * consistency
        terms = {"loss": float(loss.detach()), "similarity": float(similarity.detach()),
                 "regularization": float(regularization.detach()),
                 "inverse_consistency": float(consistency.detach())}
        return loss, terms


def _mm_grid(shape: tuple[int, ...], spacing: torch.Tensor) -> Grid:
    """A grid of `shape` with the sample's voxel size (mm); the regulariser only needs the spacing."""
    base = normalised_grid(shape)
    return Grid(base.size, tuple(float(s) for s in spacing), (0.0,) * len(shape), base.direction)
