"""Features of any pixel-space diffusers UNet2DModel, for instance one trained on the user's own modality.

Image [0, 1] -> [-1, 1] (grey kept for a 1-channel model, repeated for a 3-channel one) -> the
scheduler's `add_noise` at timestep t (one noise draw from the generator, shared by the batch) -> UNet
-> output of the chosen block ('down_blocks.i', 'mid_block' or 'up_blocks.i'); the UNet stops there.

A model folder is either a pipeline folder (model_index.json, unet/, scheduler/, as DDPMPipeline's
save_pretrained writes it) or a bare UNet folder (config.json and weights, optionally with a
scheduler_config.json beside them). Without a scheduler configuration the DDPM default is used: 1000
steps, linear betas 1e-4..0.02.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import RegistrationError
from .base import FeatureExtractor
from .diffusers_tap import (block_strides, downsamplings, load_part, model_folder, resolve_block, run_to_tap,
                            timestep_tensor)
from .sd_extractor import folder_identity

DEFAULTS = {"tap": "up_blocks.1", "timestep": 60}


def _unet_and_scheduler_folders(folder: Path) -> tuple[Path, Optional[Path]]:
    """(UNet folder, scheduler folder or None) for a pipeline folder or a bare UNet folder."""
    if (folder / "unet" / "config.json").is_file():
        scheduler = folder / "scheduler"
        return folder / "unet", scheduler if (scheduler / "scheduler_config.json").is_file() else None
    if (folder / "config.json").is_file():
        return folder, folder if (folder / "scheduler_config.json").is_file() else None
    raise RegistrationError(f"UNet2DModel folder {folder}: holds neither unet/config.json (a pipeline folder) nor "
                            "config.json (a UNet folder). Save the model with save_pretrained and give that folder.")


class PixelUNetExtractor(FeatureExtractor):
    """Pixel-space diffusers UNet2DModel features at one block (weights frozen)."""

    def __init__(self, unet: torch.nn.Module, scheduler, tap: str = DEFAULTS["tap"],
                 timestep: int = DEFAULTS["timestep"], ensemble: int = 1, noise_seed: int = 0, chunk_size: int = 8,
                 compute_dtype: Optional[torch.dtype] = None, class_label: Optional[int] = None,
                 backbone_id: Optional[str] = None):
        super().__init__(timestep, ensemble, noise_seed, chunk_size, compute_dtype)
        in_channels = int(unet.config.in_channels)
        if in_channels not in (1, 3):
            raise RegistrationError(f"UNet2DModel takes {in_channels} input channels; only 1 (grey) or 3 (RGB, the "
                                    "grey image repeated) can be fed with a medical image.")
        if getattr(unet, "class_embedding", None) is not None and class_label is None:
            raise RegistrationError("this UNet2DModel is class-conditional: give the option class_label "
                                    "(the class index to condition on).")
        steps = int(scheduler.config.num_train_timesteps)
        if not 0 <= self.timestep < steps:
            raise RegistrationError(f"UNet2DModel timestep {self.timestep} is outside 0..{steps - 1}.")
        resolve_block(unet, tap)  # a RegistrationError listing the blocks if `tap` is not one
        self.unet, self.scheduler, self.tap, self.in_channels = unet, scheduler, tap, in_channels
        self.class_label = None if class_label is None else int(class_label)
        self.stride = block_strides(unet.down_blocks, unet.up_blocks)[tap]
        self.size_multiple = 2 ** downsamplings(unet.down_blocks)
        self._backbone_id = backbone_id
        self.freeze()

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, device: torch.device | str | None = None,
                        **options) -> "PixelUNetExtractor":
        """Loads a UNet2DModel (pipeline or bare UNet folder) and its DDPM scheduler, never from the network."""
        from diffusers import DDPMScheduler, UNet2DModel

        folder = model_folder(model, "UNet2DModel", ())
        unet_folder, scheduler_folder = _unet_and_scheduler_folders(folder)
        unet = load_part(lambda: UNet2DModel.from_pretrained(unet_folder, local_files_only=True), folder,
                         unet_folder.name)
        scheduler = DDPMScheduler() if scheduler_folder is None else load_part(
            lambda: DDPMScheduler.from_pretrained(scheduler_folder, local_files_only=True), folder, "scheduler")
        options.setdefault("backbone_id", f"unet2d:{folder_identity(folder)}")
        extractor = cls(unet.float(), scheduler, **options)
        return extractor.to(device) if device is not None else extractor

    def cache_options(self) -> str:
        return f"|class={self.class_label}"

    def extract(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, height, width = x.shape
        image = (x.float() * 2.0 - 1.0).expand(b, self.in_channels, height, width)
        noise = torch.randn((1, self.in_channels, height, width), generator=generator, device=x.device,
                            dtype=torch.float32)
        t = timestep_tensor(self.timestep, b, x.device)
        noisy = self.scheduler.add_noise(image, noise.expand_as(image), t)
        labels = None if self.class_label is None else torch.full((b,), self.class_label, device=x.device)
        return run_to_tap(resolve_block(self.unet, self.tap), lambda: self.unet(noisy, t, class_labels=labels))
