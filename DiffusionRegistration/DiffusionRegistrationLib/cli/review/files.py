"""Files the review page may read or write: only below its data root.

A name from the page is a string from a stranger. It must be relative, without `..`, and, once every
symlink is resolved, still lie inside the root (so a link that leaves it, or a sibling folder whose name
merely starts like the root's, `data-evil` next to `data`, is refused).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ...errors import RegistrationError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
MAX_LISTED = 2000


def inside(root: Path, name: str, role: str) -> Path:
    """The resolved path of `name` below the resolved `root`; RegistrationError naming `role` otherwise."""
    if not name or not name.strip():
        raise RegistrationError(f"{role}: no file chosen; pick one from the list.")
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise RegistrationError(f"{role} '{name}': absolute paths are not accepted; pick a file from the list "
                                "(names are relative to the data folder).")
    if ".." in relative.parts:
        raise RegistrationError(f"{role} '{name}': '..' is not accepted; only files inside the data folder "
                                "can be used.")
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise RegistrationError(f"{role} '{name}': leads outside the data folder (a link?); only files inside "
                                "it can be used.")
    return path


def existing_file(root: Path, name: str, role: str) -> Path:
    """`inside`, and the file must exist."""
    path = inside(root, name, role)
    if not path.is_file():
        raise RegistrationError(f"{role} '{name}': no such file in the data folder; pick one from the list.")
    return path


def image_names(root: Path) -> list[str]:
    """Relative names of the images below `root` that `inside` accepts, sorted; at most MAX_LISTED."""
    base = root.resolve()
    names: list[str] = []
    for folder, subfolders, files in os.walk(base):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for file in sorted(files):
            if not file.lower().endswith(IMAGE_SUFFIXES):
                continue
            name = (Path(folder) / file).relative_to(base).as_posix()
            try:
                inside(base, name, "file")
            except RegistrationError:
                continue
            names.append(name)
            if len(names) >= MAX_LISTED:
                return names
    return names
