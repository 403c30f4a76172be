"""What the Slicer panel lets the user choose, and the backend settings it stands for. Imports neither
torch nor MRML, so the panel can ask it (is this the diffusion similarity? which backbone?) cheaply."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..engine.config import RegistrationConfig, resolve_config


@dataclass
class RegistrationOptions:
    """What the panel lets the user choose; empty strings and zeros mean "as the preset says"."""

    preset: str = "default"
    similarity: str = ""
    backbone: str = ""
    mode: str = ""
    device: str = "auto"
    steps: int = 0
    regularization: float = 0.0
    network: str = ""
    finetune_steps: int = 0
    seed: Optional[int] = None
    checkerboard_square_mm: float = 10.0
    agreement: bool = False
    overrides: dict = field(default_factory=dict)  # RegistrationConfig fields over the preset, as `--set`

    def config(self) -> RegistrationConfig:
        """The backend's settings for these options, resolved as `diffreg register` resolves its flags; the
        backbone and mode apply only when the resolved similarity is the diffusion one."""
        flags = dict(similarity=self.similarity or None, steps=self.steps or None,
                     regularization=self.regularization or None, device=self.device or None, seed=self.seed)
        config = resolve_config(self.preset or "default", overrides=self.overrides, **flags)
        if config.similarity != "diffusion" or not (self.backbone or self.mode):
            return config
        return resolve_config(self.preset or "default", overrides=self.overrides, backbone=self.backbone or None,
                              mode=self.mode or None, **flags)

    def diffusion_backbone(self) -> Optional[str]:
        """The catalog id of the diffusion backbone the run uses, or None for an intensity similarity."""
        config = self.config()
        if config.similarity != "diffusion":
            return None
        from ..features.catalog import default_backbone_id

        extractor = config.similarity_params.get("extractor")
        return extractor if isinstance(extractor, str) else default_backbone_id()
