"""`diffreg models list | download ID | verify [ID] | path ID | check ID`: the model catalog and cache.

`check` is the quiet form of `path` for programs (the Slicer module): exit code 0 when the weights are
cached and verified, otherwise 2 with the reason and the fix on stderr.
"""
from __future__ import annotations

import argparse

from .settings import add_progress_argument, progress_from_args


def _size(size) -> str:
    if size is None:
        return "?"
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def cmd_list(args: argparse.Namespace) -> int:
    """A table: id, kind, backbone, size, cache status; then the cache folder."""
    from ..features.catalog import load_catalog
    from ..features.weights import cache_dir, status

    rows = [("ID", "KIND", "BACKBONE", "SIZE", "STATUS")]
    for entry in load_catalog().values():
        size = "-" if entry.kind == "builtin" else _size(entry.total_size)
        rows.append((entry.id, entry.kind, entry.backbone, size, status(entry)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ncache folder: {cache_dir()}  (set DIFFREG_CACHE to change it)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from ..features.weights import download

    location = download(args.id, progress_from_args(args)[1], force=args.force)
    print(location)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hashes one model, or every model that is (partly) in the cache."""
    from ..features.catalog import load_catalog
    from ..features.weights import status, unreferenced, verify

    ids = [args.id] if args.id else [e.id for e in load_catalog().values() if status(e) not in ("missing", "built in")]
    if not ids:
        print("no model is in the cache yet (see `diffreg models list`).")
    for model_id in ids:
        location = verify(model_id, progress_from_args(args)[1])
        unchecked = unreferenced(model_id)
        if unchecked:
            print(f"{model_id}: unverified, {location}: no reference checksum for {', '.join(unchecked[:4])}"
                  f"{' ...' if len(unchecked) > 4 else ''} (sizes checked only); `diffreg models download "
                  f"{model_id} --force` fetches files whose checksum is known.")
        else:
            print(f"{model_id}: verified, {location}")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    from ..features.weights import path

    print(path(args.id))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..features.weights import path

    path(args.id)
    return 0


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `models` and its sub-commands to a `diffreg` subparsers object."""
    parser = subparsers.add_parser("models", help="list, download and verify diffusion model weights",
                                   description="The model catalog and the local weight cache.")
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="every catalog model with its size and cache status")
    listing.set_defaults(handler=cmd_list)
    for name, handler, text in (("download", cmd_download, "fetch a model's weights into the cache (checksummed)"),
                                ("path", cmd_path, "print the verified local path of a model's weights"),
                                ("check", cmd_check, "exit 0 if a model's weights are cached and verified")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("id", help="model id from `diffreg models list`")
        sub.set_defaults(handler=handler)
        if name == "download":
            sub.add_argument("--force", action="store_true", help="fetch again even if already verified")
            add_progress_argument(sub, piped="none")
    verify = commands.add_parser("verify", help="re-check sizes and SHA-256 of cached weights")
    verify.add_argument("id", nargs="?", help="model id (default: every cached model)")
    add_progress_argument(verify, piped="none")
    verify.set_defaults(handler=cmd_verify)
    return parser
