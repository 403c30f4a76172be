"""The one resolution of a device name (auto, cpu, mps, cuda, cuda:N) into the torch device a run uses. torch
is imported only when a device is asked for, so settings can be validated without it."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

from ..errors import RegistrationError

if TYPE_CHECKING:
    import torch

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def device_problem(name: str) -> Optional[str]:
    """Why the device `name` (a valid name) is not on this machine, or None when it is."""
    if name in ("auto", "cpu"):
        return None
    import torch

    if name == "mps":
        present = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if present else "this machine has no Apple GPU"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(name.partition(":")[2] or 0) < count:
        return None
    return f"this machine has {f'{count} CUDA GPU(s): cuda:0..cuda:{count - 1}' if count else 'no CUDA GPU'}"


def resolve_device(name: str) -> "torch.device":
    """'auto' picks CUDA when present, else the CPU; a device that is not there is an error, not a silent
    fallback."""
    import torch

    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):
        raise RegistrationError(f"device '{name}' is not a device name; use auto, cpu, cuda or cuda:N.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(name)
    if problem:
        raise RegistrationError(f"device '{name}' was requested but {problem}; use --device cpu.")
    return torch.device(name)
