"""How a setting is declared: its kind (type and range or choices, checked with the setting's name, the value
given and what is allowed), default, label, unit, one-line help and whether it is advanced.

Each setting is declared once, as a dataclass field made with `declare` (RegistrationConfig in engine.config,
RegistrationOptions in engine.options); validation, the command line's arguments, the Slicer parameter node
and panel, the review page's form, `diffreg presets` and the README's settings table are derived from the
declarations with `declared`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..errors import RegistrationError
from .device import DEVICE_NAMES, DEVICE_PATTERN, device_problem


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
        if isinstance(number, int) and abs(number) > 2 ** 63:  # beyond float's exact range: refused, not overflowed
            raise _refuse(name, f"<an integer of {number.bit_length()} bits>", "is out of range", self.describe())
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
class CatalogId:
    """An id of the model catalog in use, read when asked (so DIFFREG_CATALOG applies)."""

    @property
    def values(self) -> tuple[str, ...]:
        from ..features.catalog import load_catalog

        return tuple(load_catalog())

    def describe(self) -> str:
        return "one of " + ", ".join(self.values) + " (diffreg models list)"

    def check(self, name: str, value: Any) -> str:
        if value not in self.values:
            raise _refuse(name, value, "is not in the model catalog", self.describe())
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

    values: tuple[str, ...] = DEVICE_NAMES

    def describe(self) -> str:
        return "auto, cpu, mps, cuda or cuda:N (a GPU of this machine)"

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(DEVICE_PATTERN, value):
            raise _refuse(name, value, "is not a device name", self.describe())
        problem = device_problem(value)
        if problem:
            raise _refuse(name, value, problem, "auto, cpu or a device this machine has")
        return value


Kind = Union[Number, Numbers, Choice, CatalogId, Flag, Text, Mapping, Device]
COMMANDS = ("register", "batch")


@dataclass(frozen=True)
class Setting:
    """One declared setting. `commands`: the `diffreg` commands that take it as a flag of its own
    (`--name-with-dashes`); RegistrationConfig fields are reached through `--set` and settings files."""

    name: str
    kind: Kind
    default: Any
    label: str
    help: str
    unit: str = ""
    advanced: bool = True
    commands: tuple[str, ...] = ()

    def check(self, value: Any) -> Any:
        return self.kind.check(self.name, value)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple[str, ...]:
        """The allowed words of a choice (a device: the names; cuda:N is also accepted), else ()."""
        return getattr(self.kind, "values", ())

    @property
    def bounds(self) -> Optional[tuple[float, float]]:
        """(lowest, highest) of a number or of each number of a list, else None."""
        number = self.kind.item if isinstance(self.kind, Numbers) else self.kind
        return (number.low, number.high) if isinstance(number, Number) else None

    @property
    def decimals(self) -> int:
        """Decimals a spin box needs to show every allowed value the declaration's default and range use."""
        number = self.kind.item if isinstance(self.kind, Numbers) else self.kind
        if not isinstance(number, Number) or number.kind is int:
            return 0
        return max(2, *(len(f"{v:g}".partition(".")[2]) for v in (number.low, number.high)
                        if math.isfinite(v) and "e" not in f"{v:g}"))


def declare(kind: Kind, default: Any, label: str, help: str, unit: str = "", advanced: bool = True,
            commands: tuple[str, ...] = ()) -> Any:
    """A dataclass field carrying its Setting (the name is the field's own, filled in by `declared`)."""
    info = {"kind": kind, "default": default, "label": label, "help": help, "unit": unit, "advanced": advanced,
            "commands": commands}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"setting": info})
    return dataclasses.field(default=default, metadata={"setting": info})


def declared(cls: type) -> dict[str, Setting]:
    """The Settings of a dataclass whose fields were made with `declare`, in declaration order."""
    return {item.name: Setting(item.name, **item.metadata["setting"]) for item in dataclasses.fields(cls)
            if "setting" in item.metadata}


def check_declared(instance: Any) -> None:
    """Checks (and normalises: lists to tuples, numbers to their type) every declared field in place. None is
    the one "unset" marker: a field declared with the default None may stay None."""
    for name, setting in declared(type(instance)).items():
        value = getattr(instance, name)
        if value is not None or setting.default is not None:
            setattr(instance, name, setting.check(value))
