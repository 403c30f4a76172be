"""Arguments shared by the commands: the registration settings, the same in every command that registers
(`register`, `batch`: a preset, a settings file, `--set key=value` (repeatable) and the dedicated flags,
resolved by `engine.config.resolve_config` in that order; the choices shown come from the registries
themselves), and `--progress`."""
from __future__ import annotations

import argparse

from ..engine.config import PRESETS, RegistrationConfig, parse_overrides, resolve_config
from ..progress import ProgressCallback, progress_kind, progress_reporter
from ..similarity.registry import SIMILARITIES


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --preset, --config, --set, --similarity, --backbone, --mode, --steps, --regularization, --device,
    --seed."""
    parser.add_argument("--preset", default="default", metavar="NAME",
                        help=f"named settings: {', '.join(PRESETS)} (see `diffreg presets`)")
    parser.add_argument("--config", help="JSON or TOML file of settings applied over the preset (a saved "
                                         "RegistrationConfig, e.g. a Slicer job.json, or a few keys)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one setting over preset and config, repeatable: --set lr=0.3 --set levels=[4,2]")
    parser.add_argument("--similarity", metavar="NAME",
                        help=f"similarity: {', '.join(SIMILARITIES)}")
    parser.add_argument("--backbone", help="diffusion backbone id from the model catalog (diffreg models list)")
    parser.add_argument("--mode", choices=("exact", "fast"), help="diffusion similarity mode (exact: the paper's)")
    parser.add_argument("--steps", type=int, help="iterations at every deformable level")
    parser.add_argument("--regularization", type=float, help="weight of the smoothness regulariser")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")


def config_from_args(args: argparse.Namespace) -> RegistrationConfig:
    """The RegistrationConfig that the parsed settings arguments describe."""
    return resolve_config(args.preset, args.config, parse_overrides(args.set), similarity=args.similarity,
                          backbone=args.backbone, mode=args.mode, steps=args.steps,
                          regularization=args.regularization, device=args.device, seed=args.seed)


def settings_given(args: argparse.Namespace) -> list[str]:
    """The settings arguments the user gave (not left at their defaults), as flag names."""
    given = [f"--{name}" for name in ("config", "similarity", "backbone", "mode", "steps", "regularization", "seed")
             if getattr(args, name) is not None]
    if args.preset != "default":
        given.insert(0, "--preset")
    if args.set:
        given.append("--set")
    return given


def finetune_settings(args: argparse.Namespace, config: RegistrationConfig) -> dict:
    """Similarity settings for fine-tuning a network when the user gave any; else {} (the network's own)."""
    if not [flag for flag in settings_given(args) if flag != "--seed"]:
        return {}
    return {"similarity": config.similarity, "similarity_params": config.similarity_params,
            "regularization": config.regularization}


def add_progress_argument(parser: argparse.ArgumentParser, piped: str = "json") -> None:
    """`--progress auto|json|bar|none`; auto is a bar at a terminal and `piped` otherwise."""
    parser.add_argument("--progress", choices=("auto", "json", "bar", "none"), default="auto",
                        help="json: one JSON object per line on stdout (for programs); bar: a progress bar on "
                             f"stderr; none; auto: bar at a terminal, {piped} otherwise")
    parser.set_defaults(progress_when_piped=piped)


def progress_from_args(args: argparse.Namespace) -> tuple[str, ProgressCallback]:
    """The resolved progress kind and its callback."""
    kind = progress_kind(args.progress, args.progress_when_piped)
    return kind, progress_reporter(kind)
