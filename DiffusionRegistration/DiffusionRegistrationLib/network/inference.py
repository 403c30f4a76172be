"""Registering a pair with a trained network, optionally fine-tuned on that pair, on any input grid.

The fixed image's field of view is resampled to the network grid, the moving image pulled onto it
through physical space; the predicted normalised displacement is converted to mm and sampled back
onto the fixed grid, so the Result maps fixed physical points to moving physical points like
`register()`'s. Fine-tuning (instance optimisation of the network weights on this one pair) KEEPS its
result: the returned transform is the one of the fine-tuned weights.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..engine.device import resolve_device
from ..engine.result import Result
from ..errors import RegistrationError
from ..geometry.metrics import dice_per_label, field_tre, landmark_tre, mean_dice
from ..geometry.spatial import physical_points, sample, to_sampling_grid
from ..geometry.transforms import invert_displacement, sample_field
from ..core.image import Grid, Image
from ..io.images import normalize
from ..io.paths import input_file
from ..progress import Progress, ProgressCallback, silent
from ..similarity import build_similarity
from .data import ValidationCase, pull_onto
from .loss import NetworkLoss
from .model import NetworkSpec, RegistrationNetwork, network_grid, normalised_to_mm, to_millimetres

CHECKPOINT_FORMAT = "diffreg-network-1"


@dataclass
class TrainedNetwork:
    """A network rebuilt from a checkpoint, with the training settings it was saved with."""

    model: RegistrationNetwork
    spec: NetworkSpec
    config: dict[str, Any]
    step: int
    path: Optional[str] = None


def read_network_checkpoint(path: Union[str, Path], device: torch.device) -> dict[str, Any]:
    """Loads a checkpoint dict (tensors only, no pickled code); any damage -> RegistrationError."""
    path = Path(path)
    if path.is_dir():
        path = path / "latest.pt"
    if not path.exists():
        raise RegistrationError(f"network checkpoint {path}: no such file. Give a .pt file written by "
                                "`diffreg train` (or its checkpoint folder).")
    input_file(path, "network checkpoint")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many types for damaged files
        raise RegistrationError(f"network checkpoint {path}: cannot be read ({type(error).__name__}: "
                                f"{str(error).strip().splitlines()[0] if str(error).strip() else 'damaged'}). "
                                "The file is damaged or not a checkpoint; use another one or retrain.") from None
    missing = [k for k in ("format", "model", "network", "config", "step") if not isinstance(checkpoint, dict)
               or k not in checkpoint]
    if missing or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RegistrationError(f"network checkpoint {path}: not a {CHECKPOINT_FORMAT} checkpoint (missing "
                                f"{', '.join(missing) or 'format tag'}). Give a file written by `diffreg train`.")
    checkpoint["path"] = str(path)
    return checkpoint


def load_network(checkpoint: Union[str, Path, dict], device: torch.device) -> TrainedNetwork:
    data = checkpoint if isinstance(checkpoint, dict) else read_network_checkpoint(checkpoint, device)
    damaged = "the file is damaged or was not written by `diffreg train`."
    for name, kind in (("network", dict), ("config", dict), ("step", int)):
        if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
            raise RegistrationError(f"network checkpoint {data.get('path')}: field '{name}' is a "
                                    f"{type(data.get(name)).__name__}, not a {kind.__name__}; {damaged}")
    try:
        spec = NetworkSpec.from_dict(data["network"])
        check_training_config(data["config"])
    except (TypeError, ValueError, OverflowError, RegistrationError) as error:
        raise RegistrationError(f"network checkpoint {data.get('path')}: its stored settings are malformed "
                                f"({error}); {damaged}") from None
    config, step = data["config"], data["step"]
    model = RegistrationNetwork(spec).to(device)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as error:
        raise RegistrationError(f"network checkpoint {data.get('path')}: weights do not fit the network it "
                                f"describes ({str(error).splitlines()[0]}). The file is damaged.") from None
    return TrainedNetwork(model, spec, config, step, data.get("path"))


def check_training_config(config: dict[str, Any]) -> None:
    """RegistrationError unless a checkpoint's stored training settings have the types and ranges that
    `TrainConfig` accepts (the device it was trained on need not exist here)."""
    from .train import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"device"}
    TrainConfig(**{key: value for key, value in config.items() if key in known}, device="cpu")


def _pair_batch(fixed: Image, moving: Image, spec: NetworkSpec, device: torch.device,
                percentiles: tuple[float, float]) -> tuple[dict[str, torch.Tensor], Grid]:
    """The pair on the network grid, normalised, as a batch of one."""
    grid = network_grid(fixed.grid, spec.size)
    batch = {"fixed": pull_onto(normalize(fixed, *percentiles), grid)[None],
             "moving": pull_onto(normalize(moving, *percentiles), grid)[None],
             "to_mm": torch.as_tensor(normalised_to_mm(grid), dtype=torch.float32)[None],
             "spacing": torch.as_tensor(grid.spacing, dtype=torch.float32)[None]}
    return {k: v.to(device) for k, v in batch.items()}, grid


def network_loss(config: dict[str, Any], similarity: Optional[str] = None,
                 similarity_params: Optional[dict] = None, regularization: Optional[float] = None) -> NetworkLoss:
    """The training loss recorded in a checkpoint's config, with optional overrides."""
    name = similarity or config.get("similarity", "lncc")
    params = similarity_params if similarity_params is not None else (
        config.get("similarity_params", {}) if similarity is None else {})
    return NetworkLoss(build_similarity(name, **params), config.get("regularizer", "diffusion"),
                       config.get("regularization", 1.0) if regularization is None else regularization,
                       config.get("inverse_consistency", 0.0))


def finetune(network: TrainedNetwork, batch: dict[str, torch.Tensor], loss: NetworkLoss, steps: int, lr: float,
             progress: ProgressCallback = silent) -> list[dict[str, Any]]:
    """Instance optimisation of the network weights on one pair (in place); returns the loss history.

    The last entry is the loss of the final weights, i.e. of the transform that will be returned.
    """
    model = network.model
    loss.similarity.to(batch["fixed"].device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        value, terms = loss(model, batch)
        value.backward()
        optimizer.step()
        if not np.isfinite(terms["loss"]):
            raise RegistrationError("fine-tuning diverged (loss is not finite); lower --finetune-lr.")
        history.append({"stage": "finetune", "step": step, **terms})
        progress(Progress("finetune", (step + 1) / steps, f"step {step + 1}/{steps} loss {terms['loss']:.5f}"))
    with torch.no_grad():
        _, terms = loss(model, batch)
    history.append({"stage": "finetune", "step": steps, "final": True, **terms})
    return history


def predict(network: TrainedNetwork, fixed: Image, moving: Image, device: torch.device,
            batch: Optional[dict[str, torch.Tensor]] = None, grid: Optional[Grid] = None,
            inverse: bool = False) -> tuple[np.ndarray, Optional[np.ndarray], Image]:
    """Fixed->moving displacement on the fixed grid (mm), its inverse on the moving grid, the warped image."""
    if batch is None or grid is None:
        batch, grid = _pair_batch(fixed, moving, network.spec, device, _percentiles(network.config))
    network.model.eval()
    with torch.no_grad():
        field = to_millimetres(network.model(batch["fixed"], batch["moving"]), batch["to_mm"])
        points = physical_points(fixed.grid, device)
        displacement = sample_field(field, grid, points)
        moving_tensor = torch.as_tensor(np.ascontiguousarray(moving.array), dtype=torch.float32, device=device)
        warped = sample(moving_tensor[None, None], to_sampling_grid(points + displacement, moving.grid),
                        padding_mode="zeros")[0, 0]
        inverse_field = None
        if inverse:
            backward = invert_displacement(field, grid)
            inverse_field = sample_field(backward, grid, physical_points(moving.grid, device))[0].cpu().numpy()
    network.model.train()
    displacement = displacement[0].cpu().numpy().astype(np.float32)
    if not np.isfinite(displacement).all():
        raise RegistrationError(f"network {network.path or '(in memory)'}: produced NaN or infinite displacements for "
                                f"this pair ({int((~np.isfinite(displacement)).sum())} values); its weights are "
                                "damaged or its training (or fine-tuning) diverged. Use another checkpoint, retrain "
                                "it, or lower --finetune-lr.")
    return displacement, inverse_field, Image(warped.cpu().numpy(), fixed.grid)


def _percentiles(config: dict[str, Any]) -> tuple[float, float]:
    return tuple(config.get("percentiles", (0.5, 99.5)))


def register_with_network(fixed: Image, moving: Image, checkpoint: Union[str, Path, dict, TrainedNetwork],
                          finetune_steps: int = 0, device: str = "auto", progress: ProgressCallback = silent,
                          finetune_lr: Optional[float] = None, similarity: Optional[str] = None,
                          similarity_params: Optional[dict] = None, regularization: Optional[float] = None,
                          inverse: bool = False) -> Result:
    """Registers `moving` onto `fixed` with a trained network; `finetune_steps` > 0 fine-tunes it first.

    The fine-tuned weights are the ones whose transform is returned (a copy: a TrainedNetwork passed
    in is not modified). The similarity of fine-tuning defaults to the one the network was trained with.
    """
    start = time.perf_counter()
    if fixed.dim != moving.dim:
        raise RegistrationError(f"fixed {fixed.name} is {fixed.dim}D but moving {moving.name} is {moving.dim}D; "
                                "register images of the same dimension.")
    if finetune_steps < 0:
        raise RegistrationError(f"--finetune-steps must be >= 0, not {finetune_steps}.")
    torch_device = resolve_device(device)
    progress(Progress("network", 0.0, "loading network"))
    if isinstance(checkpoint, TrainedNetwork):
        network = checkpoint
        network.model.to(torch_device)
    else:
        network = load_network(checkpoint, torch_device)
    if network.spec.dim != fixed.dim:
        raise RegistrationError(f"network {network.path} is {network.spec.dim}D but the images are {fixed.dim}D; "
                                "use a network trained on images of this dimension.")
    batch, grid = _pair_batch(fixed, moving, network.spec, torch_device, _percentiles(network.config))
    history: list[dict[str, Any]] = []
    if finetune_steps:
        network = TrainedNetwork(copy.deepcopy(network.model), network.spec, network.config, network.step, network.path)
        loss = network_loss(network.config, similarity, similarity_params, regularization)
        from .train import TRAIN_SETTINGS  # train imports this module

        lr = float(network.config.get("finetune_lr", 1e-4)) if finetune_lr is None else \
            TRAIN_SETTINGS["finetune_lr"].check(finetune_lr)
        history = finetune(network, batch, loss, finetune_steps, lr, progress)
    displacement, inverse_field, warped = predict(network, fixed, moving, torch_device, batch, grid, inverse)
    progress(Progress("network", 1.0, "done"))
    config = {"method": "network", "checkpoint": network.path, "network": network.spec.to_dict(),
              "training": network.config, "finetune_steps": finetune_steps}
    return Result(fixed.grid, moving.grid, displacement, affine=None, warped=warped, inverse=inverse_field,
                  seconds=time.perf_counter() - start, config=config, history=history)


def validate_network(network: TrainedNetwork, cases: list[ValidationCase], device: torch.device) -> dict[str, float]:
    """Mean Dice (labels), TRE (known displacement or landmarks, mm) and seconds per pair over cases."""
    dice, tre, seconds = [], [], []
    for case in cases:
        result = register_with_network(case.fixed, case.moving, network, device=str(device))
        seconds.append(result.seconds)
        if case.fixed_labels is not None and case.moving_labels is not None:
            warped = result.warp(case.moving_labels, "nearest")
            dice.append(mean_dice(dice_per_label(case.fixed_labels.array, warped.array)))
        if case.true_displacement is not None:
            tre.append(field_tre(case.true_displacement, result.displacement)["mean"])
        if case.fixed_landmarks is not None and case.moving_landmarks is not None:
            tre.append(landmark_tre(case.fixed_landmarks, case.moving_landmarks, result.transform_points)["mean"])
    out = {"pairs": float(len(cases)), "seconds_per_pair": float(np.mean(seconds)) if seconds else float("nan")}
    if dice:
        out["dice"] = float(np.mean(dice))
    if tre:
        out["tre_mm"] = float(np.mean(tre))
    return out


__all__ = ["TrainedNetwork", "register_with_network", "load_network", "read_network_checkpoint", "validate_network",
           "predict", "finetune", "CHECKPOINT_FORMAT"]
