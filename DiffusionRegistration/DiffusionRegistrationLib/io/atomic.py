"""Atomic output, and the one rule for what the tool deletes: only what it can prove it wrote.

Staging. Every file is written into a staging folder `.diffreg-<token>.stage` beside its final place and under
its final name, so a format with a header and a data file (.mhd + .zraw, .nhdr + .raw.gz) names its data file
as it will be named. The folder holds a marker file (`MARKER`) naming its token, the writing process and the
journal; a folder is a temporary of this tool only when its name matches and its marker agrees.

Commit. An `OutputSet` puts its files in place through a journal `.diffreg-<token>.journal` in its home folder,
one rename per step:
  1. the journal, listing every move, is renamed into place ("prepared");
  2. each file being replaced, and each retired file of an earlier set, is moved into `.diffreg-<token>.old`;
  3. each new file is moved from its staging folder to its final name;
  4. the journal is rewritten as "committed": the commit point;
  5. the old copies, the staging folders and then the journal are deleted.
A process killed at any instant leaves its journal. `recover(folder)`, run before the next write there, rolls
a prepared journal back (new files removed, old ones restored) and finishes a committed one, so the folder
holds the whole old set or the whole new one. Detached headers go in after their data files and out before
them, so every file in the folder loads at every step. Copies moved aside are deleted only after the commit
point; nothing of a process that is still running, of another user, or outside a journal's own staging and
aside folders is touched. OS errors become RegistrationError naming the file.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from ..core.signals import signals_held
from ..errors import RegistrationError

MARKER = ".diffreg-temporary"
_TEMPORARY = re.compile(r"^\.diffreg-([0-9a-f]{16})\.(stage|old)$")
_JOURNAL = re.compile(r"^\.diffreg-([0-9a-f]{16})\.journal$")
_HEADERS = (".mhd", ".nhdr")  # detached headers: moved in after their data files, out before them


def _is_header(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(_HEADERS)


class WriteError(RegistrationError, OSError):
    """An output could not be written; also an OSError, so callers that tolerate OS errors still do."""


def os_error(path: str | os.PathLike, error: OSError, doing: str = "cannot write") -> WriteError:
    """A WriteError naming `path`, the OS reason and the usual fix."""
    reason = error.strerror or str(error)
    return WriteError(f"{doing} {path}: {reason}. Choose a writable folder with enough free space "
                      "(--output-dir) or free some space.")


def _move(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """One step of a commit or a recovery: an atomic rename."""
    os.replace(source, target)


def _delete(path: str | os.PathLike) -> None:
    """One step of a clean-up: removes a file or an empty folder; one that is gone already is no error."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path))


def real_path(path: str | os.PathLike, role: str) -> Path:
    """`path` with every symbolic link followed; RegistrationError naming it when its links form a loop."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        return Path(os.path.realpath(path))
    except OSError as error:
        if error.errno != errno.ELOOP:
            return Path(os.path.realpath(path))
        raise RegistrationError(f"{role} {path}: its symbolic links form a loop. Give a path without the loop "
                                "(--output-dir).") from None


def _running(pid: Any) -> bool:
    """Whether process `pid` exists (this one included); a marker without a valid pid counts as running."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    if pid == os.getpid():
        return True
    if os.name == "nt":
        import ctypes

        kernel = ctypes.windll.kernel32
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_temporary(folder: Path, token: str, kind: str, journal: Path) -> Path:
    """Creates the staging ("stage") or aside ("old") folder of set `token` in `folder`, with its marker."""
    path = folder / f".diffreg-{token}.{kind}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        with open(path / MARKER, "x", encoding="utf-8") as handle:
            handle.write(json.dumps({"diffreg": "temporary", "token": token, "pid": os.getpid(),
                                     "journal": str(journal)}))
    except OSError as error:
        raise os_error(folder, error) from None
    return path


def _marker(folder: Path) -> Optional[dict]:
    """The marker of one of this tool's staging or aside folders, or None when `folder` is not one."""
    match = _TEMPORARY.match(folder.name)
    if not match or folder.is_symlink() or not folder.is_dir():
        return None
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("diffreg") != "temporary" or marker.get("token") != match.group(1):
        return None
    return marker


def _is_staging(folder: Path) -> bool:
    marker = _marker(folder)
    return marker is not None and folder.name.endswith(".stage")


def _clear(folder: str | os.PathLike, keep_aside: bool = False) -> None:
    """Deletes a staging or aside folder and the files in it. With `keep_aside`, an aside folder that still
    holds a copy is kept: those copies are deleted only after the commit point."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    if keep_aside and folder.name.endswith(".old") and any(e.name != MARKER for e in entries):
        return
    for entry in entries:
        _delete(entry)
    _delete(folder)


def _ours(path: Path) -> bool:
    """Whether `path` belongs to this user (POSIX): another user's journal or temporary is never acted on."""
    return not hasattr(os, "geteuid") or path.lstat().st_uid == os.geteuid()


def _check_plan(plan: Any, token: str) -> None:
    """ValueError unless every path of `plan` is where set `token` puts it: staged files and copies in its own
    staging and aside folders, each beside the final file it stands for."""
    if not isinstance(plan, dict) or plan.get("diffreg") != "journal" or plan.get("token") != token:
        raise ValueError("not a journal of this tool")
    folders = {f".diffreg-{token}.stage": plan["moves"], f".diffreg-{token}.old": plan["aside"]}
    for folder_name, pairs in folders.items():
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise ValueError("a move is not a pair of paths")
            temporary = Path(pair[0] if folder_name.endswith(".stage") else pair[1])
            final = Path(pair[1] if folder_name.endswith(".stage") else pair[0])
            if temporary.parent.name != folder_name or final != temporary.parent.parent / temporary.name:
                raise ValueError(f"{temporary} does not stand for {final}")
    if not all(Path(str(p)).name in folders for p in plan["temporaries"]):
        raise ValueError("a temporary folder of another set")


def _read_plan(journal: Path) -> dict:
    try:
        plan = json.loads(journal.read_text(encoding="utf-8"))
        _check_plan(plan, _JOURNAL.match(journal.name).group(1))
        return plan
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RegistrationError(f"{journal}: the journal of an interrupted commit cannot be read ({error}). Check the "
                                "files beside it and in the .diffreg-*.old folder of the same token, then delete "
                                "the journal.") from None


def _finish(plan: dict, committed: bool) -> None:
    """Step 5 (and the end of a roll-back): deletes the set's temporaries, then its journal."""
    for folder in plan.get("temporaries", []):
        _clear(folder, keep_aside=not committed)
    _delete(plan["journal"])


def _roll_back(plan: dict) -> None:
    """Puts the set that a prepared journal was replacing back: new files removed, old ones moved back.
    Idempotent, so a recovery that is itself killed can run again."""
    copies = dict(plan["aside"])
    for staged, final in reversed(plan["moves"]):
        if final in copies and not os.path.lexists(copies[final]):
            continue  # never moved aside, or moved back already: `final` is the earlier file
        if os.path.lexists(final) and not os.path.lexists(staged):
            _delete(final)  # the new file, moved in before the process stopped
    for final, copy in reversed(plan["aside"]):
        if os.path.lexists(copy):
            _move(copy, final)
    _finish(plan, committed=False)


def _recover_journal(journal: Path) -> bool:
    """Completes or rolls back the commit of a process that stopped; False while that process still runs."""
    if not journal.is_file() or not _ours(journal):
        return False
    plan = _read_plan(journal)
    if _running(plan.get("pid")):
        return False
    plan["journal"] = str(journal)
    try:
        if plan.get("state") == "committed":
            _finish(plan, committed=True)
        else:
            _roll_back(plan)
    except OSError as error:
        raise os_error(journal.parent, error, "cannot restore the outputs of an interrupted run in") from None
    return True


def _remove_temporary(folder: Path) -> bool:
    """Removes a staging folder of a process that stopped before its commit (or an aside folder it made but
    never filled); True if removed."""
    marker = _marker(folder)
    try:
        entries = list(folder.iterdir())
        if not _ours(folder):
            return False
    except OSError:
        return False
    if marker is None:
        return False  # not provably ours (a kill between a folder's creation and its marker leaves it empty)
    if _running(marker.get("pid")):
        return False
    journal = Path(str(marker.get("journal")))
    if _JOURNAL.match(journal.name) and journal.is_file():
        return _recover_journal(journal)
    if folder.name.endswith(".old") and any(e.name != MARKER for e in entries):
        return False  # copies moved aside whose journal is gone: never deleted
    _clear(folder)
    return True


def recover(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Finishes or rolls back every interrupted commit in `folder` (and below when `recursive`) and removes the
    staging folders of stopped processes; returns the journals and folders handled."""
    root = Path(folder)
    if not root.is_dir():
        return []

    def found(pattern: re.Pattern) -> list[Path]:
        return sorted(p for p in (root.rglob(".diffreg-*") if recursive else root.glob(".diffreg-*"))
                      if pattern.match(p.name))

    handled = [journal for journal in found(_JOURNAL) if _recover_journal(journal)]
    try:
        handled += [temporary for temporary in found(_TEMPORARY)
                    if temporary.exists() and _remove_temporary(temporary)]
    except OSError as error:
        raise os_error(root, error, "cannot remove the temporaries of an interrupted run in") from None
    return handled


_LOCKS: dict[str, list[int]] = {}  # folder -> [descriptor holding its lock, holders in this process]
_LOCKS_GUARD = threading.Lock()


@contextmanager
def writing_into(folder: str | os.PathLike) -> Iterator[Path]:
    """The output folder, created, held for this process and recovered from interrupted runs, for the block.

    RegistrationError when the name is empty or another process is writing there. The hold is the kernel's
    lock on the folder itself (flock; none on Windows): it ends with the process, so a killed run leaves no
    stale lock and no file. Nested holds in one process share it."""
    if not str(folder).strip():
        raise RegistrationError("output folder: the name is empty. Give a folder (--output-dir out; . is the "
                                "current folder).")
    path = real_path(_absolute(folder), "output folder")
    if path.exists() and not path.is_dir():
        raise RegistrationError(f"output folder {path}: is a file, not a folder. Choose another --output-dir.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise os_error(path, error, "cannot write into the output folder") from None
    key = str(path)
    with _LOCKS_GUARD:
        if key in _LOCKS:
            _LOCKS[key][1] += 1
        else:
            _LOCKS[key] = [_lock(path), 1]
    try:
        recover(path)
        yield path
    finally:
        with _LOCKS_GUARD:
            _LOCKS[key][1] -= 1
            if _LOCKS[key][1] == 0:
                descriptor = _LOCKS.pop(key)[0]
                if descriptor >= 0:
                    os.close(descriptor)


def _lock(folder: Path) -> int:
    """A descriptor holding the exclusive lock of `folder` (-1 where the platform has no flock)."""
    try:
        import fcntl
    except ImportError:
        return -1
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError as error:
        raise os_error(folder, error, "cannot write into the output folder") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise RegistrationError(f"output folder {folder}: another diffreg run is writing into it now. Wait until it "
                                "has finished, or choose another --output-dir.") from None
    return descriptor


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the staging path of `path`; puts the file (and a data file the format writes beside it) in place
    only if the block succeeds. Inside an OutputSet's staging folder the path is a temporary already."""
    target = Path(path)
    try:
        if _is_staging(target.parent):
            yield target
            return
        with OutputSet(target.parent) as outputs:
            yield outputs.path(target)
    except RegistrationError:
        raise
    except OSError as error:
        raise os_error(target, error) from None


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
        with open(path, "w+b") as handle:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, size)
            else:
                for _ in range(0, size, 1 << 20):
                    handle.write(bytes(min(1 << 20, size - handle.tell())))
            handle.truncate(0)
    except OSError as error:
        raise os_error(final, error) from None


class OutputSet:
    """A group of outputs written into staging folders and put in place together by `commit()`.

    A run that fails or is cancelled before `commit()` leaves none of its files behind; a failure during
    `commit()` restores the files it was replacing; a kill during it is undone or completed by `recover`.
    `retire(paths)` names files of an earlier set that the commit removes with the set it replaces.
    The journal lives in `home` (default: the folder of the first file).
    """

    def __init__(self, home: Optional[str | os.PathLike] = None) -> None:
        self._token = secrets.token_hex(8)
        self._home = _absolute(home) if home is not None else None
        self._stages: dict[Path, Path] = {}  # final folder -> its staging folder
        self._retired: list[Path] = []

    @property
    def _journal(self) -> Path:
        assert self._home is not None
        return self._home / f".diffreg-{self._token}.journal"

    def _stage(self, folder: Path) -> Path:
        if folder not in self._stages:
            self._stages[folder] = _make_temporary(folder, self._token, "stage", self._journal)
        return self._stages[folder]

    def path(self, final: str | os.PathLike) -> Path:
        """Where to write `final` now: its name in the staging folder beside it."""
        target = _absolute(final)
        if self._home is None:
            self._home = target.parent
        return self._stage(target.parent) / target.name

    def retire(self, paths: Iterable[str | os.PathLike]) -> None:
        self._retired += [_absolute(p) for p in paths]

    def _moves(self) -> list[tuple[Path, Path]]:
        return [(entry, folder / entry.name) for folder, stage in self._stages.items()
                for entry in sorted(stage.iterdir()) if entry.name != MARKER]

    def commit(self) -> list[Path]:
        """Puts every staged file in place (steps 1-5 of the module's docstring); returns their final paths."""
        try:
            with signals_held():
                moves = self._moves()
                finals = {final for _, final in moves}
                retired = [p for p in dict.fromkeys(self._retired) if p not in finals and os.path.lexists(p)]
                if len(moves) == 1 and not retired:
                    _move(*moves[0])
                    self.discard()
                elif moves or retired:
                    self._swap(moves, retired)
        except RegistrationError:
            self.discard()
            raise
        except OSError as error:
            self.discard()
            raise os_error(self._final_name(str(getattr(error, "filename", None) or "the outputs")), error) from None
        return [final for _, final in moves]

    def _swap(self, moves: list[tuple[Path, Path]], retired: list[Path]) -> None:
        home_stage = self._stage(self._home)
        moves = sorted(moves, key=lambda move: _is_header(move[1]))
        replaced = sorted([final for _, final in moves if os.path.lexists(final)] + retired,
                          key=lambda path: not _is_header(path))
        asides = {folder: _make_temporary(folder, self._token, "old", self._journal)
                  for folder in dict.fromkeys(p.parent for p in replaced)}
        plan = {"diffreg": "journal", "token": self._token, "pid": os.getpid(), "state": "prepared",
                "journal": str(self._journal), "moves": [[str(s), str(f)] for s, f in moves],
                "aside": [[str(f), str(asides[f.parent] / f.name)] for f in replaced],
                "temporaries": [str(p) for p in [*self._stages.values(), *asides.values()]]}
        try:
            self._write_plan(plan, home_stage)
            for final, copy in plan["aside"]:
                _move(final, copy)
            for staged, final in moves:
                _move(staged, final)
            self._write_plan({**plan, "state": "committed"}, home_stage)
        except OSError:
            _roll_back(plan)
            raise
        self._stages.clear()
        try:
            _finish(plan, committed=True)
        except OSError:
            pass  # the new set is in place; the next recover() deletes what is left

    def _write_plan(self, plan: dict, stage: Path) -> None:
        draft = stage / f"{self._journal.name}.draft"
        draft.write_text(json.dumps(plan), encoding="utf-8")
        _move(draft, self._journal)

    def _final_name(self, text: str) -> str:
        """`text` with each staging path replaced by the final path the user asked for."""
        for stage in self._stages.values():
            text = text.replace(f"{os.sep}{stage.name}", "")
        return text

    def discard(self) -> None:
        for stage in self._stages.values():
            try:
                _clear(stage)
            except OSError:
                pass  # removed by the next recover() in that folder
        self._stages.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        text = self._final_name(str(exc)) if isinstance(exc, RegistrationError) else None
        self.discard()
        if text is not None and text != str(exc):
            raise type(exc)(text) from None
