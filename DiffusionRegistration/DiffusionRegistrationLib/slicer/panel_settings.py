"""The Slicer panel's settings, derived from the one declaration (engine.options.OPTION_SETTINGS): the parameter
node's names, types, choices, ranges and defaults, and the widgets' labels, tooltips, decimals and units.

A parameter node stores no None, so an unset option (None: "as the preset says") is the choice "preset" in a
combo box and one below the declared minimum in a spin box (shown as "preset"). DiffusionRegistration.py builds
its parameter node from this table and scripts/make_module_ui.py writes the .ui from it. Torch- and MRML-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..engine.options import OPTION_SETTINGS, RegistrationOptions
from ..engine.settings import Flag, Number, Setting, Text

UNSET = "preset"  # what a combo box or spin box shows for an unset option


@dataclass(frozen=True)
class PanelSetting:
    """One panel parameter: its RegistrationOptions field and the panel's value for "unset"."""

    parameter: str
    option: str
    fixed_default: Any = None  # a value the panel starts from instead of "unset"

    @property
    def setting(self) -> Setting:
        return OPTION_SETTINGS[self.option]

    @property
    def optional(self) -> bool:
        return self.setting.default is None and self.fixed_default is None

    @property
    def kind(self) -> type:
        """The parameter node's type."""
        declared = self.setting.kind
        if isinstance(declared, Number):
            return declared.kind
        return bool if isinstance(declared, Flag) else str

    @property
    def choices(self) -> tuple:
        """A combo box's entries (the unset entry first), or () for other widgets."""
        values = tuple(self.setting.choices)
        if not values:
            return ()
        return ((UNSET,) if self.optional else ()) + values

    @property
    def bounds(self) -> Optional[tuple[float, float]]:
        """A spin box's (minimum, maximum): the declared range, widened by one below for "unset"."""
        if self.setting.bounds is None:
            return None
        low, high = self.setting.bounds
        return (low - 1, high) if self.optional else (low, high)

    @property
    def default(self) -> Any:
        if self.fixed_default is not None:
            return self.fixed_default
        if not self.optional:
            return self.setting.default
        if self.choices:
            return UNSET
        return self.bounds[0] if self.bounds else ("" if self.kind is str else False)

    @property
    def decimals(self) -> int:
        return self.setting.decimals

    @property
    def tooltip(self) -> str:
        unset = f" '{UNSET}': as the preset says." if self.optional and (self.choices or self.bounds) else ""
        return self.setting.help[:1].upper() + self.setting.help[1:] + "." + unset

    @property
    def label(self) -> str:
        return self.setting.label + ":"

    def option_value(self, value: Any) -> Any:
        """The RegistrationOptions value of the panel's `value` (None for the panel's "unset")."""
        if self.optional and (value == UNSET or (self.bounds is not None and value < self.setting.bounds[0])
                              or (isinstance(self.setting.kind, Text) and value == "")):
            return None
        return value


PANEL_SETTINGS: dict[str, PanelSetting] = {s.parameter: s for s in (
    PanelSetting("preset", "preset"),
    PanelSetting("similarity", "similarity"),
    PanelSetting("backbone", "backbone"),
    PanelSetting("mode", "mode"),
    PanelSetting("device", "device", fixed_default="auto"),
    PanelSetting("steps", "steps"),
    PanelSetting("regularization", "regularization"),
    PanelSetting("networkCheckpoint", "network"),
    PanelSetting("finetuneSteps", "finetune_steps"),
    PanelSetting("checkerboardSquareMm", "checkerboard_square_mm"),
    PanelSetting("agreementMap", "agreement"),
)}


def options_from_panel(values: dict[str, Any], **extra: Any) -> RegistrationOptions:
    """The run's options for the panel's parameter values (by parameter name), plus RegistrationOptions fields."""
    options = {s.option: s.option_value(values[name]) for name, s in PANEL_SETTINGS.items() if name in values}
    return RegistrationOptions(**options, **extra)

