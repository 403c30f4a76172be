"""What a person chooses for one run, in every front end (command line, Python API, Slicer panel, review
page): a preset, then a settings file, then `key=value` overrides, then the shortcuts declared here, in that
order; `config()` resolves them into the one RegistrationConfig. None is the one "unset" marker: "as the
preset, the file and the overrides say". Importing this module imports no torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..features.catalog import default_backbone_id
from ..similarity.registry import SIMILARITIES
from .config import CONFIG_SETTINGS, PRESETS, RegistrationConfig, load_config_file, make_config
from .settings import COMMANDS, CatalogId, Choice, Flag, Number, Setting, Text, check_declared, declare, declared

_DIFFUSION_MODES = SIMILARITIES["diffusion"].modes


def _shortcut(name: str, advanced: bool = False) -> Any:
    """A RegistrationConfig field as an option of its own: its declaration, unset by default."""
    setting = CONFIG_SETTINGS[name]
    return declare(setting.kind, None, setting.label, setting.help, setting.unit, advanced, COMMANDS)


@dataclass
class RegistrationOptions:
    """The options of one run, each declared once; None: as the preset says."""

    preset: str = declare(Choice(tuple(PRESETS)), "default", "Preset",
                          "named settings: " + "; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items()),
                          advanced=False, commands=COMMANDS)
    similarity: Optional[str] = _shortcut("similarity")
    backbone: Optional[str] = declare(CatalogId(), None, "Diffusion backbone",
                                      "backbone of the diffusion similarity, an id of the model catalog (diffreg "
                                      "models list); unset: the catalog's default", advanced=False, commands=COMMANDS)
    mode: Optional[str] = declare(Choice(_DIFFUSION_MODES), None, "Diffusion mode",
                                  "how volumes are sliced for the diffusion similarity: exact (the paper's random "
                                  "axis and slices per step) or fast (tri-planar, cached)", commands=COMMANDS)
    steps: Optional[int] = declare(CONFIG_SETTINGS["iterations"].kind.item, None, "Steps per level",
                                   "iterations at every deformable level (0 skips the deformable stage)",
                                   advanced=False, commands=COMMANDS)
    regularization: Optional[float] = _shortcut("regularization")
    device: Optional[str] = _shortcut("device")
    seed: Optional[int] = _shortcut("seed", advanced=True)
    network: Optional[str] = declare(Text(optional=True), None, "Registration network",
                                     "checkpoint of a trained registration network (diffreg train): it predicts "
                                     "the transform instead of optimising", commands=COMMANDS)
    finetune_steps: int = declare(Number(int, 0, 100_000), 0, "Fine-tuning steps",
                                  "fine-tune the network on each pair for this many steps", commands=COMMANDS)
    agreement: bool = declare(Flag(), False, "Agreement map",
                              "also write agreement.nii.gz: the local similarity of the fixed and the registered "
                              "moving image on the fixed grid (higher: better aligned)", commands=("register",))
    checkerboard_square_mm: float = declare(Number(float, 1, 200), 10.0, "Checkerboard square",
                                            "side of the checkerboard's squares", unit="mm")
    config_file: Optional[Union[str, Path]] = None  # JSON or TOML settings over the preset
    overrides: dict[str, Any] = field(default_factory=dict)  # RegistrationConfig fields, as `--set key=value`

    def __post_init__(self) -> None:
        check_declared(self)

    def given(self) -> list[str]:
        """The options set away from their defaults (the settings file and overrides included), as flags."""
        given = [setting.flag for name, setting in OPTION_SETTINGS.items() if getattr(self, name) != setting.default]
        given += ["--config"] if self.config_file else []
        return given + (["--set"] if self.overrides else [])

    def config(self) -> RegistrationConfig:
        """The RegistrationConfig these options describe. `steps` sets the iterations of every deformable
        level; `backbone` and `mode` are the diffusion similarity's `extractor` and `mode`, applied only when
        the resolved similarity is the diffusion one."""
        settings: dict[str, Any] = dict(load_config_file(self.config_file)) if self.config_file else {}
        settings.update(self.overrides)
        settings.update({name: getattr(self, name) for name in ("similarity", "regularization", "device", "seed")
                         if getattr(self, name) is not None})
        preset_settings = PRESETS[self.preset].settings
        if settings.get("similarity", preset_settings.get("similarity")) != preset_settings.get("similarity") \
                and "similarity_params" not in settings:
            settings["similarity_params"] = {}  # the preset's parameters belong to the similarity it chose
        config = make_config(self.preset, settings)
        changes: dict[str, Any] = {}
        if self.steps is not None:
            changes["iterations"] = (self.steps,) * len(config.levels)
        if config.similarity == "diffusion" and (self.backbone is not None or self.mode is not None):
            params = dict(config.similarity_params)
            params.update({key: value for key, value in (("extractor", self.backbone), ("mode", self.mode))
                           if value is not None})
            changes["similarity_params"] = params
        return config.with_overrides(changes) if changes else config

    def diffusion_backbone(self) -> Optional[str]:
        """The catalog id of the diffusion backbone the run uses, or None for another similarity."""
        config = self.config()
        if config.similarity != "diffusion":
            return None
        extractor = config.similarity_params.get("extractor")
        return extractor if isinstance(extractor, str) else default_backbone_id()


OPTION_SETTINGS: dict[str, Setting] = declared(RegistrationOptions)
