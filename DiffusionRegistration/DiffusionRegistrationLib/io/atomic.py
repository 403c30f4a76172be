"""Atomic output: files appear complete under their final name, or not at all.

Every file is written under a temporary name (`.NAME.XXXX.partial.SUFFIX`) beside its final name and
renamed only when complete. An `OutputSet` renames a group of files together: the files it replaces are
first moved aside, and any failure during the renames puts them back, so a folder holds the whole old
set or the whole new one. Signals that would stop the process (Ctrl-C, SIGTERM, SIGHUP) are held back
during that short commit. Temporaries left by a killed process match `PARTIAL` and are removed by
`remove_partial_files` at the start of the next run in that folder. OS errors become RegistrationError
naming the final file.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from ..errors import RegistrationError

_UMASK = os.umask(0)
os.umask(_UMASK)
PARTIAL = re.compile(r"^\..+\.partial(\..*)?$")
_HELD = {signal.SIGINT, signal.SIGTERM} | ({signal.SIGHUP} if hasattr(signal, "SIGHUP") else set())


class WriteError(RegistrationError, OSError):
    """An output could not be written; also an OSError, so callers that tolerate OS errors still do."""


def os_error(path: str | os.PathLike, error: OSError, doing: str = "cannot write") -> WriteError:
    """A WriteError naming `path`, the OS reason and the usual fix."""
    reason = error.strerror or str(error)
    return WriteError(f"{doing} {path}: {reason}. Choose a writable folder with enough free space "
                      "(--output-dir) or free some space.")


def _temporary_sibling(path: Path, kind: str = "partial") -> Path:
    """A unique name in the same folder that keeps the suffixes, so writers pick the right format."""
    suffix = "".join(path.suffixes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{kind}{suffix}", dir=path.parent)
    except OSError as error:
        raise os_error(path, error) from None
    os.close(handle)
    os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    return Path(name)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    target = Path(path)
    temporary = _temporary_sibling(target)
    try:
        yield temporary
        os.replace(temporary, target)
    except RegistrationError:
        raise
    except OSError as error:
        raise os_error(target, error) from None
    finally:
        _remove(temporary)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes text atomically and reads it back before the rename (a short write is an error)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
        if temporary.read_text(encoding="utf-8") != text:
            raise not_as_written(path)
    return Path(path)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value: Any, indent: Optional[int] = 2, default: Optional[Callable[[Any], Any]] = None) -> str:
    """Strict JSON (NaN and Infinity written as null, which every JSON parser accepts)."""
    plain = json.loads(json.dumps(value, default=default))  # numpy scalars, paths ... to plain types first
    return json.dumps(_finite(plain), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, value: Any, default: Optional[Callable[[Any], Any]] = None) -> Path:
    """Writes strict JSON atomically, read back before the rename."""
    return write_text(path, json_text(value, default=default))


def not_as_written(path: str | os.PathLike, detail: str = "") -> WriteError:
    """The error for a file that does not read back as it was written (short write, full disk)."""
    return WriteError(f"cannot write {path}: the file did not read back as written{detail} (a full or failing "
                      "disk, or a file size limit?). Free some space or choose another --output-dir.")


def reserve(path: str | os.PathLike, size: int, final: str | os.PathLike) -> None:
    """Makes `path` `size` bytes long on disk and empties it again: WriteError now if the disk or a file-size
    limit cannot take it. For writers (HDF5) that crash on a failed write instead of reporting it."""
    try:
        with open(path, "r+b") as handle:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, size)
            else:
                for _ in range(0, size, 1 << 20):
                    handle.write(bytes(min(1 << 20, size - handle.tell())))
            handle.truncate(0)
    except OSError as error:
        raise os_error(final, error) from None


def remove_partial_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Deletes the temporaries that atomic writes killed mid-way left in `folder` (and below when
    `recursive`); returns them."""
    root = Path(folder)
    if not root.is_dir():
        return []
    candidates = root.rglob(".*.partial*") if recursive else root.iterdir()
    removed = [p for p in candidates if PARTIAL.match(p.name) and p.is_file()]
    for leftover in removed:
        _remove(leftover)
    return removed


@contextmanager
def signals_held() -> Iterator[None]:
    """Delays SIGINT/SIGTERM/SIGHUP until the block ends; then the usual handler acts (main thread only).

    Python-level handlers are swapped rather than the signal mask set: the mask of the main thread does not
    stop a signal sent to the process from being taken by another thread (torch's workers)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda number, frame: caught.append(number)) for signum in _HELD}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


class OutputSet:
    """A group of outputs written to temporary names and renamed together at commit.

    A run that fails or is cancelled before `commit()` leaves none of its files behind; a failure during
    `commit()` restores the files it was replacing. `retire(paths)` names files of an earlier set that
    the commit removes once the new set is in place.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self._retired: list[Path] = []

    def path(self, final: str | os.PathLike) -> Path:
        target = Path(final)
        temporary = _temporary_sibling(target)
        self._pending.append((temporary, target))
        return temporary

    def retire(self, paths: Iterable[Path]) -> None:
        finals = {target.resolve() for _, target in self._pending}
        self._retired += [p for p in paths if p.resolve() not in finals]

    def commit(self) -> list[Path]:
        with signals_held():
            created: list[Path] = []
            moved: list[tuple[Path, Path]] = []
            done: list[Path] = []
            try:
                for _, target in self._pending:
                    if target.exists():
                        created.append(_temporary_sibling(target, "replaced.partial"))
                        os.replace(target, created[-1])
                        moved.append((created[-1], target))
                for temporary, target in self._pending:
                    os.replace(temporary, target)
                    done.append(target)
            except (OSError, RegistrationError) as error:
                for target in done:
                    _remove(target)
                for backup, target in moved:
                    os.replace(backup, target)
                for backup in created:
                    _remove(backup)
                self.discard()
                if isinstance(error, RegistrationError):
                    raise
                raise os_error(getattr(error, "filename", None) or "the outputs", error) from None
            for backup in created:
                _remove(backup)
            for stale in self._retired:
                _remove(stale)
        self._pending.clear()
        return done

    def discard(self) -> None:
        for temporary, _ in self._pending:
            _remove(temporary)
        self._pending.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        names = [(str(temporary), str(target)) for temporary, target in self._pending]
        self.discard()
        if isinstance(exc, RegistrationError):
            text = str(exc)
            for temporary, target in names:  # name the file the user asked for, not its temporary
                text = text.replace(temporary, target)
            if text != str(exc):
                raise type(exc)(text) from None
