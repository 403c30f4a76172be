"""Features of OpenAI's guided-diffusion ADM at one tap and timestep, as the paper extracts them.

Input images in [0, 1] are mapped to [-1, 1], the grey channel repeated to RGB, noised once with
`q_sample` at the timestep (linear schedule, 1000 steps; one noise draw [1, 3, H, W] from the given
generator shared by every image of the batch), and the network runs up to the tap.
Paper defaults: 2D, decoder block 10 at t=60 (512 channels, stride 4); 3D slices, encoder block 11 at
t=50 (512 channels, stride 8; the decoder never runs).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..errors import RegistrationError
from .adm import ADM_256_UNCOND_FLAGS, ADM_SMALL_FLAGS, AdmConfig, AdmUNet, build_adm, random_init_
from .base import FeatureExtractor
from .diffusion_schedule import q_sample

#: the paper's (tap, timestep) for 2D images and for slices of 3D volumes
PAPER_DEFAULTS = {2: ("output_blocks.10", 60), 3: ("input_blocks.11", 50)}
CHECKPOINT_FILE = "256x256_diffusion_uncond.pt"


def _describe_keys(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raises RegistrationError naming the missing, unexpected and mis-shaped keys, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    bad_shapes = [f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
                  for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_describe_keys(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_describe_keys(unexpected)})")
    if bad_shapes:
        problems.append(f"{len(bad_shapes)} keys with the wrong shape ({_describe_keys(bad_shapes, 4)})")
    if problems:
        raise RegistrationError(
            f"{source}: the weights do not fit the ADM architecture ({'; '.join(problems)}). Give the "
            f"official guided-diffusion checkpoint {CHECKPOINT_FILE} (unconditional 256x256 ImageNet), or "
            "the model flags it was trained with.")


def read_adm_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a state dict saved with torch.save; RegistrationError for a missing, truncated or corrupt file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RegistrationError(
            f"ADM checkpoint {path}: no such file. Download guided-diffusion's {CHECKPOINT_FILE} "
            "(see `diffreg models list`) and give its path, or place it there.")
    errors = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
              AttributeError, KeyError, IndexError, TypeError)
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(error).lower():
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except errors as error:
        size = path.stat().st_size
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise RegistrationError(
            f"ADM checkpoint {path} ({size:,} bytes): cannot be read, the file is truncated or corrupt "
            f"({first}). Delete it and download {CHECKPOINT_FILE} again, then check its SHA-256 "
            "(`diffreg models verify`).") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise RegistrationError(f"ADM checkpoint {path}: holds no state dict of tensors "
                                f"(found {type(loaded).__name__}). Give the file {CHECKPOINT_FILE}.")
    return loaded


class AdmExtractor(FeatureExtractor):
    """guided-diffusion ADM features at `tap` and `timestep` (the network's weights frozen)."""

    def __init__(self, model: AdmUNet, tap: Optional[str] = None, timestep: Optional[int] = None,
                 dim: int = 2, ensemble: int = 1, noise_seed: int = 0, chunk_size: int = 8,
                 compute_dtype: Optional[torch.dtype] = None, backbone_id: Optional[str] = None,
                 channels_last: bool = True):
        default_tap, default_t = PAPER_DEFAULTS[3 if int(dim) == 3 else 2]
        super().__init__(default_t if timestep is None else int(timestep), ensemble, noise_seed,
                         chunk_size, compute_dtype)
        self.model = model
        self.tap = tap or default_tap
        try:
            self.stride = model.tap_stride(self.tap)
            self.size_multiple = model.tap_size_multiple(self.tap)
            self.channels = model.tap_channels(self.tap)
        except ValueError as error:
            raise RegistrationError(str(error)) from None
        if not 0 <= self.timestep < 1000:
            raise RegistrationError(f"ADM timestep {self.timestep} is outside 0..999.")
        self._backbone_id = backbone_id
        # channels-last activations let oneDNN (CPU) and cuDNN (GPU) pick their fastest convolutions
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.freeze()

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, flags: dict | AdmConfig, state_dict: Mapping[str, torch.Tensor],
                        source: str = "state dict", device: torch.device | str | None = None,
                        **options) -> "AdmExtractor":
        """Builds the network from guided-diffusion flags and loads `state_dict` strictly (cast to float32)."""
        model = build_adm(flags, "meta")
        check_state_dict(model, state_dict, source)
        weights = {k: v.to(device or "cpu", torch.float32) for k, v in state_dict.items()}
        model.load_state_dict(weights, strict=True, assign=True)
        return cls(model, **options)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, flags: Optional[dict] = None,
                        device: torch.device | str | None = None, **options) -> "AdmExtractor":
        """Loads a guided-diffusion checkpoint (default flags: the 256x256 unconditional model)."""
        path = Path(path).expanduser()
        state_dict = read_adm_weights(path)
        stat = path.stat()
        options.setdefault("backbone_id", f"adm:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        return cls.from_state_dict(flags or ADM_256_UNCOND_FLAGS, state_dict, f"ADM checkpoint {path}",
                                   device, **options)

    @classmethod
    def random(cls, flags: Optional[dict] = None, seed: int = 0, device: torch.device | str | None = None,
               **options) -> "AdmExtractor":
        """Random weights (tests and benchmarks only: the features mean nothing). Default: the small
        reference-family network (32 channels, heads of 16)."""
        flags = flags or ADM_SMALL_FLAGS
        model = random_init_(build_adm(flags, "meta"), seed)
        if device is not None:
            model.to(device)
        config = AdmConfig.from_flags(flags) if isinstance(flags, dict) else flags
        name = "adm-small-random" if flags is ADM_SMALL_FLAGS else f"adm-random-{config.model_channels}"
        options.setdefault("backbone_id", f"{name}:seed={seed}")
        return cls(model, **options)

    # -- the interface ------------------------------------------------------------------------------
    def extract(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, height, width = x.shape
        x0 = (x.float() * 2.0 - 1.0).expand(b, 3, height, width)
        noise = torch.randn((1, 3, height, width), generator=generator, device=x.device,
                            dtype=torch.float32).expand(b, 3, height, width)
        x_t = q_sample(x0, self.timestep, noise)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        return self.model.forward_to(x_t, self.timestep, self.tap)
