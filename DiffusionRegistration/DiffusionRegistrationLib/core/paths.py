"""The one user cache folder every cache of the package lives under (models, diffusion features, test data)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$XDG_CACHE_HOME/diffusionregistration, default ~/.cache/diffusionregistration (scripts/setup.sh agrees)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "diffusionregistration"


def cache_folder(name: str, variable: str) -> Path:
    """The folder of one cache: $`variable` when set, else `name` under cache_root()."""
    configured = os.environ.get(variable)
    return Path(configured).expanduser() if configured else cache_root() / name
