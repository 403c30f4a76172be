"""`diffreg train` and `diffreg batch`: the network's subcommands, added to the main parser by
`add_network_parsers(subparsers)`. Each subparser sets `handler` (a function of the parsed args that
returns an exit code). Under torchrun the same entry point runs on every rank:
`torchrun --nproc_per_node N -m DiffusionRegistrationLib.cli.main train ...`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import RegistrationError
from ..io.structured import parse_json
from ..progress import json_lines, silent
from .settings import (add_progress_argument, add_settings_arguments, finetune_settings, network_refusals,
                       options_from_args, progress_from_args)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers (e.g. 128,128)") from None


def _json(text: str) -> dict:
    try:
        value = parse_json(text, "the value")
    except RegistrationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"'{text}' must be a JSON object, e.g. '{{\"sigma\": 2}}'")
    return value


def add_network_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds `train` and `batch` to the main `diffreg` parser."""
    train = subparsers.add_parser("train", help="train a registration network",
                                  description="Train the coarse-to-fine registration network (also under torchrun).")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help="CSV with columns fixed,moving[,fixed_labels,moving_labels]")
    source.add_argument("--images", help="CSV with column image[,labels]; pairs drawn at random (inter-subject)")
    source.add_argument("--folder", help="folder of images; all ordered pairs (or --folder-pairing consecutive)")
    source.add_argument("--synthetic", nargs="+", metavar="IMAGE",
                        help="images warped by random smooth deformations (known ground truth)")
    train.add_argument("--folder-pairing", choices=("all", "consecutive"), default="all")
    train.add_argument("--validation-pairs", help="CSV of held-out pairs (labels/landmarks columns give Dice/TRE)")
    train.add_argument("--validation-synthetic", type=int, default=0, metavar="N",
                       help="N held-out synthetic pairs from the --synthetic images (TRE against the known field)")
    train.add_argument("--similarity", default="lncc", help="any similarity of the engine (lncc, mse, diffusion ...)")
    train.add_argument("--similarity-params", type=_json, default={}, help="JSON object of similarity parameters")
    train.add_argument("--regularizer", default="diffusion", choices=("diffusion", "bending"))
    train.add_argument("--regularization", type=float, default=1.0, help="lambda of the regulariser")
    train.add_argument("--inverse-consistency", type=float, default=0.0, help="GradICON weight (0: off)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=4, help="global batch (split across torchrun ranks)")
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--finetune-lr", type=float, default=1e-4, help="default lr of per-pair fine-tuning")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-dir", required=True)
    train.add_argument("--checkpoint-every", type=int, default=500)
    train.add_argument("--resume", help="checkpoint file or folder (latest.pt) to continue from")
    train.add_argument("--log-dir", help="CSV and TensorBoard logs")
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--validate-every", type=int, default=0)
    train.add_argument("--dim", type=int, default=2, choices=(2, 3))
    train.add_argument("--grid", type=_ints, default=(), help="network grid in voxels, x,y[,z] (default 128,128 "
                       "or 96,112,96)")
    train.add_argument("--stages", type=_ints, default=(8, 4, 2, 1))
    train.add_argument("--channels", type=_ints, default=(16, 32, 32, 32))
    train.add_argument("--output", choices=("displacement", "velocity"), default="displacement")
    train.add_argument("--max-deformation", type=float, default=8.0, help="synthetic: largest displacement (mm)")
    train.add_argument("--smoothness", type=float, default=20.0, help="synthetic: smoothness of the fields (mm)")
    train.add_argument("--augment-affine", type=float, default=0.05)
    train.add_argument("--augment-gamma", type=float, default=0.2)
    train.add_argument("--device", default="auto")
    train.add_argument("--threads", type=int)
    train.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    train.set_defaults(handler=run_train)

    batch = subparsers.add_parser("batch", help="register a cohort listed in a CSV",
                                  description="Register every pair of a CSV (fixed,moving[,name]) into a folder "
                                              "per pair (named by the plain, unique name, or by the row); skips "
                                              "pairs done from the same files and settings, registers changed ones "
                                              "again; a bad row fails that pair only; under torchrun the list is "
                                              "split across ranks.")
    batch.add_argument("pairs_csv")
    batch.add_argument("--output-dir", required=True)
    add_settings_arguments(batch, "batch")
    add_progress_argument(batch)
    batch.set_defaults(handler=run_batch_command)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from ..io.images import read_image
    from ..network.data import (Augmentation, PairDataset, RandomPairDataset, SyntheticPairDataset, cases_from_records,
                                folder_pairs, images_from_csv, pairs_from_csv, synthetic_cases)
    from ..network.model import NetworkSpec
    from ..engine.config import CONFIG_SETTINGS
    from ..network.train import TrainConfig, train

    config = TrainConfig(similarity=args.similarity, similarity_params=args.similarity_params,
                         regularizer=args.regularizer, regularization=args.regularization,
                         inverse_consistency=args.inverse_consistency, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, finetune_lr=args.finetune_lr, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                         validate_every=args.validate_every, device=args.device)
    if args.threads is not None:
        torch.set_num_threads(CONFIG_SETTINGS["threads"].check(args.threads))
    spec = NetworkSpec(dim=args.dim, size=args.grid, stages=args.stages, channels=args.channels, output=args.output)
    augmentation = Augmentation(args.augment_affine, args.augment_gamma)
    if args.pairs:
        dataset = PairDataset(pairs_from_csv(args.pairs), spec, augmentation)
    elif args.images:
        dataset = RandomPairDataset(images_from_csv(args.images), spec, augmentation)
    elif args.folder:
        dataset = PairDataset(folder_pairs(args.folder, args.folder_pairing), spec, augmentation)
    else:
        dataset = SyntheticPairDataset(args.synthetic, spec, args.max_deformation, args.smoothness, augmentation)
    validation = cases_from_records(pairs_from_csv(args.validation_pairs)) if args.validation_pairs else []
    if args.validation_synthetic:
        if not args.synthetic:
            raise RegistrationError("--validation-synthetic needs --synthetic images to deform.")
        validation += synthetic_cases([read_image(p) for p in args.synthetic], args.validation_synthetic,
                                      args.max_deformation, seed=10_000 + args.seed, smoothness_mm=args.smoothness)
    outcome = train(dataset, spec, config, args.checkpoint_dir, args.log_dir, args.resume, validation or None,
                    progress=json_lines() if args.progress == "json" else silent, show_bar=args.progress == "bar")
    if outcome.validation:
        print(json.dumps({"validation": outcome.validation}), file=sys.stderr)
    return 0


def run_batch_command(args: argparse.Namespace) -> int:
    from ..engine.outputs import check_folder
    from ..network.batch import run_batch

    options = options_from_args(args, "batch")
    config = options.config()
    refused = network_refusals(options)
    if refused:
        raise RegistrationError(f"batch --network cannot honour {', '.join(refused)}: similarity "
                                "settings only apply with --finetune-steps N.")
    check_folder(Path(args.output_dir))
    statuses = run_batch(args.pairs_csv, args.output_dir, None if args.network else config, args.network,
                         args.finetune_steps, config.device, progress_from_args(args)[1], finetune_settings(options, config))
    failed = [s for s in statuses if s["status"] == "failed"]
    for status in failed:
        print(f"failed: {status['name']}: {status['error']}", file=sys.stderr)
    return 1 if failed else 0
