"""JSON and TOML from files and arguments a user names, parsed with bounded nesting and number size.

Python's parsers recurse once per nesting level (a file of ten thousand `[` raises RecursionError) and
read integers of any length (a seed of 400 digits raises OverflowError wherever it meets a float or a
C integer). Every settings, landmark, catalog and stamp reader parses through here, so such input is
one RegistrationError naming the file and what is wrong.
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional

from ..errors import RegistrationError

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11 (Slicer 5.8 ships 3.9): the same parser as a package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

MAX_DEPTH = 32  # nesting of objects and lists; the deepest file the project writes has 5
MAX_INTEGER = 2 ** 63 - 1  # the largest integer any setting, size or seed may hold


class StructureError(RegistrationError):
    """Text that is not valid JSON/TOML or is nested too deeply or holds a number too large."""


class SyntaxProblem(StructureError):
    """Text that is not valid JSON/TOML at all (as opposed to valid but out of bounds); `line` and `reason`
    say where and what, for readers that word it their own way."""

    def __init__(self, message: str, line: Optional[int] = None, reason: str = ""):
        super().__init__(message)
        self.line, self.reason = line, reason


def _digits(number: int) -> int:
    """How many decimal digits `number` has (estimated beyond Python's limit for turning it into text)."""
    magnitude = abs(number)
    return len(str(magnitude)) if magnitude.bit_length() < 12_000 else int(magnitude.bit_length() * math.log10(2)) + 1


def _check(value: Any, what: str) -> Any:
    """`value` when its nesting and integers are within bounds (walked without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise StructureError(f"{what}: is nested more than {MAX_DEPTH} levels deep; no settings file needs "
                                     "that. Check the file.")
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INTEGER:
            digits = _digits(item)
            raise StructureError(f"{what}: holds an integer of {digits} digits; integers must be below "
                                 f"2^63. Check the value.")
    return value


def parse_json(text: str, what: str) -> Any:
    """The JSON value of `text`; StructureError naming `what` (e.g. "config file cfg.json") otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SyntaxProblem(f"{what}: cannot be parsed as JSON (line {error.lineno}: {error.msg}).", error.lineno,
                            error.msg) from None
    except RecursionError:
        raise StructureError(f"{what}: is nested more than {MAX_DEPTH} levels deep. Check the file.") from None
    except ValueError as error:  # an integer beyond Python's digit limit for text
        raise StructureError(f"{what}: holds a number that cannot be read ({error}).") from None
    return _check(value, what)


def parse_toml(text: str, what: str) -> dict[str, Any]:
    """The TOML table of `text`; StructureError naming `what` otherwise (or when no TOML parser exists)."""
    if tomllib is None:
        raise StructureError(f"{what}: reading TOML needs Python 3.11 or the package 'tomli' (pip install tomli); "
                             "or write the settings as JSON.")
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise StructureError(f"{what}: is nested more than {MAX_DEPTH} levels deep. Check the file.") from None
    except ValueError as error:  # TOMLDecodeError, and an integer beyond Python's digit limit for text
        raise SyntaxProblem(f"{what}: cannot be parsed as TOML ({error}).", None, str(error)) from None
    return _check(value, what)


def parse_settings_text(text: str, suffix: str, what: str) -> Any:
    """TOML for a `.toml` suffix in any letter case, else JSON."""
    return parse_toml(text, what) if suffix.lower() == ".toml" else parse_json(text, what)
