"""Adam with a cosine learning-rate decay, for the few parameter tensors of one registration level.

The update is torch.optim.Adam's with its defaults (betas 0.9/0.999, eps 1e-8, no weight decay) under
CosineAnnealingLR(T_max=iterations, eta_min=0); it is written out because the first use of torch.optim
imports torch._dynamo, a large part of a short `diffreg register`'s time (README, measured results).
Testing/test_optimizer.py checks it step by step against torch.optim.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

ParameterGroup = tuple[Sequence[torch.Tensor], float]  # parameters, learning rate


class CosineAdam:
    """Adam whose learning rates decay from their start values to 0 over `iterations` steps (cosine)."""

    def __init__(self, groups: Sequence[ParameterGroup], iterations: int, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.groups = [(list(params), float(lr)) for params, lr in groups]
        self.iterations, self.betas, self.eps = max(int(iterations), 1), betas, eps
        self.steps = 0
        self.moments = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for params, _ in self.groups for p in params}

    @property
    def parameters(self) -> list[torch.Tensor]:
        return [p for params, _ in self.groups for p in params]

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step at the schedule's current learning rate, then the schedule advances."""
        decay = 0.5 * (1.0 + math.cos(math.pi * self.steps / self.iterations))
        self.steps += 1
        beta1, beta2 = self.betas
        correction1, correction2 = 1.0 - beta1 ** self.steps, math.sqrt(1.0 - beta2 ** self.steps)
        for params, lr in self.groups:
            for p in params:
                if p.grad is None:
                    continue
                mean, square = self.moments[id(p)]
                mean.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                square.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                denominator = (square.sqrt() / correction2).add_(self.eps)
                p.addcdiv_(mean, denominator, value=-lr * decay / correction1)
