"""What the diffusers-based extractors share: reading a block's output and stopping the UNet there,
the pixel stride of each block, and loading a model folder with errors a user can act on.

The tap is a forward hook on one block that records its output and raises a private exception, so the
rest of the UNet (everything after the tap) never runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import RegistrationError


class _TapReached(Exception):
    """Raised by the hook once the tapped block has produced its output (internal, never escapes)."""


def run_to_tap(block: torch.nn.Module, forward: Callable[[], object]) -> torch.Tensor:
    """Runs `forward()` until `block` returns; gives that block's output (the first item of a tuple)."""
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise _TapReached

    handle = block.register_forward_hook(hook)
    try:
        forward()
    except _TapReached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RegistrationError(f"the network finished without running the tapped block "
                                f"{type(block).__name__}; choose another block.")
    return captured[0]


def _has(block: torch.nn.Module, name: str) -> bool:
    return getattr(block, name, None) is not None


def block_strides(down_blocks: Iterable[torch.nn.Module],
                  up_blocks: Iterable[torch.nn.Module]) -> dict[str, int]:
    """Stride (in the UNet's input pixels) of the output of every down block, the mid block and every
    up block, counted from the blocks' own down-/up-samplers."""
    strides: dict[str, int] = {}
    stride = 1
    for index, block in enumerate(down_blocks):
        stride *= 2 if _has(block, "downsamplers") else 1
        strides[f"down_blocks.{index}"] = stride
    strides["mid_block"] = stride
    for index, block in enumerate(up_blocks):
        stride //= 2 if _has(block, "upsamplers") else 1
        strides[f"up_blocks.{index}"] = max(stride, 1)
    return strides


def downsamplings(down_blocks: Iterable[torch.nn.Module]) -> int:
    """How many times the UNet halves the resolution on the way down."""
    return sum(1 for block in down_blocks if _has(block, "downsamplers"))


def resolve_block(unet: torch.nn.Module, tap: str) -> torch.nn.Module:
    """'up_blocks.1', 'down_blocks.2' or 'mid_block' -> that module; RegistrationError listing the choices."""
    choices = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"] + \
              [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    if tap not in choices or (tap == "mid_block" and unet.mid_block is None):
        raise RegistrationError(f"feature tap '{tap}' is not a block of this {type(unet).__name__}. "
                                f"Choose one of: {', '.join(choices)}.")
    if tap == "mid_block":
        return unet.mid_block
    group, index = tap.split(".")
    return getattr(unet, group)[int(index)]


def model_folder(model: str | os.PathLike | None, what: str, needs: Iterable[str]) -> Path:
    """The local diffusers folder of `model` (a folder, or a catalog id resolved to its verified cache folder),
    checked to hold each of `needs` (sub-paths)."""
    if model is None:
        raise RegistrationError(f"{what} backbone needs 'model': a diffusers model folder or a catalog id "
                                "(see `diffreg models list`).")
    folder = Path(model).expanduser()
    if not folder.is_dir():
        from .catalog import is_catalog_id
        from .weights import path as weights_path
        if is_catalog_id(str(model)):
            folder = weights_path(str(model))
    if not folder.is_dir():
        raise RegistrationError(
            f"{what} model '{model}': no such folder. Give a diffusers model folder (save_pretrained output) "
            "or a catalog id (see `diffreg models list`; fetch one with `diffreg models download ID`).")
    missing = [name for name in needs if not (folder / name).exists()]
    if missing:
        raise RegistrationError(f"{what} model folder {folder} lacks {', '.join(missing)}: it is not a complete "
                                "diffusers model folder. Download it again (`diffreg models download ID`) or "
                                "save the model with save_pretrained.")
    return folder


def load_part(loader: Callable[[], torch.nn.Module], folder: Path, part: str) -> torch.nn.Module:
    """Calls a from_pretrained loader; turns its low-level errors into a RegistrationError naming the part."""
    try:
        return loader()
    except (OSError, ValueError, RuntimeError, KeyError, EnvironmentError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise RegistrationError(f"{folder / part}: cannot be loaded ({first}). The files are incomplete or "
                                "corrupt: run `diffreg models verify` and download the model again.") from None


def timestep_tensor(timestep: int, batch: int, device: torch.device) -> torch.Tensor:
    """The same integer timestep for every image of the batch, as diffusers schedulers and UNets take it."""
    return torch.full((batch,), int(timestep), dtype=torch.long, device=device)
