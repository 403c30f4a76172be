"""Arguments shared by the commands that register (`register`, `batch`): derived from the declared options
(engine.options.RegistrationOptions: a preset, then `--config`, then `--set key=value` (repeatable), then
one flag per shortcut option, with the declaration's help, type and choices), and `--progress`."""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from ..engine.config import RegistrationConfig, parse_overrides
from ..engine.options import OPTION_SETTINGS, RegistrationOptions
from ..engine.settings import Choice, Flag, Number, Setting
from ..progress import ProgressCallback, progress_kind, progress_reporter


def _help(setting: Setting) -> str:
    unit = f" ({setting.unit})" if setting.unit else ""
    default = "" if setting.default is None else f"; default {setting.default}"
    return f"{setting.label.lower()}{unit}: {setting.help}{default}".replace("%", "%%")


def _parse(setting: Setting) -> Callable[[str], Any]:
    """The text of the flag as the declaration's type; range and choices are checked by the options themselves
    (one message for every front end)."""
    if isinstance(setting.kind, Number):
        return setting.kind.kind
    return str


def add_settings_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Adds --config, --set and a flag for every option declared for `command` (engine.options)."""
    parser.add_argument("--config", help="JSON or TOML file of settings applied over the preset (a saved "
                                         "RegistrationConfig, e.g. a Slicer job.json, or a few keys)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one setting over preset and config, repeatable: --set lr=0.3 --set levels=[4,2]")
    for name, setting in OPTION_SETTINGS.items():
        if command not in setting.commands:
            continue
        if isinstance(setting.kind, Flag):
            parser.add_argument(setting.flag, dest=name, action="store_const", const=True, default=setting.default,
                                help=_help(setting))
            continue
        metavar = "{" + ",".join(setting.choices) + "}" if isinstance(setting.kind, Choice) else name.upper()
        parser.add_argument(setting.flag, dest=name, type=_parse(setting), default=setting.default, metavar=metavar,
                            help=_help(setting))


def options_from_args(args: argparse.Namespace, command: str) -> RegistrationOptions:
    """The RegistrationOptions the parsed arguments describe (checked by the declaration)."""
    given = {name: getattr(args, name) for name, setting in OPTION_SETTINGS.items() if command in setting.commands}
    return RegistrationOptions(config_file=args.config, overrides=parse_overrides(args.set), **given)


def _similarity_flags(options: RegistrationOptions) -> list[str]:
    return [flag for flag in options.given() if flag not in ("--seed", "--device", "--network", "--finetune-steps")]


def network_refusals(options: RegistrationOptions) -> list[str]:
    """The settings a `--network` run cannot honour: similarity settings apply only with --finetune-steps."""
    return [] if not options.network or options.finetune_steps else _similarity_flags(options)


def finetune_settings(options: RegistrationOptions, config: RegistrationConfig) -> dict:
    """Similarity settings for fine-tuning a network when the user gave any; else {} (the network's own)."""
    if not _similarity_flags(options):
        return {}
    return {"similarity": config.similarity, "similarity_params": config.similarity_params,
            "regularization": config.regularization}


def _allowed(setting: Setting) -> str:
    return setting.kind.describe().replace("|", "/")


def settings_table(markdown: bool) -> str:
    """Every RegistrationConfig setting with its default, what is allowed, unit and help: a Markdown table (the
    README's) or plain lines (`diffreg presets`)."""
    from ..engine.config import CONFIG_SETTINGS

    def shown(value: Any) -> str:
        return json.dumps(list(value) if isinstance(value, tuple) else value)

    if not markdown:
        return "\n".join(f"  {name} = {shown(s.default)}{' ' + s.unit if s.unit else ''}: {s.help} (allowed: "
                         f"{_allowed(s)})" for name, s in CONFIG_SETTINGS.items())
    rows = ["| setting | default | allowed | unit | what it does |", "|---|---|---|---|---|"]
    rows += [f"| `{name}` | `{shown(s.default)}` | {_allowed(s)} | {s.unit} | {s.help.replace('|', '/')} |"
             for name, s in CONFIG_SETTINGS.items()]
    return "\n".join(rows)


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
