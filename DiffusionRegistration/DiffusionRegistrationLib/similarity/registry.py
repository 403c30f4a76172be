"""The similarities by name, without importing torch: the one table that the command line, validation,
the presets and the Slicer panel read. `build_similarity` imports the implementing module on demand."""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, NamedTuple, Optional

from ..errors import RegistrationError

if TYPE_CHECKING:
    from .base import Similarity


class SimilarityInfo(NamedTuple):
    """Where a similarity is implemented, what it is for, and what the engine and the front ends ask of it."""
    module: str
    cls: str
    summary: str
    same_contrast: bool  # compares intensities: only for images of the same contrast
    affine: Optional[str] = None  # the affine stage's similarity when none is set (None: this one)
    modes: tuple[str, ...] = ()  # choices of its `mode` parameter, the default first


SIMILARITIES: dict[str, SimilarityInfo] = {
    "mse": SimilarityInfo("intensity", "MeanSquaredError", "mean squared difference (same contrast)", True),
    "ncc": SimilarityInfo("intensity", "NormalizedCrossCorrelation", "global normalized cross-correlation", True),
    "lncc": SimilarityInfo("intensity", "LocalNormalizedCrossCorrelation",
                           "local normalized cross-correlation (same contrast, robust to bias)", True),
    "mi": SimilarityInfo("intensity", "MutualInformation", "mutual information (different contrasts)", False),
    "ngf": SimilarityInfo("intensity", "NormalizedGradientFields", "normalized gradient fields (edges)", False),
    "mind": SimilarityInfo("intensity", "MINDSSC", "MIND-SSC self-similarity descriptors (multimodal)", False),
    "diffusion": SimilarityInfo("diffusion", "DiffusionFeatureSimilarity",
                                "LNCC of features of a pre-trained diffusion model (the paper's)", False,
                                affine="mi", modes=("fast", "exact")),
}


def similarity_names() -> list[str]:
    """Every similarity that `build_similarity` accepts."""
    return list(SIMILARITIES)


def check_similarity_name(name: str) -> None:
    """RegistrationError naming the choices when `name` is not a similarity."""
    if name not in SIMILARITIES:
        raise RegistrationError(f"unknown similarity '{name}'. Choose one of: {', '.join(SIMILARITIES)}.")


def same_contrast(name: str) -> bool:
    """Whether the similarity compares intensities, so that it suits only images of the same contrast."""
    return SIMILARITIES[name].same_contrast


def affine_similarity_name(name: str) -> str:
    """The similarity the affine stage uses with `name` when none is set."""
    return SIMILARITIES[name].affine or name


def build_similarity(name: str, **params) -> "Similarity":
    """Builds a similarity by name; unknown names or parameters give a RegistrationError."""
    check_similarity_name(name)
    info = SIMILARITIES[name]
    factory = getattr(import_module(f".{info.module}", __package__), info.cls)
    try:
        return factory(**params)
    except TypeError as error:
        raise RegistrationError(f"similarity '{name}': bad parameters {params} ({error}).") from None
