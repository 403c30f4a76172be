"""The similarities by name, without importing torch: the one table that the command line, validation,
the presets and the Slicer panel read. `build_similarity` imports the implementing module on demand."""
from __future__ import annotations

import math
from importlib import import_module
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from ..errors import RegistrationError

if TYPE_CHECKING:
    from .base import Similarity


class Param(NamedTuple):
    """One parameter of a similarity: its type and range (`choices` for words), checked before any work.

    `kind`: int, float (an int is accepted), bool, str or object (anything: an extractor spec or
    object, checked by the similarity itself); `many`: a list of such values is accepted too;
    `optional`: null (None) is accepted."""
    kind: type
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()
    low_open: bool = False
    many: bool = False
    optional: bool = False

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = "a text"
        else:
            low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
            text = f"{'an integer' if self.kind is int else 'a number'} {low} and <= {self.high:g}"
        return text + (" (or a list of them)" if self.many else "") + (" (or null)" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.many and isinstance(value, (list, tuple)):
            return bool(value) and all(self._replace(many=False).accepts(v) for v in value)
        if self.kind is object:
            return True
        if self.choices:
            return value in self.choices
        if self.kind in (bool, str):
            return isinstance(value, self.kind)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.kind is int and
                                                                             not isinstance(value, int)):
            return False
        if isinstance(value, int) and abs(value) > 2 ** 63:
            return False
        return math.isfinite(value) and (value > self.low if self.low_open else value >= self.low) \
            and value <= self.high


_EPS = Param(float, 0.0, 1.0, low_open=True)
_SIGMA = Param(float, 0.0, 100.0, low_open=True)
_SEED = Param(int, 0, 2 ** 32 - 1)


class SimilarityInfo(NamedTuple):
    """Where a similarity is implemented, what it is for, its parameters (name -> Param), and what the engine
    and the front ends ask of it."""
    module: str
    cls: str
    summary: str
    same_contrast: bool  # compares intensities: only for images of the same contrast
    params: dict[str, Param]
    affine: Optional[str] = None  # the affine stage's similarity when none is set (None: this one)
    modes: tuple[str, ...] = ()  # choices of its `mode` parameter, the default first


_DIFFUSION_MODES = ("fast", "exact")
SIMILARITIES: dict[str, SimilarityInfo] = {
    "mse": SimilarityInfo("intensity", "MeanSquaredError", "mean squared difference (same contrast)", True, {}),
    "ncc": SimilarityInfo("intensity", "NormalizedCrossCorrelation", "global normalized cross-correlation", True,
                          {"eps": _EPS}),
    "lncc": SimilarityInfo("intensity", "LocalNormalizedCrossCorrelation",
                           "local normalized cross-correlation (same contrast, robust to bias)", True,
                           {"window": Param(str, choices=("gaussian", "box")), "sigma": _SIGMA._replace(many=True),
                            "radius": Param(int, 1, 100), "eps": _EPS}),
    "mi": SimilarityInfo("intensity", "MutualInformation", "mutual information (different contrasts)", False,
                         {"bins": Param(int, 4, 1024), "kernel": Param(str, choices=("gaussian", "bspline")),
                          "sigma": Param(float, 0.0, 64.0, low_open=True), "max_samples": Param(int, 0, 10 ** 9),
                          "seed": _SEED, "normalized": Param(bool)}),
    "ngf": SimilarityInfo("intensity", "NormalizedGradientFields", "normalized gradient fields (edges)", False,
                          {"eps": Param(float, 0.0, 100.0, low_open=True)}),
    "mind": SimilarityInfo("intensity", "MINDSSC", "MIND-SSC self-similarity descriptors (multimodal)", False,
                           {"radius": Param(int, 1, 16), "dilation": Param(int, 1, 16),
                            "norm": Param(str, choices=("l1", "l2"))}),
    "diffusion": SimilarityInfo("diffusion", "DiffusionFeatureSimilarity",
                                "LNCC of features of a pre-trained diffusion model (the paper's)", False,
                                {"extractor": Param(object), "measure": Param(str, choices=("lncc", "cosine", "l1")),
                                 "mode": Param(str, choices=_DIFFUSION_MODES),
                                 "sigma": _SIGMA._replace(optional=True), "eps": _EPS,
                                 "slices_per_step": Param(int, 1, 4096), "slice_seed": _SEED,
                                 "slice_stride": Param(int, 1, 4096), "refresh_every": Param(int, 0, 10 ** 6),
                                 "intensity_weight": Param(float, 0.0, 1e3), "cache": Param(bool),
                                 "cache_dir": Param(str, optional=True),
                                 "step_slices": Param(int, 1, 4096, optional=True)},
                                affine="mi", modes=_DIFFUSION_MODES),
}


def similarity_names() -> list[str]:
    """Every similarity that `build_similarity` accepts."""
    return list(SIMILARITIES)


def check_similarity_name(name: str) -> None:
    """RegistrationError naming the choices when `name` is not a similarity."""
    if name not in SIMILARITIES:
        raise RegistrationError(f"unknown similarity '{name}'. Choose one of: {', '.join(SIMILARITIES)}.")


def check_similarity_params(name: str, params: Any, setting: str = "similarity_params") -> None:
    """RegistrationError naming the similarity, the parameter, the value and what is allowed, for an unknown
    similarity, an unknown parameter, or a value of the wrong type or out of range."""
    check_similarity_name(name)
    if not isinstance(params, dict):
        raise RegistrationError(f"{setting} of similarity '{name}' must be an object of parameters, not "
                                f"{type(params).__name__}.")
    known = SIMILARITIES[name].params
    for key, value in params.items():
        if key not in known:
            allowed = ", ".join(known) or "none"
            raise RegistrationError(f"{setting}: similarity '{name}' has no parameter '{key}'; allowed: {allowed}.")
        if not known[key].accepts(value):
            shown = value if isinstance(value, (str, float, bool)) or value is None else type(value).__name__
            if isinstance(value, int) and not isinstance(value, bool):
                shown = value if abs(value) <= 2 ** 63 else "a very large integer"
            raise RegistrationError(f"{setting}: similarity '{name}' parameter {key}={shown!r} is out of range or "
                                    f"of the wrong type; allowed: {known[key].describe()}.")


def same_contrast(name: str) -> bool:
    """Whether the similarity compares intensities, so that it suits only images of the same contrast."""
    return SIMILARITIES[name].same_contrast


def affine_similarity_name(name: str) -> str:
    """The similarity the affine stage uses with `name` when none is set."""
    return SIMILARITIES[name].affine or name


def build_similarity(name: str, **params) -> "Similarity":
    """Builds a similarity by name; unknown names or parameters give a RegistrationError."""
    check_similarity_params(name, params)
    info = SIMILARITIES[name]
    factory = getattr(import_module(f".{info.module}", __package__), info.cls)
    try:
        return factory(**params)
    except TypeError as error:
        raise RegistrationError(f"similarity '{name}': bad parameters {params} ({error}).") from None
