"""`diffreg`: register, apply, evaluate, demo, models, train and batch from the command line.

Bad input exits with code 2 and one line `error: ...` on stderr; nothing half-written is left.
With `--progress json` every progress event is one JSON object per line on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.signals import handlers_swapped
from ..engine.options import RegistrationOptions
from ..errors import Cancelled, Interrupted, RegistrationError
from ..io.atomic import json_text, write_text
from ..io.paths import existing_path
from ..progress import progress_kind
from .models import add_models_parser
from .network import add_network_parsers
from .settings import (add_progress_argument, add_settings_arguments, finetune_settings, network_refusals,
                       options_from_args, progress_from_args)
from .worker import add_worker_parser

AGREEMENT_FILE = "agreement.nii.gz"
EPILOG = """examples:
  diffreg register --fixed fixed.nii.gz --moving moving.nii.gz --output-dir out
  diffreg register --fixed f.nii.gz --moving m.nii.gz --output-dir out --preset multimodal --set lr=0.3
  diffreg apply --transform out/transform.h5 --input labels.nii.gz --reference f.nii.gz --output l.nii.gz --labels
  diffreg evaluate --transform out/transform.h5 --fixed-labels fl.nii.gz --moving-labels ml.nii.gz
  diffreg demo --output-dir out/demo
The transform maps fixed-space points to moving space (ITK/Slicer/ANTs resampling direction):
apply it to the moving image to overlay it on the fixed one."""


def _register_parser(subparsers) -> None:
    parser = subparsers.add_parser("register", help="register a moving image onto a fixed image",
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--fixed", required=True, help="fixed image (NIfTI, NRRD, MHA, PNG, DICOM folder)")
    parser.add_argument("--moving", required=True, help="moving image, any grid or orientation")
    parser.add_argument("--output-dir", required=True, help="folder for the outputs (created)")
    parser.add_argument("--fixed-mask", help="binary mask on the fixed grid: measure similarity only there")
    parser.add_argument("--moving-mask", help="binary mask on the moving grid")
    add_settings_arguments(parser, "register")
    parser.add_argument("--transform", default="transform.h5", help="transform file name (.h5, .nii.gz, .mha)")
    parser.add_argument("--warped", default="warped.nii.gz", help="warped moving image file name")
    parser.add_argument("--vector-field", help="also write the field as a vector image, the ANTs warp format "
                                               "(e.g. transform.nii.gz)")
    parser.add_argument("--affine", help="also write the affine part alone (e.g. affine.tfm)")
    parser.add_argument("--inverse", help="also write the inverse (moving->fixed) field (e.g. inverse.h5)")
    add_progress_argument(parser)
    parser.set_defaults(handler=_cmd_register)


def _cmd_register(args: argparse.Namespace) -> int:
    progress_shown, progress = progress_from_args(args)
    written = register_files(args, progress)
    if progress_shown != "json":
        _print_outputs(written)
    return 0


def register_files(args: argparse.Namespace, progress, preview=None) -> dict[str, str]:
    """`diffreg register`'s work on parsed arguments: check, read, register, write; role -> path written.
    The review page runs it in its own process (the backend stays loaded), with `preview` per level."""
    for role, path in (("fixed image", args.fixed), ("moving image", args.moving), ("fixed mask", args.fixed_mask),
                       ("moving mask", args.moving_mask)):
        if path:
            existing_path(path, role)
    options = options_from_args(args, "register")
    config = options.config()  # bad paths and settings are answered before torch and SimpleITK load
    if args.network:
        _check_network_settings(args, options)
    from ..engine.outputs import OutputRequest, register_and_write
    from ..io.images import read_image, read_mask
    from ..progress import Progress

    fixed = read_image(args.fixed, "fixed image")
    moving = read_image(args.moving, "moving image")
    fixed_mask = read_mask(args.fixed_mask, fixed, "fixed mask") if args.fixed_mask else None
    moving_mask = read_mask(args.moving_mask, moving, "moving mask") if args.moving_mask else None
    if not args.network:
        from ..engine.registration import overlap_warnings

        overlap_warnings(fixed, moving, config)  # images that cannot meet are refused before the folder is made
    request = OutputRequest(transform=args.transform, vector_field=args.vector_field, warped=args.warped,
                            affine=args.affine, inverse=args.inverse,
                            agreement=AGREEMENT_FILE if options.agreement else None)
    if args.network:
        from ..network.inference import register_with_network

        run = partial(register_with_network, fixed, moving, args.network, finetune_steps=args.finetune_steps,
                      device=config.device, progress=progress, inverse=bool(args.inverse),
                      **finetune_settings(options, config))
    else:
        from ..engine.registration import register

        run = partial(register, fixed, moving, config, fixed_mask, moving_mask, progress=progress,
                      inverse=bool(args.inverse), preview=preview)
    result, written = register_and_write(args.output_dir, request, fixed, moving, run,
                                         (args.fixed_mask, args.moving_mask, args.network, args.config))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    progress(Progress("done", 1.0, written["report"]))
    return written


def _check_network_settings(args: argparse.Namespace, options: RegistrationOptions) -> None:
    """`--network` predicts the transform; only fine-tuning uses the similarity settings, and no step uses masks."""
    refused = [flag for flag, value in (("--fixed-mask", args.fixed_mask), ("--moving-mask", args.moving_mask))
               if value]
    refused += network_refusals(options)
    if refused:
        raise RegistrationError(f"--network cannot honour {', '.join(refused)}: the network predicts the transform "
                                "without masks, and similarity settings only apply with --finetune-steps N. Drop "
                                "them, add --finetune-steps, or register without --network.")


def _print_outputs(written: dict[str, str]) -> None:
    for role, path in written.items():
        print(f"{role:>13}: {path}")


def _apply_parser(subparsers) -> None:
    parser = subparsers.add_parser("apply", help="resample an image or label map with a transform")
    parser.add_argument("--transform", required=True, help="fixed->moving transform (.h5, .nii.gz, .tfm)")
    parser.add_argument("--input", required=True, help="image in moving space")
    parser.add_argument("--reference", required=True, help="image that defines the output grid (the fixed)")
    parser.add_argument("--output", required=True, help="output file")
    parser.add_argument("--labels", action="store_true", help="label map: nearest neighbour, keep the type")
    parser.set_defaults(handler=_cmd_apply)


def _cmd_apply(args: argparse.Namespace) -> int:
    from ..api import apply
    from ..engine.outputs import check_folder, check_output_name
    from ..io.images import IMAGE_WRITE_SUFFIXES, write_image

    output = Path(args.output)
    check_output_name(output, "output", IMAGE_WRITE_SUFFIXES, (args.transform, args.input, args.reference))
    check_folder(output.parent)
    write_image(apply(args.transform, args.input, args.reference, labels=args.labels), args.output)
    print(f"wrote {args.output}")
    return 0


def _evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="Dice, landmark TRE and folding of a transform")
    parser.add_argument("--transform", required=True, help="fixed->moving transform")
    parser.add_argument("--reference", help="fixed image (grid for the field); default: the fixed labels")
    parser.add_argument("--fixed-labels", help="label map on the fixed grid")
    parser.add_argument("--moving-labels", help="label map in moving space")
    parser.add_argument("--fixed-landmarks", help=".mrk.json, .fcsv or .csv landmarks in fixed space")
    parser.add_argument("--moving-landmarks", help="matching landmarks in moving space")
    parser.add_argument("--output", help="write the numbers as JSON here too")
    parser.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine.evaluation import evaluate_transform
    from ..engine.outputs import check_folder, check_output_name

    if args.output:
        inputs = (args.transform, args.reference, args.fixed_labels, args.moving_labels, args.fixed_landmarks,
                  args.moving_landmarks)
        check_output_name(Path(args.output), "output", (".json",), inputs)
        check_folder(Path(args.output).parent)

    report = evaluate_transform(args.transform, reference=args.reference, fixed_labels=args.fixed_labels,
                      moving_labels=args.moving_labels, fixed_landmarks=args.fixed_landmarks,
                      moving_landmarks=args.moving_landmarks)
    text = json_text(report)
    if args.output:
        write_text(args.output, text)
    print(text)
    return 0


def _demo_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the main job: register Colin27 skull-stripped to Colin27 with "
                                                "skull under a known deformation, and report")
    parser.add_argument("--output-dir", default="out/demo", help="folder for the outputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the known deformation")
    parser.add_argument("--preset", help="override the automatic choice of preset")
    add_progress_argument(parser)
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    shown, progress = progress_from_args(args)
    written = run_demo(args.output_dir, seed=args.seed, preset=args.preset, progress=progress)
    if shown != "json":
        _print_outputs(written)
    return 0


def _presets_parser(subparsers) -> None:
    parser = subparsers.add_parser("presets", help="list the named settings, what they change, and every setting")
    parser.add_argument("--markdown", action="store_true", help="the settings as the README's Markdown table")
    parser.set_defaults(handler=_cmd_presets)


def _cmd_presets(args: argparse.Namespace) -> int:
    from ..engine.config import PRESETS
    from .settings import settings_table

    if args.markdown:
        print(settings_table(markdown=True))
        return 0
    for name, preset in PRESETS.items():
        print(f"{name}: {preset.summary}\n    {json.dumps(preset.settings) if preset.settings else '(the defaults)'}")
    print("\nsettings (--set KEY=VALUE, or a --config file; the flags of `diffreg register --help` are shortcuts):")
    print(settings_table(markdown=False))
    return 0


def _review_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "review", help="review registrations in a browser on real Slicer views (needs the `review` extra)",
        description="A web page (trame-slicer) to pick images under the data folder, run registrations and "
                    "review them: fixed, moving under the result, overlay, checkerboard; save the scene.",
        epilog="On a GPU server: run it there (loopback, the default) and forward the port with "
               "`ssh -L 8080:127.0.0.1:8080 server`, then open http://127.0.0.1:8080/ here.")
    parser.add_argument("--data", default=".", help="the only folder whose images the page can use and where "
                                                    "scenes are saved (default: the current folder)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                            "machine only; any other needs the token)")
    parser.add_argument("--port", type=int, default=8080, help="port (0: a free one)")
    parser.add_argument("--token", help="the token the page asks for (default: generated and printed when the "
                                        "host is not loopback)")
    parser.set_defaults(handler=_cmd_review)


def _cmd_review(args: argparse.Namespace) -> int:
    from .review.server import serve

    return serve(args.data, host=args.host, port=args.port, token=args.token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffreg", description="Medical image registration guided by "
                                     "features of pre-trained diffusion models.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_register_parser, _apply_parser, _evaluate_parser, _demo_parser, _presets_parser,
                _review_parser):
        add(subparsers)
    add_models_parser(subparsers)
    add_network_parsers(subparsers)
    add_worker_parser(subparsers)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM and SIGHUP raise Interrupted, like Ctrl-C raises KeyboardInterrupt, so every cleanup runs."""
    raise Interrupted(signum)


def _fail(code: int, stage: str, message: str, json_events: bool) -> int:
    """The one `error:` line on stderr; with JSON progress also a final event on stdout."""
    if json_events:
        print(json.dumps({"stage": stage, "fraction": 1.0, "message": message}), flush=True)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def openmp_waiting() -> None:
    """How OpenMP threads wait between torch's operations, unless the user chose otherwise; it must be set
    before torch starts its thread pool, so here, not in register().

    Spinning until the next operation is fast on idle cores and ruinous on busy ones (a registration many
    times slower when other processes keep the cores busy); sleeping at once (PASSIVE) is safe but slow on
    idle cores. libgomp (torch's Linux wheels) spinning 2000 times, then sleeping, was as fast as spinning
    on idle cores and no slower than PASSIVE on busy ones (README, measured results); other OpenMP runtimes
    sleep at once.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")


def main(argv: Optional[Sequence[str]] = None) -> int:
    openmp_waiting()
    parser = build_parser()
    args = parser.parse_args(argv)
    piped = getattr(args, "progress_when_piped", "none")
    json_events = progress_kind(getattr(args, "progress", "none"), piped) == "json"
    try:
        with handlers_swapped(_interrupt, ("SIGTERM", "SIGHUP")), warnings.catch_warnings():
            # library warnings (numpy's invalid values, torch's deprecations) are not the user's to act on:
            # the console holds the outputs, the warnings the run itself reports, or one `error:` line
            warnings.simplefilter("ignore")
            return args.handler(args)
    except PLAIN_FAILURES as error:
        return _fail(*failure(error), json_events)


PLAIN_FAILURES = (RegistrationError, OSError, MemoryError, Cancelled, KeyboardInterrupt)


def failure(error: BaseException) -> tuple[int, str, str]:
    """(exit code, final progress stage, one-line message) of a command ended by one of PLAIN_FAILURES."""
    if isinstance(error, RegistrationError):
        return 2, "error", str(error)
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return 2, "error", f"{where}{error.strerror or error}. Check the path, its permissions and free space."
    if isinstance(error, MemoryError):
        return 2, "error", "not enough memory for these images and settings; use smaller images, fewer levels " \
                           "or a machine with more memory."
    if isinstance(error, Cancelled):
        return 130, "cancelled", "cancelled: no partial outputs were left"
    signum = getattr(error, "signum", signal.SIGINT)
    return 128 + signum, "cancelled", f"interrupted by {signal.Signals(signum).name}: no partial outputs were left"


def run() -> None:
    """The `diffreg` command: `main()`, then the process ends at once with its exit code: Python's own
    teardown with torch and SimpleITK loaded is a noticeable part of a short registration (README, measured
    results), and every file is closed and every output committed by then. An unexpected exception still
    ends the usual way, with its traceback."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
