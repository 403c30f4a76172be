"""Input paths checked before anything heavy is imported, so a wrong path is answered at once."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..errors import RegistrationError


def existing_path(path: Union[str, "os.PathLike[str]"], role: str = "image") -> Path:
    """`path` as a Path; a RegistrationError naming the role and the path when nothing is there."""
    path = Path(path)
    if not path.exists():
        raise RegistrationError(f"{role} {path}: no such file or folder. Check the path.")
    return path
