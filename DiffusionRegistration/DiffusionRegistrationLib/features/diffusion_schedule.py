"""The forward (noising) process of a DDPM with guided-diffusion's linear beta schedule."""
from __future__ import annotations

import torch

_CACHE: dict[int, torch.Tensor] = {}


def linear_betas(steps: int = 1000) -> torch.Tensor:
    """Betas from 1e-4 to 0.02 (scaled by 1000 / steps), float64, as guided-diffusion's "linear"."""
    scale = 1000.0 / steps
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)


def alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """Cumulative products of (1 - beta), float64 [steps]."""
    if steps not in _CACHE:
        _CACHE[steps] = torch.cumprod(1.0 - linear_betas(steps), dim=0)
    return _CACHE[steps]


def noise_coefficients(t: int, steps: int = 1000) -> tuple[float, float]:
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), computed in float64."""
    if not 0 <= int(t) < steps:
        raise ValueError(f"timestep {t} is outside 0..{steps - 1}")
    a = alphas_cumprod(steps)[int(t)]
    return float(a.sqrt()), float((1.0 - a).sqrt())


def q_sample(x0: torch.Tensor, t: int, noise: torch.Tensor, steps: int = 1000) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise (coefficients cast to x0's dtype)."""
    signal, sigma = noise_coefficients(t, steps)
    signal_t = torch.tensor(signal, dtype=torch.float64).to(x0.dtype)
    sigma_t = torch.tensor(sigma, dtype=torch.float64).to(x0.dtype)
    return signal_t * x0 + sigma_t * noise.to(x0.dtype)
