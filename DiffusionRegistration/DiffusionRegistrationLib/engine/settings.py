"""Types and allowed ranges of every registration setting, checked once when a RegistrationConfig is made.

Presets, config files, `--set` and the dedicated flags all end in a RegistrationConfig, so one table
catches a wrong type or range from any of them before any work, with the setting's name, the value
given and what is allowed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import RegistrationError


def _refuse(name: str, value: Any, problem: str, allowed: str) -> RegistrationError:
    shown = value if isinstance(value, str) else _json_text(value)
    return RegistrationError(f"setting {name}={shown}: {problem}; allowed: {allowed}.")


def _json_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, dict) else str(value)


@dataclass(frozen=True)
class Number:
    """An int or float in [low, high] (`low_open`: low itself excluded); always finite."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        high = f"{int(self.high)}" if self.kind is int else f"{self.high:g}"
        return f"{what} {low} and <= {high}" + (" (or null)" if self.optional else "")

    def check(self, name: str, value: Any, shown: Any = None) -> Any:
        shown = value if shown is None else shown
        if value is None and self.optional:
            return None
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _refuse(name, shown, "is not a number", self.describe()) from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise _refuse(name, shown, f"is a {type(value).__name__}, not a number", self.describe())
        if not math.isfinite(number):
            raise _refuse(name, shown, "is not finite", self.describe())
        if self.kind is int and number != int(number):
            raise _refuse(name, shown, "is not a whole number", self.describe())
        if number < self.low or (self.low_open and number == self.low) or number > self.high:
            raise _refuse(name, shown, "is out of range", self.describe())
        return self.kind(number)


@dataclass(frozen=True)
class Numbers:
    """A non-empty list of numbers (exactly `length` of them when given), returned as a tuple."""

    item: Number
    length: Optional[int] = None

    def describe(self) -> str:
        count = f"{self.length}" if self.length else "one or more"
        return f"a list of {count} values, each {self.item.describe()}"

    def check(self, name: str, value: Any) -> tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and self.length is None:
            value = [value]
        if not isinstance(value, (list, tuple)) or not value or (self.length and len(value) != self.length):
            raise _refuse(name, value, "is not a list of the right length", self.describe())
        return tuple(self.item.check(name, v, value) for v in value)


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of words."""

    values: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)

    def check(self, name: str, value: Any) -> str:
        if value not in self.values:
            raise _refuse(name, value, "is not a known choice", self.describe())
        return value


@dataclass(frozen=True)
class Flag:
    """true or false; with `auto`, also the word "auto" (decided from the images)."""

    auto: bool = False

    def describe(self) -> str:
        return "true, false or auto" if self.auto else "true or false"

    def check(self, name: str, value: Any) -> Any:
        if self.auto and value == "auto":
            return value
        if not isinstance(value, bool):
            raise _refuse(name, value, f"is not {self.describe()}", self.describe())
        return value


@dataclass(frozen=True)
class Text:
    """A non-empty word (a similarity name), or null when `optional`."""

    optional: bool = False

    def describe(self) -> str:
        return "a name" + (" (or null)" if self.optional else "")

    def check(self, name: str, value: Any) -> Optional[str]:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _refuse(name, value, "is not a name", self.describe())
        return value


@dataclass(frozen=True)
class Mapping:
    def describe(self) -> str:
        return 'an object of parameters, e.g. {"sigma": 2}'

    def check(self, name: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise _refuse(name, value, "is not an object", self.describe())
        return dict(value)


@dataclass(frozen=True)
class Device:
    """auto, cpu, mps, cuda or cuda:N, and present on this machine."""

    def describe(self) -> str:
        return "auto, cpu, cuda or cuda:N (a GPU of this machine)"

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise _refuse(name, value, "is not a device name", self.describe())
        if value in ("auto", "cpu"):
            return value
        import torch

        if value == "mps":
            present = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
            if not present:
                raise _refuse(name, value, "this machine has no Apple GPU", "auto or cpu")
            return value
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA GPU(s): cuda:0..cuda:{count - 1}" if count else "no CUDA GPU"
            raise _refuse(name, value, f"this machine has {have}", "auto or cpu" + (", cuda:N" if count else ""))
        return value


_ITERATIONS = Number(int, 1, 100_000)
SETTINGS: dict[str, Any] = {
    "similarity": Text(),
    "similarity_params": Mapping(),
    "affine": Flag(),
    "affine_similarity": Text(optional=True),
    "affine_similarity_params": Mapping(),
    "init": Choice(("moments", "centers", "none")),
    "affine_levels": Numbers(Number(float, 1, 64)),
    "affine_iterations": Numbers(_ITERATIONS),
    "affine_lr": Number(float, 0, 1, low_open=True),
    "level_spacing_mm": Number(float, 0, 100, low_open=True, optional=True),
    "transform": Choice(("svf", "displacement", "none")),
    "levels": Numbers(Number(float, 1, 64)),
    "iterations": Numbers(_ITERATIONS),
    "lr": Number(float, 0, 10, low_open=True),
    "control_spacing": Number(float, 1, 64),
    "field_smoothing": Number(float, 0, 100),
    "regularizer": Choice(("diffusion", "bending")),
    "regularization": Number(float, 0, 1e6),
    "integration_steps": Number(int, 0, 30),
    "tolerance": Number(float, 0, 1),
    "patience": Number(int, 1, 100_000),
    "normalize": Flag(),
    "moving_foreground_mask": Flag(auto=True),
    "fixed_foreground_mask": Flag(auto=True),
    "percentiles": Numbers(Number(float, 0, 100), length=2),
    "device": Device(),
    "seed": Number(int, 0, 2**32 - 1),
    "threads": Number(int, 1, 4096, optional=True),
}
