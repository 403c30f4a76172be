"""The feature-extractor interface every diffusion backbone implements.

images [B, 1, H, W] in [0, 1] -> feature maps [B, C, h, w]. The base class owns what all backbones
share: frozen weights, padding to the network's stride and cropping back, chunking a batch to a memory
budget, averaging an ensemble of noise draws, reduced precision on a GPU. Subclasses implement
`extract(x, generator)` on an already padded batch.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import torch
import torch.nn.functional as F


def weights_fingerprint(module: torch.nn.Module, budget: int = 1 << 20) -> str:
    """A hash of the weights that reads at most about `budget` values (a strided sample of each tensor)."""
    digest = hashlib.sha256()
    state = module.state_dict()
    total = sum(t.numel() for t in state.values()) or 1
    for key, tensor in state.items():
        flat = tensor.detach().reshape(-1)
        sample = flat[::max(1, total // budget)].float().cpu().contiguous()
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:24]


class FeatureExtractor(torch.nn.Module):
    """Frozen backbone wrapper. Gradients flow to the input (when it requires them), never to weights."""

    #: input pixels per feature pixel at the tap (e.g. 4 for ADM decoder block 10, 8 for encoder block 11)
    stride: int = 1
    #: the input size must be a multiple of this for the network to run (e.g. 32 for ADM at 256)
    size_multiple: int = 1
    #: the feature tap (a block name); subclasses set it
    tap: Optional[str] = None
    #: what the weights are (a file, a folder, a catalog id); None: a fingerprint of the weights
    _backbone_id: Optional[str] = None

    def __init__(self, timestep: int, ensemble: int = 1, noise_seed: int = 0, chunk_size: int = 8,
                 compute_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.timestep, self.ensemble, self.noise_seed = int(timestep), int(ensemble), int(noise_seed)
        self.chunk_size, self.compute_dtype = int(chunk_size), compute_dtype

    def freeze(self) -> "FeatureExtractor":
        """Puts the backbone in eval mode with requires_grad False on every weight."""
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)  # frozen backbones never switch to training behaviour

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def cache_options(self) -> str:
        """Settings beyond the common ones that change the features, as `|name=value` text."""
        return ""

    def cache_key(self) -> str:
        """Identifies these features (weights, tap, timestep, noise, ensemble, precision) for on-disk caches."""
        if self._backbone_id is None:
            self._backbone_id = f"{type(self).__name__}-weights:{weights_fingerprint(self)}"
        return (f"{self._backbone_id}|tap={self.tap}|t={self.timestep}{self.cache_options()}"
                f"|ensemble={self.ensemble}|seed={self.noise_seed}|dtype={self.compute_dtype}")

    def extract(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x [b, 1, H, W] in [0, 1], H and W multiples of size_multiple -> features [b, C, H/stride, W/stride]."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"expected images [B, 1, H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        multiple = self.size_multiple
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        x = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images
        out_h, out_w = math.ceil(height / self.stride), math.ceil(width / self.stride)
        chunks = []
        for chunk in x.split(self.chunk_size):
            total = None
            for draw in range(self.ensemble):
                generator = torch.Generator(device=chunk.device).manual_seed(self.noise_seed + draw)
                with torch.autocast(chunk.device.type, dtype=self.compute_dtype,
                                    enabled=self.compute_dtype is not None):
                    features = self.extract(chunk, generator).float()
                total = features if total is None else total + features
            chunks.append((total / self.ensemble)[..., :out_h, :out_w])
        return torch.cat(chunks)
