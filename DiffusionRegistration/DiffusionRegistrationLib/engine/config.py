"""Registration settings: RegistrationConfig (every field declared once, engine.settings.declare), the named
presets, settings files and `key=value` overrides. engine.options.RegistrationOptions resolves what a person
chose into one RegistrationConfig; a config saved with `save_config` is a settings file that gives back the
same config. Importing this module imports no torch."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from ..errors import RegistrationError
from ..io.paths import input_file
from ..io.structured import SyntaxProblem, parse_json, parse_settings_text
from ..similarity.registry import SIMILARITIES, check_similarity_params
from .settings import Choice, Device, Flag, Mapping, Number, Numbers, Setting, check_declared, declare, declared


_ITERATIONS = Number(int, 0, 100_000)  # 0 skips the level, as in ANTs
_LEVELS = Numbers(Number(float, 1, 64))
_SIMILARITY = Choice(tuple(SIMILARITIES))


@dataclass
class RegistrationConfig:
    """Everything `register()` needs besides the images, each field declared once (engine.settings.declare).
    Lengths of `levels` and `iterations` match."""

    similarity: str = declare(_SIMILARITY, "lncc", "Similarity", "what is compared: " + ", ".join(
        f"{name} ({info.summary})" for name, info in SIMILARITIES.items()), advanced=False)
    similarity_params: dict[str, Any] = declare(Mapping(), {}, "Similarity parameters",
                                                "the similarity's own parameters, e.g. {\"sigma\": 2}")
    affine: bool = declare(Flag(), True, "Affine stage", "optimise an affine transform before the deformable stage")
    affine_similarity: Optional[str] = declare(_SIMILARITY, None, "Affine similarity",
                                               "similarity of the affine stage (unset: the similarity's own choice "
                                               "for it, see `diffreg presets`)")
    affine_similarity_params: dict[str, Any] = declare(Mapping(), {}, "Affine similarity parameters",
                                                       "parameters of the affine similarity")
    init: str = declare(Choice(("moments", "centers", "none")), "moments", "Initial alignment",
                        "moments: centres of mass; centers: image centres; none: as the headers place them")
    # The schedule (issue 20, benchmarks/sweep_settings.py): 10 steps at the affine stage's finer level and 20
    # at the deformable stage's middle one (were 20 and 30) take 0.5 s off a 2 mm pair; TRE 0.141 -> 0.146 mm
    # (known field), grey/white Dice 0.785/0.849 -> 0.786/0.848 (2 mm) and 0.846/0.902 -> 0.844/0.901 (1 mm).
    # The finest level keeps its 12 steps: 10 cost more (TRE 0.154 mm, Dice 0.781/0.845).
    affine_levels: tuple[float, ...] = declare(_LEVELS, (4.0, 2.0), "Affine levels",
                                               "shrink factors of the affine stage, coarse to fine")
    affine_iterations: tuple[int, ...] = declare(Numbers(_ITERATIONS), (40, 10), "Affine iterations",
                                                 "steps at each affine level (0 skips the level)")
    affine_lr: float = declare(Number(float, 0, 1, low_open=True), 0.01, "Affine step",
                               "Adam step of the affine stage, relative (translations: this times 100 mm)")
    level_spacing_mm: Optional[float] = declare(Number(float, 0, 100, low_open=True, optional=True), 1.0,
                                                "Level spacing", "3D: the levels are shrink factors of this spacing "
                                                "(never finer than the image), so the pyramid is physical; null: "
                                                "factors of the image's own spacing (2D always)", unit="mm")
    transform: str = declare(Choice(("svf", "displacement", "none")), "svf", "Deformable transform",
                             "svf: stationary velocity field (diffeomorphic); displacement: dense field; none: "
                             "affine only")
    levels: tuple[float, ...] = declare(_LEVELS, (4.0, 2.0, 1.0), "Levels",
                                        "shrink factors of the deformable stage, coarse to fine")
    iterations: tuple[int, ...] = declare(Numbers(_ITERATIONS), (40, 20, 12), "Iterations",
                                          "steps at each deformable level (0 skips the level)")
    lr: float = declare(Number(float, 0, 10, low_open=True), 0.25, "Step size",
                        "Adam step of the deformable stage", unit="voxels")
    # The field model (issue 20; benchmarks/sweep_settings.py, README "Against Greedy"): a control grid twice
    # as coarse as each level's, lightly smoothed, integrated in 3 squarings, regularised lightly (0.15: the
    # finest level of a 1 mm pair follows the anatomy closer); with a moving mask the regulariser weighs
    # `masked_regularization_factor` times more (a finer grid bends the brain's edge towards the fixed image's
    # skull when the similarity sees only the brain).
    control_spacing: float = declare(Number(float, 1, 64), 2.0, "Control spacing",
                                     "control grid coarser than the level's grid by this factor")
    field_smoothing: float = declare(Number(float, 0, 100), 1.0, "Field smoothing",
                                     "Gaussian sigma applied to the field parameter", unit="voxels")
    regularizer: str = declare(Choice(("diffusion", "bending")), "diffusion", "Regulariser",
                               "smoothness penalty: diffusion (first derivatives) or bending energy")
    regularization: float = declare(Number(float, 0, 1e6), 0.15, "Regularization",
                                    "weight of the smoothness regulariser", advanced=False)
    masked_regularization_factor: float = declare(Number(float, 0, 1e6), 6.0, "Masked regularization factor",
                                                  "the regularization is multiplied by this when a moving mask "
                                                  "limits where the similarity is measured")
    integration_steps: int = declare(Number(int, 0, 30), 3, "Integration steps",
                                     "scaling and squaring steps of the velocity field")
    tolerance: float = declare(Number(float, 0, 1), 1e-4, "Tolerance",
                               "a level stops when the loss improved by less than this (relative) over `patience` "
                               "steps")
    patience: int = declare(Number(int, 1, 100_000), 20, "Patience", "steps over which convergence is judged")
    normalize: bool = declare(Flag(), True, "Normalise", "scale intensities to [0, 1] between the percentiles")
    moving_foreground_mask: Union[bool, str] = declare(
        Flag(auto=True), "auto", "Moving foreground mask",
        "measure similarity only inside the moving image's foreground (where it differs from its constant "
        "background); auto: when the moving image is brain only (skull-stripped or masked) and the fixed one is "
        "not (engine.foreground), recorded in the report; ignored with a moving mask")
    fixed_foreground_mask: Union[bool, str] = declare(
        Flag(auto=True), "auto", "Fixed foreground mask",
        "measure similarity only inside the fixed image's foreground; auto: when the fixed image is brain only and "
        "the moving one is not (a head scan onto a skull-stripped template), recorded in the report; ignored with "
        "a fixed mask")
    percentiles: tuple[float, float] = declare(Numbers(Number(float, 0, 100), length=2), (0.5, 99.5),
                                               "Percentiles", "intensity percentiles mapped to 0 and 1")
    device: str = declare(Device(), "auto", "Device", "auto: a CUDA GPU when present, else the CPU", advanced=False)
    seed: int = declare(Number(int, 0, 2**32 - 1), 0, "Seed", "seed of every random draw")
    threads: Optional[int] = declare(Number(int, 1, 4096, optional=True), None, "Threads",
                                     "CPU threads (unset: one for a 2D image, whose steps are too small to share; torch's "
                                     "default for a volume)")

    def __post_init__(self) -> None:
        check_declared(self)
        if len(self.levels) != len(self.iterations):
            raise RegistrationError(f"config: levels {self.levels} and iterations {self.iterations} must have "
                                    "the same length (one iteration count per level).")
        if len(self.affine_levels) != len(self.affine_iterations):
            raise RegistrationError(f"config: affine_levels {self.affine_levels} and affine_iterations "
                                    f"{self.affine_iterations} must have the same length.")
        if self.percentiles[0] >= self.percentiles[1]:
            raise RegistrationError(f"setting percentiles={json.dumps(list(self.percentiles))}: the low percentile "
                                    "must be below the high one, e.g. --set percentiles=[0.5,99.5].")
        check_similarity_params(self.similarity, self.similarity_params)
        if self.affine_similarity is not None:
            check_similarity_params(self.affine_similarity, self.affine_similarity_params, "affine_similarity_params")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> "RegistrationConfig":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RegistrationError(f"config: unknown option(s) {', '.join(unknown)}. Known options: "
                                    f"{', '.join(sorted(known))}.")
        return dataclasses.replace(self, **overrides)


CONFIG_SETTINGS: dict[str, Setting] = declared(RegistrationConfig)


class Preset(NamedTuple):
    """Named settings: what they are for, and what they change from the RegistrationConfig defaults."""
    summary: str
    settings: dict[str, Any]


# The field model before issue 20 (a control grid 4x coarser, more smoothing, 6 squarings, one weight 0.3):
# what `fast`, `multimodal` and `diffusion` were measured with, and cheaper per step.
COARSE_FIELD: dict[str, Any] = {"control_spacing": 4.0, "field_smoothing": 1.5, "integration_steps": 6,
                                "regularization": 0.3, "masked_regularization_factor": 1.0}

PRESETS: dict[str, Preset] = {
    "default": Preset("same contrast: local NCC, stationary velocity field, three levels; a skull-stripped image "
                      "onto a head, or a head onto a skull-stripped image, is masked by the brain's foreground "
                      "(moving_/fixed_foreground_mask=auto)", {}),
    "fast": Preset("same contrast, two levels and fewer steps",
                   {**COARSE_FIELD, "levels": (4.0, 2.0), "iterations": (60, 40), "affine_iterations": (50, 20)}),
    "accurate": Preset("same contrast, more steps and a narrower local NCC window",
                       {"iterations": (150, 100, 50), "affine_iterations": (40, 20), "control_spacing": 2.0,
                        "tolerance": 2e-5,
                        "similarity_params": {"sigma": 1.5}}),
    "stripped": Preset("similarity only inside the moving image's foreground, always (default decides from what "
                       "each image shows)", {"moving_foreground_mask": True}),
    "multimodal": Preset("different contrasts: MIND descriptors, mutual information for the affine stage",
                         {**COARSE_FIELD, "similarity": "mind", "affine_similarity": "mi",
                          "iterations": (40, 30, 12), "affine_iterations": (30, 10)}),
    # The regulariser weight is the paper's 3D lambda; it needs the weights (`diffreg models download`).
    # slice_stride 8 with 8 cached slices per step: chosen from benchmarks/bench_diffusion_approximations.py
    # (README, "What the approximations cost").
    "diffusion": Preset("the paper's similarity on diffusion-model features (ADM, fast mode; needs the weights)",
                        {**COARSE_FIELD, "similarity": "diffusion",
                         "similarity_params": {"extractor": "adm-256-uncond", "mode": "fast", "slice_stride": 8,
                                               "step_slices": 8},
                         "affine_similarity": "mi", "affine_iterations": (40, 20), "levels": (2.0, 1.0),
                         "iterations": (60, 30),
                         "regularization": 0.5}),
}


def _parse_value(key: str, text: str) -> Any:
    """The JSON value of `text`, or `text` itself where it is not JSON (a word such as a similarity name)."""
    try:
        return parse_json(text, f"option {key}")
    except SyntaxProblem:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["lr=0.5", "levels=[4,2,1]"]` -> dict; values are JSON where they parse, else strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistrationError(f"option '{item}' must look like key=value (e.g. lr=0.5).")
        out[key.strip().replace("-", "_")] = _parse_value(key.strip(), value.strip())
    return out


def load_config_file(path: Union[str, Path]) -> dict[str, Any]:
    """Reads settings from a JSON or TOML file (a whole saved RegistrationConfig or a few keys)."""
    path = input_file(path, "config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RegistrationError(f"config file {path}: cannot be parsed (not UTF-8 text, byte {error.start}). Use "
                                "JSON or TOML.") from None
    except OSError as error:
        raise RegistrationError(f"config file {path}: cannot be read ({error.strerror}).") from None
    values = parse_settings_text(text, path.suffix, f"config file {path}")
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


def save_config(config: RegistrationConfig, path: Union[str, Path]) -> None:
    """Writes `config` as a JSON settings file that reads back unchanged (RegistrationOptions(config_file=path))."""
    Path(path).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
