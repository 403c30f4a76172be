"""Registration settings: one dataclass, the named presets, and `resolve_config`, the one function that turns
a preset, a settings file, `key=value` overrides and dedicated flags into a RegistrationConfig. The command
line, the Python API and the Slicer job all go through it; a RegistrationConfig saved with `save` is a
settings file that gives back the same config. Importing this module imports no torch."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from ..errors import RegistrationError
from ..similarity.registry import check_similarity_name
from .settings import SETTINGS

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11 (Slicer 5.8 ships 3.9): the same parser as a package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None


@dataclass
class RegistrationConfig:
    """Everything `register()` needs besides the images. Lengths of `levels` and `iterations` match."""

    similarity: str = "lncc"
    similarity_params: dict[str, Any] = field(default_factory=dict)
    # affine stage
    affine: bool = True
    affine_similarity: Optional[str] = None  # None: the deformable similarity (if it is an intensity one)
    affine_similarity_params: dict[str, Any] = field(default_factory=dict)
    init: str = "moments"  # moments | centers | none
    affine_levels: tuple[float, ...] = (4.0, 2.0)
    affine_iterations: tuple[int, ...] = (40, 20)
    affine_lr: float = 0.01  # per step, relative units: translation lr is this times 100 mm
    # 3D volumes: levels and affine_levels are shrink factors of this spacing (mm; never finer than the
    # image), so the pyramid is physical: a 0.5 mm and a 1 mm volume are optimised on the same levels in
    # mm and the finer field is upsampled. 2D images, and None: factors of the image's own spacing.
    # 1 mm: on the 1 mm Colin27 pair TRE 0.07 mm, MNI152->Colin27 grey matter Dice 0.800 (README, measured results).
    level_spacing_mm: Optional[float] = 1.0
    # deformable stage
    transform: str = "svf"  # svf (diffeomorphic) | displacement | none
    levels: tuple[float, ...] = (4.0, 2.0, 1.0)
    iterations: tuple[int, ...] = (40, 30, 12)
    lr: float = 0.25  # Adam step in voxels of the level being optimised
    control_spacing: float = 4.0  # control grid coarser than the level grid by this factor
    field_smoothing: float = 1.5  # Gaussian sigma (level voxels) applied to the field parameter
    regularizer: str = "diffusion"  # diffusion | bending
    regularization: float = 0.3
    integration_steps: int = 6
    # convergence: stop a level when the loss improved by less than `tolerance` (relative) over `patience` steps
    tolerance: float = 1e-4
    patience: int = 20
    # images and run
    normalize: bool = True
    # measure the similarity only inside an image's foreground (where it differs from its constant
    # background); ignored when that image's mask is given. "auto": for an image that is brain only
    # (skull-stripped or masked) onto one that is not, e.g. a template onto a head scan or the reverse
    # (engine.foreground); the report's config holds what was decided, its "foreground" why.
    moving_foreground_mask: Union[bool, str] = "auto"
    fixed_foreground_mask: Union[bool, str] = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        for item in fields(self):
            setattr(self, item.name, SETTINGS[item.name].check(item.name, getattr(self, item.name)))
        if len(self.levels) != len(self.iterations):
            raise RegistrationError(f"config: levels {self.levels} and iterations {self.iterations} must have "
                                    "the same length (one iteration count per level).")
        if len(self.affine_levels) != len(self.affine_iterations):
            raise RegistrationError(f"config: affine_levels {self.affine_levels} and affine_iterations "
                                    f"{self.affine_iterations} must have the same length.")
        if self.percentiles[0] >= self.percentiles[1]:
            raise RegistrationError(f"setting percentiles={json.dumps(list(self.percentiles))}: the low percentile "
                                    "must be below the high one, e.g. --set percentiles=[0.5,99.5].")
        for name in (self.similarity, self.affine_similarity):
            if name is not None:
                check_similarity_name(name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> "RegistrationConfig":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RegistrationError(f"config: unknown option(s) {', '.join(unknown)}. Known options: "
                                    f"{', '.join(sorted(known))}.")
        return dataclasses.replace(self, **overrides)


class Preset(NamedTuple):
    """Named settings: what they are for, and what they change from the RegistrationConfig defaults."""
    summary: str
    settings: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "default": Preset("same contrast: local NCC, stationary velocity field, three levels; a skull-stripped image "
                      "onto a head, or a head onto a skull-stripped image, is masked by the brain's foreground "
                      "(moving_/fixed_foreground_mask=auto)", {}),
    "fast": Preset("same contrast, two levels and fewer steps",
                   {"levels": (4.0, 2.0), "iterations": (60, 40), "affine_iterations": (50, 20)}),
    "accurate": Preset("same contrast, more steps and a finer control grid",
                       {"iterations": (150, 100, 50), "control_spacing": 2.0, "tolerance": 2e-5}),
    "stripped": Preset("similarity only inside the moving image's foreground, always (default decides from what "
                       "each image shows)", {"moving_foreground_mask": True}),
    "multimodal": Preset("different contrasts: MIND descriptors, mutual information for the affine stage",
                         {"similarity": "mind", "affine_similarity": "mi"}),
    # The regulariser weight is the paper's 3D lambda; it needs the weights (`diffreg models download`).
    # slice_stride 8 with 8 cached slices per step: the best accuracy per second measured, 7.9x faster than
    # exact mode (benchmarks/bench_diffusion_approximations.py; README, "What the approximations cost").
    "diffusion": Preset("the paper's similarity on diffusion-model features (ADM, fast mode; needs the weights)",
                        {"similarity": "diffusion",
                         "similarity_params": {"extractor": "adm-256-uncond", "mode": "fast", "slice_stride": 8,
                                               "step_slices": 8},
                         "affine_similarity": "mi", "levels": (2.0, 1.0), "iterations": (60, 30),
                         "regularization": 0.5}),
}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["lr=0.5", "levels=[4,2,1]"]` -> dict; values are JSON where they parse, else strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistrationError(f"option '{item}' must look like key=value (e.g. lr=0.5).")
        out[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return out


def load_config_file(path: Union[str, Path]) -> dict[str, Any]:
    """Reads settings from a JSON or TOML file (a whole saved RegistrationConfig or a few keys)."""
    path = Path(path)
    if not path.is_file():
        raise RegistrationError(f"config file {path}: no such file.")
    if path.suffix == ".toml" and tomllib is None:
        raise RegistrationError(f"config file {path}: reading TOML needs Python 3.11 or the package 'tomli' "
                                "(pip install tomli); or write the settings as JSON.")
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise RegistrationError(f"config file {path}: cannot be parsed ({error}). Use JSON or TOML.") from None
    except OSError as error:
        raise RegistrationError(f"config file {path}: cannot be read ({error.strerror}).") from None
    if not isinstance(values, dict):
        raise RegistrationError(f"config file {path}: must hold an object of settings (key: value), "
                                f"not a {type(values).__name__}.")
    return values


def presets() -> dict[str, str]:
    """The named presets, in the order they are offered, and what each is for."""
    return {name: preset.summary for name, preset in PRESETS.items()}


def make_config(preset: str = "default", overrides: Optional[dict[str, Any]] = None) -> RegistrationConfig:
    """The named preset with overrides applied on top."""
    if preset not in PRESETS:
        raise RegistrationError(f"unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}.")
    return RegistrationConfig().with_overrides({**PRESETS[preset].settings, **(overrides or {})})


def resolve_config(preset: str = "default", config_file: Union[str, Path, None] = None,
                   overrides: Optional[dict[str, Any]] = None, *, similarity: Optional[str] = None,
                   backbone: Optional[str] = None, mode: Optional[str] = None, steps: Optional[int] = None,
                   regularization: Optional[float] = None, device: Optional[str] = None,
                   seed: Optional[int] = None) -> RegistrationConfig:
    """Preset, then the settings file, then `overrides` (`--set`), then the dedicated flags: the one order.

    `steps` sets the iterations of every deformable level; `backbone` and `mode` are the diffusion
    similarity's `extractor` and `mode` parameters.
    """
    settings: dict[str, Any] = {}
    if config_file:
        settings.update(load_config_file(config_file))
    settings.update(overrides or {})
    flags = {"similarity": similarity, "regularization": regularization, "device": device, "seed": seed}
    settings.update({key: value for key, value in flags.items() if value is not None})
    preset_settings = PRESETS[preset].settings if preset in PRESETS else {}
    if settings.get("similarity", preset_settings.get("similarity")) != preset_settings.get("similarity") \
            and "similarity_params" not in settings:
        settings["similarity_params"] = {}  # the preset's parameters belong to the similarity it chose
    config = make_config(preset, settings)
    changes: dict[str, Any] = {}
    if steps is not None:
        changes["iterations"] = (steps,) * len(config.levels)
    if backbone is not None or mode is not None:
        params = dict(config.similarity_params)
        params.update({key: value for key, value in (("extractor", backbone), ("mode", mode)) if value is not None})
        changes["similarity_params"] = params
    return config.with_overrides(changes) if changes else config


def save_config(config: RegistrationConfig, path: Union[str, Path]) -> None:
    """Writes `config` as a JSON settings file that `resolve_config(config_file=path)` reads back unchanged."""
    Path(path).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
