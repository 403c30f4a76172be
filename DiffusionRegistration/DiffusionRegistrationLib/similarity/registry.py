"""The similarities by name, without importing torch: the one table that the command line, validation,
the presets and the Slicer panel read. `build_similarity` imports the implementing module on demand."""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, NamedTuple

from ..errors import RegistrationError

if TYPE_CHECKING:
    from .base import Similarity


class SimilarityInfo(NamedTuple):
    """Where a similarity is implemented and what it is for."""
    module: str
    cls: str
    summary: str


SIMILARITIES: dict[str, SimilarityInfo] = {
    "mse": SimilarityInfo("intensity", "MeanSquaredError", "mean squared difference (same contrast)"),
    "ncc": SimilarityInfo("intensity", "NormalizedCrossCorrelation", "global normalized cross-correlation"),
    "lncc": SimilarityInfo("intensity", "LocalNormalizedCrossCorrelation",
                           "local normalized cross-correlation (same contrast, robust to bias)"),
    "mi": SimilarityInfo("intensity", "MutualInformation", "mutual information (different contrasts)"),
    "ngf": SimilarityInfo("intensity", "NormalizedGradientFields", "normalized gradient fields (edges)"),
    "mind": SimilarityInfo("intensity", "MINDSSC", "MIND-SSC self-similarity descriptors (multimodal)"),
    "diffusion": SimilarityInfo("diffusion", "DiffusionFeatureSimilarity",
                                "LNCC of features of a pre-trained diffusion model (the paper's)"),
}


def similarity_names() -> list[str]:
    """Every similarity that `build_similarity` accepts."""
    return list(SIMILARITIES)


def check_similarity_name(name: str) -> None:
    """RegistrationError naming the choices when `name` is not a similarity."""
    if name not in SIMILARITIES:
        raise RegistrationError(f"unknown similarity '{name}'. Choose one of: {', '.join(SIMILARITIES)}.")


def build_similarity(name: str, **params) -> "Similarity":
    """Builds a similarity by name; unknown names or parameters give a RegistrationError."""
    check_similarity_name(name)
    info = SIMILARITIES[name]
    factory = getattr(import_module(f".{info.module}", __package__), info.cls)
    try:
        return factory(**params)
    except TypeError as error:
        raise RegistrationError(f"similarity '{name}': bad parameters {params} ({error}).") from None
