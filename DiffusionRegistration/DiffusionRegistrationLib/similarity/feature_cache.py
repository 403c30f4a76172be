"""The diffusion-feature similarity's cache of frozen feature maps: in memory (the last few images) and on
disk (folder from DIFFREG_FEATURE_CACHE, default the user cache folder's "features"), keyed by a hash of the
image's bytes, the extractor's identity (weights, tap, timestep, noise, ensemble) and the slicing."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..core.paths import cache_folder
from ..features.base import FeatureExtractor
from ..io.atomic import atomic_path

CACHE_VERSION = 1
MEMORY_ENTRIES = 8


def feature_cache_dir() -> Path:
    return cache_folder("features", "DIFFREG_FEATURE_CACHE")


class FeatureCache:
    """Features of an image from memory, disk, or computed (then stored in both)."""

    def __init__(self, use_disk: bool = True, folder: Optional[Path] = None):
        self.use_disk, self.folder = use_disk, folder
        self._memory: "OrderedDict[str, Any]" = OrderedDict()

    @staticmethod
    def key(image: torch.Tensor, extractor: FeatureExtractor, layout: str) -> str:
        digest = hashlib.sha256()
        array = image.detach().float().cpu().contiguous()
        digest.update(f"v{CACHE_VERSION}|{tuple(array.shape)}|{layout}|".encode())
        digest.update(extractor.cache_key().encode())
        digest.update(array.numpy().tobytes())
        return digest.hexdigest()[:40]

    def get(self, image: torch.Tensor, extractor: FeatureExtractor, layout: str, compute: Callable[[], Any]) -> Any:
        key = self.key(image, extractor, layout)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        value = None
        folder = self.folder or feature_cache_dir()
        path = folder / f"{key}.pt"
        if self.use_disk and path.is_file():
            try:
                value = torch.load(path, map_location=image.device, weights_only=True)
            except Exception:  # a damaged cache entry is recomputed
                value = None
        if value is None:
            value = compute()
            if self.use_disk:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    with atomic_path(path) as temporary:
                        torch.save(value, temporary)
                except OSError:
                    pass  # a read-only cache folder only costs the re-extraction next time
        self._memory[key] = value
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.popitem(last=False)
        return value
