"""Stable Diffusion features through diffusers, as DIFT extracts them.

Image [0, 1] -> [-1, 1], grey repeated to RGB -> VAE encoder (the latent's mean, or a sample drawn with
the generator, as DIFT does) * scaling_factor -> the scheduler's `add_noise` at timestep t (noise from
the generator, one draw shared by every image of the batch) -> UNet conditioned on the empty-prompt text
embedding -> output of up block `up_block_index`; the UNet stops there. DIFT defaults: t=261, up block
1, an ensemble of 8 noise draws (averaged by the base class).

The empty-prompt embedding is computed once when the extractor is built and kept as a buffer; the text
encoder and tokenizer are dropped afterwards, and so is the VAE decoder: neither is ever needed again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import RegistrationError
from .base import FeatureExtractor
from .diffusers_tap import block_strides, downsamplings, load_part, model_folder, run_to_tap, timestep_tensor

#: DIFT's settings for Stable Diffusion 2.1
DIFT_DEFAULTS = {"timestep": 261, "up_block_index": 1, "ensemble": 8}
LATENT_MODES = ("sample", "mean")
_NEEDS = ("vae", "unet", "scheduler", "tokenizer", "text_encoder")


def folder_identity(folder: Path) -> str:
    """Path, total size and newest modification time of a model folder (what an on-disk cache keys on)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    newest = max((p.stat().st_mtime_ns for p in files), default=0)
    return f"{folder.resolve()}:{size}:{newest}"


@torch.no_grad()
def empty_prompt_embedding(tokenizer, text_encoder: torch.nn.Module) -> torch.Tensor:
    """The text encoder's last hidden state for the empty prompt, padded to the tokenizer's length: [1, L, D]."""
    tokens = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    device = next(text_encoder.parameters()).device
    return text_encoder(tokens.input_ids.to(device))[0].float()


class StableDiffusionExtractor(FeatureExtractor):
    """Stable Diffusion UNet features at an up block (weights frozen)."""

    def __init__(self, vae: torch.nn.Module, unet: torch.nn.Module, scheduler, prompt_embedding: torch.Tensor,
                 up_block_index: int = DIFT_DEFAULTS["up_block_index"], timestep: int = DIFT_DEFAULTS["timestep"],
                 ensemble: int = DIFT_DEFAULTS["ensemble"], noise_seed: int = 0, chunk_size: int = 8,
                 compute_dtype: Optional[torch.dtype] = None, latent: str = "sample",
                 backbone_id: Optional[str] = None):
        super().__init__(timestep, ensemble, noise_seed, chunk_size, compute_dtype)
        if latent not in LATENT_MODES:
            raise RegistrationError(f"Stable Diffusion option latent='{latent}' is not one of {', '.join(LATENT_MODES)}.")
        steps = int(scheduler.config.num_train_timesteps)
        if not 0 <= self.timestep < steps:
            raise RegistrationError(f"Stable Diffusion timestep {self.timestep} is outside 0..{steps - 1}.")
        if not 0 <= int(up_block_index) < len(unet.up_blocks):
            raise RegistrationError(f"Stable Diffusion up_block_index {up_block_index}: this UNet has up blocks "
                                    f"0..{len(unet.up_blocks) - 1}.")
        if prompt_embedding.shape[-1] != unet.config.cross_attention_dim:
            raise RegistrationError(f"the text embedding width {prompt_embedding.shape[-1]} does not match the "
                                    f"UNet's cross_attention_dim {unet.config.cross_attention_dim}: the text "
                                    "encoder and the UNet come from different models.")
        vae.decoder, vae.post_quant_conv = None, None  # only the encoder is ever used
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        self.register_buffer("prompt_embedding", prompt_embedding.detach().float().clone())
        self.up_block_index, self.latent = int(up_block_index), latent
        self.tap = f"up_blocks.{self.up_block_index}"
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.stride = vae_factor * block_strides(unet.down_blocks, unet.up_blocks)[self.tap]
        self.size_multiple = vae_factor * 2 ** downsamplings(unet.down_blocks)
        self.channels = int(unet.up_blocks[self.up_block_index].resnets[-1].out_channels)
        self._backbone_id = backbone_id
        self.freeze()

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, device: torch.device | str | None = None,
                        **options) -> "StableDiffusionExtractor":
        """Loads a Stable Diffusion model folder (diffusers layout: vae, unet, scheduler, tokenizer,
        text_encoder) without touching the network, computes the empty-prompt embedding once."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = model_folder(model, "Stable Diffusion", _NEEDS)
        local = {"local_files_only": True}
        tokenizer = load_part(lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **local),
                              folder, "tokenizer")
        text_encoder = load_part(lambda: CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **local),
                                 folder, "text_encoder").to(device or "cpu").eval()
        embedding = empty_prompt_embedding(tokenizer, text_encoder)
        del text_encoder, tokenizer
        vae = load_part(lambda: AutoencoderKL.from_pretrained(folder, subfolder="vae", **local), folder, "vae")
        unet = load_part(lambda: UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **local),
                         folder, "unet")
        scheduler = load_part(lambda: DDPMScheduler.from_pretrained(folder, subfolder="scheduler", **local),
                              folder, "scheduler")
        options.setdefault("backbone_id", f"sd:{folder_identity(folder)}")
        extractor = cls(vae.float(), unet.float(), scheduler, embedding, **options)
        return extractor.to(device) if device is not None else extractor

    def cache_options(self) -> str:
        return f"|latent={self.latent}"

    def extract(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, height, width = x.shape
        image = (x.float() * 2.0 - 1.0).expand(b, 3, height, width)
        posterior = self.vae.encode(image).latent_dist
        shape = (1, *posterior.mean.shape[1:])
        noise = torch.randn(shape, generator=generator, device=x.device, dtype=torch.float32)
        latents = posterior.mean
        if self.latent == "sample":
            draw = torch.randn(shape, generator=generator, device=x.device, dtype=torch.float32)
            latents = latents + posterior.std * draw
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        latents = (latents - shift) * config.scaling_factor
        t = timestep_tensor(self.timestep, b, x.device)
        noisy = self.scheduler.add_noise(latents, noise.expand_as(latents), t)
        context = self.prompt_embedding.expand(b, -1, -1)
        block = self.unet.up_blocks[self.up_block_index]
        return run_to_tap(block, lambda: self.unet(noisy, t, encoder_hidden_states=context))
