"""The model catalog: which diffusion backbones exist, where their weights come from, their files with
size, MD5 and SHA-256 (and where each value comes from), licence and extractor defaults. It is one JSON
file, package data beside this module (features/models.json, read with importlib.resources: the same
place in a wheel, an editable install and the Slicer extension). $DIFFREG_CATALOG points to another file.
Backbones of kind "builtin" (the known-answer features `image` and `mind`) have no weights; they are
listed so that every place that offers backbones offers them too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from ..errors import RegistrationError
from ..io.paths import input_file
from ..io.structured import parse_json

KINDS = ("file", "hub", "builtin")  # file: plain files at URLs; hub: a Hugging Face repository snapshot;
# builtin: computed features without weights
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its name (a relative path), expected size, SHA-256 (None: see `reason`) and
    MD5 (the publisher's, where it publishes one)."""
    name: str
    size: Optional[int]
    sha256: Optional[str]
    url: Optional[str] = None
    reason: str = ""
    md5: Optional[str] = None


@dataclass(frozen=True)
class ModelEntry:
    """One backbone of the catalog."""
    id: str
    kind: str
    backbone: str
    source: dict[str, Any]
    files: tuple[ModelFile, ...]
    licence: str
    description: str = ""
    extractor: dict[str, Any] = field(default_factory=dict)

    @property
    def total_size(self) -> Optional[int]:
        """Sum of the file sizes, None when any size is unknown."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)


def catalog_candidates() -> list[Path]:
    """The places the catalog is looked for, in order."""
    if os.environ.get("DIFFREG_CATALOG"):
        return [Path(os.environ["DIFFREG_CATALOG"]).expanduser()]
    return [Path(str(resources.files(__package__) / "models.json"))]


def catalog_path() -> Path:
    """The catalog file in use; RegistrationError naming the places looked in when there is none."""
    candidates = catalog_candidates()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RegistrationError(f"model catalog not found (looked in: {', '.join(map(str, candidates))}). Set "
                            "DIFFREG_CATALOG to the path of models.json, or reinstall the extension.")


def _problem(path: Path, where: str, what: str) -> RegistrationError:
    return RegistrationError(f"model catalog {path}: {where} {what}. Fix the file or reinstall the extension.")


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and not set(value.lower()) - _HEX


def _parse_file(path: Path, model_id: str, index: int, raw: Any, kind: str) -> ModelFile:
    where = f"model '{model_id}' file {index + 1}"
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise _problem(path, where, "needs a 'name'")
    name = raw["name"]
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise _problem(path, where, f"name '{name}' must be a relative path inside the model folder")
    for key in ("size", "sha256"):
        if key not in raw:
            raise _problem(path, where, f"('{name}') lacks '{key}' (give null and a 'reason' when unknown)")
    size, sha256 = raw["size"], raw["sha256"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2 ** 50):
        raise _problem(path, where, f"('{name}') has a bad size {size!r}")
    if sha256 is not None and not _is_hex(sha256, 64):
        raise _problem(path, where, f"('{name}') has a bad sha256 {sha256!r} (64 hex digits)")
    md5 = raw.get("md5")
    if md5 is not None and not _is_hex(md5, 32):
        raise _problem(path, where, f"('{name}') has a bad md5 {md5!r} (32 hex digits)")
    reason = raw.get("reason", "")
    if not isinstance(reason, str):
        raise _problem(path, where, f"('{name}') has a 'reason' that is not a text")
    if sha256 is None and not reason:
        raise _problem(path, where, f"('{name}') has sha256 null without a 'reason'")
    url = raw.get("url")
    if kind == "file" and not url:
        raise _problem(path, where, f"('{name}') needs a 'url' to download it from")
    if url is not None and not isinstance(url, str):
        raise _problem(path, where, f"('{name}') has a 'url' that is not a text")
    return ModelFile(name, size, sha256.lower() if sha256 else None, url, reason, md5.lower() if md5 else None)


def _parse_entry(path: Path, model_id: str, raw: Any) -> ModelEntry:
    where = f"model '{model_id}'"
    if not isinstance(raw, dict):
        raise _problem(path, where, "is not an object")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _problem(path, where, f"has kind {kind!r}; use one of {', '.join(KINDS)}")
    source = raw.get("source", {} if kind == "builtin" else None)
    if kind != "builtin" and (not isinstance(source, dict) or not (source.get("url") or source.get("repo"))):
        raise _problem(path, where, "needs a 'source' with a 'url' or a 'repo'")
    if kind == "hub" and not (source.get("repo") and source.get("revision")):
        raise _problem(path, where, "is a hub model: its source needs 'repo' and 'revision'")
    if any(not isinstance(value, str) for value in (source or {}).values()):
        raise _problem(path, where, "has a 'source' whose values are not all texts")
    files = raw.get("files", [] if kind == "builtin" else None)
    if not isinstance(files, list) or (kind == "builtin") != (not files):
        raise _problem(path, where, "needs a non-empty 'files' list (and a builtin backbone none)")
    for key in ("backbone", "licence"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _problem(path, where, f"needs '{key}'")
    if not isinstance(raw.get("description", ""), str) or not isinstance(raw.get("extractor") or {}, dict):
        raise _problem(path, where, "has a 'description' that is not a text or an 'extractor' that is not an object")
    return ModelEntry(id=model_id, kind=kind, backbone=raw["backbone"], source=dict(source),
                      files=tuple(_parse_file(path, model_id, i, f, kind) for i, f in enumerate(files)),
                      licence=raw["licence"], description=str(raw.get("description", "")),
                      extractor=dict(raw.get("extractor") or {}))


def _read_json(path: Path) -> Any:
    try:
        return parse_json(input_file(path, "model catalog").read_text(encoding="utf-8"), f"model catalog {path}")
    except (OSError, UnicodeDecodeError) as error:
        raise RegistrationError(f"model catalog {path}: cannot be read ({getattr(error, 'strerror', None) or error})."
                                ) from None


def load_catalog(path: Optional[str | os.PathLike] = None) -> dict[str, ModelEntry]:
    """id -> ModelEntry, validated; RegistrationError naming the file and the entry that is wrong."""
    path = Path(path).expanduser() if path else catalog_path()
    data = _read_json(path)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise _problem(path, "the top level", "needs a non-empty 'models' object")
    return {model_id: _parse_entry(path, model_id, raw) for model_id, raw in models.items()}


def default_backbone_id(path: Optional[str | os.PathLike] = None) -> str:
    """The catalog's default backbone (the paper's ADM)."""
    path = Path(path).expanduser() if path else catalog_path()
    models = load_catalog(path)  # validated first, so the read below cannot fail
    default = _read_json(path).get("default_backbone")
    if default is not None and (not isinstance(default, str) or default not in models):
        raise _problem(path, "default_backbone", f"'{default}' is not one of its models")
    return str(default or next(iter(models)))


def get_model(model: str | ModelEntry) -> ModelEntry:
    """The catalog entry of an id (an entry is returned as is); RegistrationError listing the known ids."""
    if isinstance(model, ModelEntry):
        return model
    catalog = load_catalog()
    if model not in catalog:
        raise RegistrationError(f"'{model}' is not in the model catalog. Known models: {', '.join(catalog)} "
                                "(see `diffreg models list`).")
    return catalog[model]


def is_catalog_id(name: str) -> bool:
    """Whether `name` is an id of the catalog (False when no catalog can be found)."""
    try:
        return name in load_catalog()
    except RegistrationError:
        return False
