"""Input paths checked before anything heavy is imported or any file is opened, so a wrong path is
answered at once: a missing path, a folder where a file is needed, and anything that is not a regular
file (a named pipe, a device, a socket), which a reader would wait on forever or read without end."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union

from ..errors import RegistrationError

PathLike = Union[str, "os.PathLike[str]"]


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _mode(path: Path, role: str) -> int:
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        raise RegistrationError(f"{role} {path}: no such file or folder. Check the path.") from None
    except OSError as error:  # a symbolic link loop, a name too long, no permission to look
        raise RegistrationError(f"{role} {path}: cannot be opened ({error.strerror or error}). Check the path "
                                "and its permissions.") from None


def _refuse_special(path: Path, role: str, mode: int) -> None:
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise RegistrationError(f"{role} {path}: is {_kind(mode)}, not a file on disk; reading it could wait "
                                "forever. Save the data to a regular file and give that.")


def input_file(path: PathLike, role: str) -> Path:
    """`path` as a Path when it is a regular file (symbolic links followed); else a RegistrationError
    naming the role, the path and what it is instead (missing, a folder, a pipe, a device)."""
    path = Path(path)
    mode = _mode(path, role)
    _refuse_special(path, role, mode)
    if stat.S_ISDIR(mode):
        raise RegistrationError(f"{role} {path}: is a folder, not a file. Give the path of the file itself.")
    return path


def existing_path(path: PathLike, role: str = "image") -> Path:
    """An image input: a regular file, or a folder (a DICOM series) whose entries are files or folders.
    RegistrationError naming the role and the path otherwise."""
    path = Path(path)
    mode = _mode(path, role)
    _refuse_special(path, role, mode)
    if stat.S_ISDIR(mode):
        for entry in os.scandir(path):
            try:
                _refuse_special(Path(entry.path), f"{role} {path}: its entry", entry.stat().st_mode)
            except OSError:
                continue  # a dangling link: the DICOM reader skips what it cannot open
    return path

