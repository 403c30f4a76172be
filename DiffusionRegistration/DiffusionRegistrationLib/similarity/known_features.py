"""Known-answer feature backbones: features whose right answer is known, to prove the diffusion-feature
similarity's machinery (padding, slicing, caching, warping cached features, LNCC per channel, gradients)
without diffusion weights.

- `image`: the normalized image itself (one channel, stride 1, no noise step). The diffusion similarity
  with these features is LNCC on the image, so it must register as well as `--similarity lncc`.
- `mind`: MIND-SSC self-similarity descriptors (the `mind` similarity's own code; 4 channels per 2D
  slice, stride 1, no noise step): a multimodal answer to compare with `--similarity mind`.
They live beside the intensity similarities (whose code `mind` reuses) and subclass the feature
extractor interface, so the diffusion similarity cannot tell them from a network.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import RegistrationError
from ..features.base import FeatureExtractor
from .intensity import MINDSSC


class KnownAnswerFeatures(FeatureExtractor):
    """Weightless features computed from the image: stride 1, any size, no noise (timestep 0)."""

    stride = 1
    size_multiple = 1

    def __init__(self, chunk_size: int = 64):
        super().__init__(timestep=0, chunk_size=chunk_size)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device)

    @property
    def device(self) -> torch.device:
        return self._anchor.device


class ImageFeatures(KnownAnswerFeatures):
    """features = the image (already normalized to [0, 1] by the engine), one channel."""

    tap = "image"
    _backbone_id = "image"

    def extract(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x


class MindFeatures(KnownAnswerFeatures):
    """features = MIND-SSC descriptors of each 2D image ([b, 4, H, W]), from the `mind` similarity's code."""

    tap = "mind-ssc"

    def __init__(self, radius: int = 2, dilation: int = 2, chunk_size: int = 64):
        super().__init__(chunk_size)
        self.mind = MINDSSC(radius=radius, dilation=dilation)
        self._backbone_id = f"mind:radius={self.mind.radius}:dilation={self.mind.dilation}"

    def extract(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.mind.descriptor(x)


KNOWN_ANSWER_BACKBONES = {"image": ImageFeatures, "mind": MindFeatures}


def known_answer_extractor(spec: dict[str, Any]) -> FeatureExtractor:
    """{"backbone": "image" | "mind", options} -> the frozen extractor; RegistrationError for bad options."""
    options = {k: v for k, v in spec.items() if k != "backbone"}
    try:
        return KNOWN_ANSWER_BACKBONES[spec["backbone"]](**options).freeze()
    except TypeError as error:
        raise RegistrationError(f"feature backbone '{spec['backbone']}': bad options {sorted(options)} "
                                f"({error}).") from None
