"""Training the registration network: Adam on similarity + lambda * regulariser (+ inverse consistency).

Reproducible and resumable: every sample is built from a seed drawn from one data generator; the
checkpoint holds the weights, Adam's state, the step, the RNG states (torch, numpy, python, data
generator), the training config, the network spec and the similarity/backbone used, written
atomically. Resuming from step N and running to N + M gives the same weights as an uninterrupted run.

Distributed: under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (NCCL on
GPUs, gloo on CPUs). Every rank draws the same global batch of seeds and builds only its share
(items rank, rank + world, ...); DDP averages the gradients, so the global batch means the same thing
as in one process. Rank 0 alone logs and saves.
"""
from __future__ import annotations

import csv
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..engine.device import resolve_device
from ..engine.settings import Choice, Device, Mapping, Number, Numbers, Setting, check_declared, declare, declared
from ..geometry.transforms import REGULARIZERS
from ..similarity.registry import SIMILARITIES, check_similarity_params
from ..errors import RegistrationError
from ..io.atomic import atomic_path
from ..progress import Progress, ProgressCallback, silent
from .data import NetworkDataset, ValidationCase, collate
from .inference import CHECKPOINT_FORMAT, TrainedNetwork, network_loss, read_network_checkpoint, validate_network
from .model import NetworkSpec, RegistrationNetwork


_COUNT = Number(int, 1, 10 ** 9)
_RATE = Number(float, 0, 1, low_open=True)


@dataclass
class TrainConfig:
    """Training settings, each declared with its type and range (engine.settings.declare) and checked when
    made, so a flag, an API call or a checkpoint's stored config with a bad value is one RegistrationError;
    stored in every checkpoint (and used by fine-tuning as its defaults)."""

    similarity: str = declare(Choice(tuple(SIMILARITIES)), "lncc", "Similarity", "the training loss's similarity")
    similarity_params: dict[str, Any] = declare(Mapping(), {}, "Similarity parameters", "its parameters")
    regularizer: str = declare(Choice(tuple(REGULARIZERS)), "diffusion", "Regulariser", "smoothness penalty")
    regularization: float = declare(Number(float, 0, 1e6), 1.0, "Regularization", "weight of the regulariser")
    inverse_consistency: float = declare(Number(float, 0, 1e6), 0.0, "Inverse consistency", "GradICON weight")
    steps: int = declare(_COUNT, 1000, "Steps", "training steps")
    batch_size: int = declare(Number(int, 1, 1_000_000), 4, "Batch size", "pairs per step, over every rank")
    lr: float = declare(_RATE, 1e-4, "Learning rate", "Adam's step")
    finetune_lr: float = declare(_RATE, 1e-4, "Fine-tuning rate", "Adam's step when fine-tuning on one pair")
    seed: int = declare(Number(int, 0, 2 ** 63 - 1), 0, "Seed", "seed of every random draw")
    checkpoint_every: int = declare(_COUNT, 500, "Checkpoint every", "steps between checkpoints")
    log_every: int = declare(_COUNT, 10, "Log every", "steps between log lines")
    validate_every: int = declare(Number(int, 0, 10 ** 9), 0, "Validate every",
                                  "steps between validations (0: at the end only, when validation cases are given)")
    percentiles: tuple[float, float] = declare(Numbers(Number(float, 0, 100), length=2), (0.5, 99.5), "Percentiles",
                                               "intensity percentiles mapped to 0 and 1")
    device: str = declare(Device(), "auto", "Device", "auto: a CUDA GPU when present, else the CPU")

    def __post_init__(self) -> None:
        check_declared(self)
        check_similarity_params(self.similarity, self.similarity_params)


TRAIN_SETTINGS: dict[str, Setting] = declared(TrainConfig)


@dataclass
class TrainOutcome:
    model: RegistrationNetwork
    step: int
    history: list[dict[str, float]]
    checkpoint: Optional[Path]
    validation: dict[str, float]


class _Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    def __init__(self, device_name: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.started_group = False
        device = resolve_device(device_name)
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: list[float]) -> list[float]:
        """Averages logged numbers over ranks (each rank saw part of the batch)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return (tensor / self.world).tolist()

    def close(self) -> None:
        if self.started_group:
            dist.barrier()  # rank 0 may still be validating or saving: no rank leaves the group early
            dist.destroy_process_group()


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "data": generator.get_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": python_version, "state": list(python_state), "gauss": python_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["data"].cpu())
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: Path, model: RegistrationNetwork, optimizer: torch.optim.Optimizer, step: int,
                    generator: torch.Generator, config: TrainConfig, spec: NetworkSpec) -> Path:
    """Writes the full training state atomically (a crash never leaves a half checkpoint)."""
    checkpoint = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "step": step, "rng": _rng_state(generator), "config": asdict(config),
                  "network": spec.to_dict(),
                  "backbone": {"similarity": config.similarity, "params": dict(config.similarity_params)}}
    with atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)
    return path


class _Logs:
    """CSV and TensorBoard logs (rank 0 only)."""

    def __init__(self, log_dir: Optional[Path]):
        self.log_dir, self.writer = log_dir, None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(log_dir))

    def write(self, name: str, step: int, values: dict[str, float]) -> None:
        if self.log_dir is None:
            return
        path = self.log_dir / f"{name}.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", *values])
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **values})
        for key, value in values.items():
            self.writer.add_scalar(f"{name}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _resume_state(resume: Optional[str | Path], spec: NetworkSpec, config: TrainConfig,
                  device: torch.device) -> Optional[dict[str, Any]]:
    if resume is None:
        return None
    checkpoint = read_network_checkpoint(resume, device)
    if NetworkSpec.from_dict(checkpoint["network"]) != spec:
        raise RegistrationError(f"--resume {checkpoint['path']}: the checkpoint's network {checkpoint['network']} "
                                f"differs from the requested one {spec.to_dict()}; resume with the same "
                                "--dim/--grid/--stages/--channels, or start a new training.")
    if "optimizer" not in checkpoint or "rng" not in checkpoint:
        raise RegistrationError(f"--resume {checkpoint['path']}: holds weights only (no optimizer/RNG state); "
                                "it can be used for registration but not to resume training.")
    saved = checkpoint["config"]
    for key in ("batch_size", "similarity", "seed"):
        if saved.get(key) != getattr(config, key):
            raise RegistrationError(f"--resume {checkpoint['path']}: was trained with {key}={saved.get(key)!r}, "
                                    f"not {getattr(config, key)!r}; resume with the same settings.")
    return checkpoint


def train(dataset: NetworkDataset, spec: NetworkSpec, config: TrainConfig,
          checkpoint_dir: Optional[str | Path] = None, log_dir: Optional[str | Path] = None,
          resume: Optional[str | Path] = None, validation: Optional[list[ValidationCase]] = None,
          progress: ProgressCallback = silent, show_bar: bool = True) -> TrainOutcome:
    """Trains (or resumes training of) a network to `config.steps` steps; returns the final model."""
    ranks = _Ranks(config.device)
    try:
        return _train(dataset, spec, config, ranks, checkpoint_dir, log_dir, resume, validation, progress, show_bar)
    finally:
        ranks.close()


def _train(dataset: NetworkDataset, spec: NetworkSpec, config: TrainConfig, ranks: _Ranks,
           checkpoint_dir: Optional[str | Path], log_dir: Optional[str | Path], resume: Optional[str | Path],
           validation: Optional[list[ValidationCase]], progress: ProgressCallback, show_bar: bool) -> TrainOutcome:
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm

    device = ranks.device
    if config.batch_size % ranks.world:
        raise RegistrationError(f"--batch-size {config.batch_size} must be a multiple of the number of ranks "
                                f"({ranks.world}) so every rank gets the same share of the global batch.")
    torch.manual_seed(config.seed)
    model = RegistrationNetwork(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = network_loss(asdict(config))
    loss_fn.similarity.to(device)
    start = 0
    checkpoint = _resume_state(resume, spec, config, device)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _restore_rng(checkpoint["rng"], generator)
        start = int(checkpoint["step"])
    trained = DistributedDataParallel(model) if ranks.world > 1 else model
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    logs = _Logs(Path(log_dir) if (log_dir is not None and ranks.main) else None)
    bar = tqdm(total=config.steps, initial=start, desc="train", disable=not (show_bar and ranks.main),
               dynamic_ncols=True)
    history: list[dict[str, float]] = []
    saved: Optional[Path] = None
    validation_result: dict[str, float] = {}
    clock, pairs = time.perf_counter(), 0
    share = config.batch_size // ranks.world

    def save(step: int) -> Optional[Path]:
        if ranks.main and checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir / f"step_{step:07d}.pt", model, optimizer, step, generator, config, spec)
            save_checkpoint(checkpoint_dir / "latest.pt", model, optimizer, step, generator, config, spec)
        if ranks.world > 1:
            dist.barrier()
        return checkpoint_dir / "latest.pt" if checkpoint_dir is not None else None

    try:
        for step in range(start + 1, config.steps + 1):
            seeds = torch.randint(2 ** 62, (config.batch_size,), generator=generator).tolist()
            samples = [dataset.sample(seed) for seed in seeds[ranks.rank::ranks.world]]
            batch = {k: v.to(device) for k, v in collate(samples).items()}
            optimizer.zero_grad(set_to_none=True)
            loss, terms = loss_fn(trained, batch)
            if not np.isfinite(terms["loss"]):
                raise RegistrationError(f"training diverged at step {step} (loss is not finite); lower --lr or "
                                        "raise the regularisation.")
            loss.backward()
            optimizer.step()
            pairs += share * ranks.world
            values = dict(zip(terms, ranks.mean(list(terms.values()))))
            history.append({"step": step, **values})
            if step % config.log_every == 0 or step == config.steps:
                elapsed = time.perf_counter() - clock
                speed = pairs / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{values['loss']:.4f}", pairs_s=f"{speed:.1f}")
                if ranks.main:
                    logs.write("train", step, {**values, "pairs_per_s": speed, "lr": optimizer.param_groups[0]["lr"]})
                progress(Progress("train", step / config.steps, f"step {step} loss {values['loss']:.5f}"))
                clock, pairs = time.perf_counter(), 0
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == config.steps:
                saved = save(step)
            due = config.validate_every and step % config.validate_every == 0
            if validation and ranks.main and (due or step == config.steps):
                validation_result = validate_network(TrainedNetwork(model, spec, asdict(config), step), validation, device)
                logs.write("validation", step, validation_result)
    finally:
        bar.close()
        logs.close()
    return TrainOutcome(model, config.steps, history, saved, validation_result)
