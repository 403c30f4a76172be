"""Atomic output: files appear complete under their final name, or not at all."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


def _temporary_sibling(path: Path) -> Path:
    """A unique name in the same folder that keeps the suffixes, so writers pick the right format."""
    suffix = "".join(path.suffixes)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(handle)
    os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    return Path(name)


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files that an atomic write killed mid-way left in `folder` (and below)."""
    root = Path(folder)
    removed = [p for p in root.rglob(".*.partial*") if p.is_file()] if root.is_dir() else []
    for path in removed:
        path.unlink()
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


class OutputSet:
    """A group of outputs written to temporary names and renamed together at commit.

    A run that fails or is cancelled before `commit()` leaves none of its files behind.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def path(self, final: str | os.PathLike) -> Path:
        target = Path(final)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = _temporary_sibling(target)
        self._pending.append((temporary, target))
        return temporary

    def commit(self) -> list[Path]:
        done = []
        for temporary, target in self._pending:
            os.replace(temporary, target)
            done.append(target)
        self._pending.clear()
        return done

    def discard(self) -> None:
        for temporary, _ in self._pending:
            if temporary.exists():
                temporary.unlink()
        self._pending.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
