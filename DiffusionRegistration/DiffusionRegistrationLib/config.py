"""Registration settings: one dataclass, named presets, and overrides from a file or `key=value` flags."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from .errors import RegistrationError


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
    affine_iterations: tuple[int, ...] = (80, 40)
    affine_lr: float = 0.01  # per step, relative units: translation lr is this times 100 mm
    # deformable stage
    transform: str = "svf"  # svf (diffeomorphic) | displacement | none
    levels: tuple[float, ...] = (4.0, 2.0, 1.0)
    iterations: tuple[int, ...] = (60, 40, 20)
    lr: float = 0.25  # Adam step in voxels of the level being optimised
    control_spacing: float = 4.0  # control grid coarser than the level grid by this factor
    field_smoothing: float = 3.0  # Gaussian sigma (level voxels) applied to the field parameter
    regularizer: str = "diffusion"  # diffusion | bending
    regularization: float = 0.3
    integration_steps: int = 6
    # convergence: stop a level when the loss improved by less than `tolerance` (relative) over `patience` steps
    tolerance: float = 1e-4
    patience: int = 20
    # images and run
    normalize: bool = True
    # measure similarity only where the moving image is non-zero (a skull-stripped or masked moving
    # image against a fixed image that shows more anatomy); ignored when a moving mask is given
    moving_foreground_mask: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        self.levels = tuple(float(v) for v in self.levels)
        self.iterations = tuple(int(v) for v in self.iterations)
        self.affine_levels = tuple(float(v) for v in self.affine_levels)
        self.affine_iterations = tuple(int(v) for v in self.affine_iterations)
        self.percentiles = tuple(float(v) for v in self.percentiles)
        if len(self.levels) != len(self.iterations):
            raise RegistrationError(f"config: levels {self.levels} and iterations {self.iterations} must have "
                                    "the same length (one iteration count per level).")
        if len(self.affine_levels) != len(self.affine_iterations):
            raise RegistrationError(f"config: affine_levels {self.affine_levels} and affine_iterations "
                                    f"{self.affine_iterations} must have the same length.")
        choices = {"transform": ("svf", "displacement", "none"), "init": ("moments", "centers", "none"),
                   "regularizer": ("diffusion", "bending")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise RegistrationError(f"config: {name} must be one of {', '.join(allowed)}, "
                                        f"not '{getattr(self, name)}'.")
        if any(v < 1 for v in self.levels + self.affine_levels):
            raise RegistrationError("config: resolution levels are shrink factors and must be >= 1.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> "RegistrationConfig":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RegistrationError(f"config: unknown option(s) {', '.join(unknown)}. Known options: "
                                    f"{', '.join(sorted(known))}.")
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, dict[str, Any]] = {
    # Same-contrast pairs: local NCC, stationary velocity field, three levels.
    "default": {},
    "fast": {"levels": (4.0, 2.0), "iterations": (60, 40), "affine_iterations": (50, 20)},
    "accurate": {"iterations": (150, 100, 50), "control_spacing": 2.0, "tolerance": 2e-5},
    # A skull-stripped (or otherwise masked) moving image against a fixed image with more anatomy.
    "stripped": {"moving_foreground_mask": True},
    # Different contrasts or anatomy missing in one image: mutual information / MIND.
    "multimodal": {"similarity": "mind", "affine_similarity": "mi"},
    # The paper's similarity on features of the catalog's default diffusion backbone (ADM, fast mode).
    # Its regulariser weight is the paper's 3D lambda; it needs the weights (`diffreg models download`).
    "diffusion": {"similarity": "diffusion", "similarity_params": {"extractor": "adm-256-uncond", "mode": "fast",
                                                                    "slice_stride": 8, "step_slices": 8},
                  "affine_similarity": "mi", "levels": (2.0, 1.0), "iterations": (60, 30),
                  "regularization": 0.5},
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


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Reads overrides from a JSON or TOML file."""
    path = Path(path)
    if not path.is_file():
        raise RegistrationError(f"config file {path}: no such file.")
    try:
        text = path.read_text()
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RegistrationError(f"config file {path}: cannot be parsed ({error}). Use JSON or TOML.") from None


def make_config(preset: str = "default", overrides: Optional[dict[str, Any]] = None) -> RegistrationConfig:
    """The named preset with overrides applied on top."""
    if preset not in PRESETS:
        raise RegistrationError(f"unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}.")
    return RegistrationConfig().with_overrides({**PRESETS[preset], **(overrides or {})})
