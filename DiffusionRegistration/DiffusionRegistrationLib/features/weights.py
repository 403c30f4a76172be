"""Model weights in the user's cache folder: where they live, verifying them, downloading them.

Cache folder: $DIFFREG_CACHE, else "model_cache" in the settings file ($DIFFREG_SETTINGS, default
~/.config/diffusionregistration/settings.json), else ~/.cache/diffusionregistration/models; never the
install folder. Each model has its own sub-folder named by its catalog id.

Verification checks each file's size, then its MD5 (where the catalog has the publisher's) and SHA-256,
both computed in one streamed pass (`Digests`). A check is recorded in the model folder
(`.diffreg-verified.json`: size, modification time, SHA-256 and what it was checked against) so `path()`
does not re-hash gigabytes on every run; `verify()` always re-hashes. References, in order: the
catalog's values; for hub files, the hub's own SHA-256 of LFS files (git blob id of the others), read
at download and checked then and afterwards. A file with no reference at all is "unverified" (only its
consistency with the first hash is checked), never "verified".
Downloads stream to a temporary file beside the target, hash on the fly and rename only once verified;
a progress callback that raises Cancelled leaves no partial file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

from ..core.paths import cache_root
from ..errors import RegistrationError
from ..io.atomic import atomic_path
from ..io.paths import input_file
from ..io.structured import parse_json
from ..progress import Progress, ProgressCallback, silent
from .catalog import ModelEntry, ModelFile, default_backbone_id, get_model

STAMP = ".diffreg-verified.json"
CHUNK = 1 << 20


def settings_file() -> Path:
    """The user settings file (JSON) that may hold "model_cache"."""
    configured = os.environ.get("DIFFREG_SETTINGS")
    return Path(configured).expanduser() if configured else \
        Path.home() / ".config" / "diffusionregistration" / "settings.json"


def cache_dir(configured: Optional[str | os.PathLike] = None) -> Path:
    """The model cache folder: $DIFFREG_CACHE, else `configured`, else the settings file's model_cache,
    else "models" in the user cache folder (core.paths.cache_root)."""
    if os.environ.get("DIFFREG_CACHE"):
        return Path(os.environ["DIFFREG_CACHE"]).expanduser()
    if configured:
        return Path(configured).expanduser()
    settings = settings_file()
    if settings.exists():
        value = _settings_value(settings, "model_cache")
        if value:
            return Path(value).expanduser()
    return cache_root() / "models"


def _settings_value(settings: Path, key: str) -> Optional[str]:
    """A text value of the user settings file; RegistrationError naming the file when it is not a JSON
    object or the value not a text."""
    what = f"settings file {settings}"
    try:
        values = parse_json(input_file(settings, "settings file").read_text(encoding="utf-8"), what)
    except (OSError, UnicodeDecodeError) as error:
        raise RegistrationError(f"{what}: cannot be read ({getattr(error, 'strerror', None) or error}). Fix it or "
                                "delete it.") from None
    if not isinstance(values, dict):
        raise RegistrationError(f"{what}: must hold a JSON object (e.g. {{\"{key}\": \"/path\"}}). Fix it or "
                                "delete it.")
    value = values.get(key)
    if value is not None and not isinstance(value, str):
        raise RegistrationError(f"{what}: \"{key}\" must be a text (a folder path), not {type(value).__name__}. Fix "
                                "it or delete it.")
    return value


def model_dir(model: str | ModelEntry) -> Path:
    """The folder of one model in the cache (it may not exist yet)."""
    return cache_dir() / with_weights(model).id


def with_weights(model: str | ModelEntry) -> ModelEntry:
    """The catalog entry of a model that has weights; RegistrationError for a builtin backbone."""
    entry = get_model(model)
    if entry.kind == "builtin":
        raise RegistrationError(f"'{entry.id}' is a built-in backbone: it has no weights to download, verify or "
                                "locate. Use it directly (e.g. --backbone " + entry.id + ").")
    return entry


def _human(size: Optional[int]) -> str:
    if size is None:
        return "unknown size"
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000.0
    return ""


class Digests:
    """Size, MD5 and SHA-256 of a byte stream in one pass, so a 2 GB file is read (or received) once."""

    def __init__(self) -> None:
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False)  # the publisher's checksum, not a security measure
        self._sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._md5.update(chunk)
        self._sha256.update(chunk)

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @classmethod
    def of_file(cls, path: Path, report: Optional[Callable[[int], None]] = None) -> "Digests":
        """The digests of a file read in chunks; `report(bytes_so_far)` after each chunk."""
        digests = cls()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digests.update(chunk)
                if report:
                    report(digests.size)
        return digests

    def mismatch(self, expected: ModelFile, sha256: Optional[str]) -> Optional[str]:
        """What differs from the expected size, MD5 and SHA-256 (`sha256`: the reference in use), or None."""
        if expected.size is not None and self.size != expected.size:
            return f"{self.size:,} bytes instead of {expected.size:,}"
        if expected.md5 is not None and self.md5 != expected.md5:
            return f"MD5 {self.md5}, expected the catalog's {expected.md5}"
        if sha256 is not None and self.sha256 != sha256:
            return f"SHA-256 {self.sha256}, expected {sha256}"
        return None


def git_blob_id(path: Path) -> str:
    """The git object id (SHA-1 of "blob <size>\\0" + bytes) the hub reports for a file not stored in LFS."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {path.stat().st_size}\0".encode())
    digest.update(path.read_bytes())
    return digest.hexdigest()


def _read_stamp(folder: Path) -> dict:
    """The stamp's records (name -> record); a damaged or crafted stamp counts as none (files are re-hashed)."""
    try:
        stamp = parse_json((folder / STAMP).read_text(encoding="utf-8"), f"stamp {folder / STAMP}")
    except (OSError, UnicodeDecodeError, RegistrationError):
        return {}
    if not isinstance(stamp, dict):
        return {}
    def whole(record: Any) -> bool:
        numbers = [record.get(k) for k in ("size", "mtime_ns")] if isinstance(record, dict) else [None]
        return all(isinstance(n, int) and not isinstance(n, bool) for n in numbers) \
            and isinstance(record.get("sha256"), str) and isinstance(record.get("reference", "none"), str)

    return {name: record for name, record in stamp.items() if whole(record)}


def _write_stamp(folder: Path, records: dict) -> None:
    with atomic_path(folder / STAMP) as temporary:
        temporary.write_text(json.dumps(records, indent=1, sort_keys=True), encoding="utf-8")


def _record(path: Path, sha256: str, reference: str) -> dict:
    """What the stamp keeps of a checked file; `reference`: what it was checked against (catalog, hub, none)."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256, "reference": reference}


def _reference(expected: ModelFile, record: dict) -> tuple[Optional[str], str]:
    """The SHA-256 a file is checked against and its origin: the catalog's, else the one recorded."""
    if expected.sha256 is not None:
        return expected.sha256, "catalog"
    return record.get("sha256"), record.get("reference", "none")


def unreferenced(model: str | ModelEntry) -> list[str]:
    """Names of a cached model's files that were checked against no reference checksum (neither the
    catalog's nor the hub's): they are "unverified"."""
    entry = with_weights(model)
    stamp = _read_stamp(model_dir(entry))
    return [f.name for f in entry.files if not f.sha256 and stamp.get(f.name, {}).get("reference") != "hub"]


def _redownload(entry: ModelEntry) -> str:
    return f"Delete it and run `diffreg models download {entry.id}`."


def verify_file(path: Path, expected: ModelFile, entry: ModelEntry, record: Optional[dict] = None,
                report: Optional[Callable[[int], None]] = None) -> dict:
    """Checks one file's size, then MD5 and SHA-256 (one read) against the catalog, else against the
    SHA-256 in `record` (a stamp entry: the hub's, or the first hash); returns the file's new stamp entry.
    RegistrationError naming the file, what is wrong and the fix."""
    if not path.is_file():
        raise RegistrationError(f"{path}: missing. Run `diffreg models download {entry.id}`.")
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        state = "truncated (an interrupted download?)" if size < expected.size else "larger than expected"
        raise RegistrationError(f"{path}: {state}: {size:,} bytes instead of {expected.size:,}. "
                                f"{_redownload(entry)}")
    sha256, origin = _reference(expected, record or {})
    digests = Digests.of_file(path, report)
    problem = digests.mismatch(expected, sha256)
    if problem is not None:
        source = {"catalog": "the catalog", "hub": "the hub's checksum read at download"}.get(
            origin, "the one recorded when it was first checked")
        raise RegistrationError(f"{path}: wrong checksum, the file is corrupt or not the expected one ({problem}; "
                                f"reference: {source}). {_redownload(entry)}")
    return _record(path, digests.sha256, origin if sha256 is not None else "none")


def verify(model: str | ModelEntry, progress: ProgressCallback = silent) -> Path:
    """Re-hashes every file of a cached model; returns its local path (see `path`); RegistrationError if any
    file is missing, truncated or has the wrong checksum."""
    entry = with_weights(model)
    folder = model_dir(entry)
    stamp = _read_stamp(folder)
    total = sum((folder / f.name).stat().st_size for f in entry.files if (folder / f.name).is_file()) or 1
    done, records = 0, {}
    for expected in entry.files:
        target = folder / expected.name
        progress(Progress("verify", done / total, f"checking {expected.name}"))
        records[expected.name] = verify_file(
            target, expected, entry, stamp.get(expected.name),
            lambda n, start=done: progress(Progress("verify", (start + n) / total, expected.name)))
        done += target.stat().st_size
    _write_stamp(folder, records)
    unreferenced = [name for name, record in records.items() if record["reference"] == "none"]
    state = f"{len(unreferenced)} unverified (no reference checksum)" if unreferenced else "all verified"
    progress(Progress("verify", 1.0, f"{entry.id}: {len(entry.files)} files checked, {state}"))
    return _location(entry, folder)


def _location(entry: ModelEntry, folder: Path) -> Path:
    """A single-file model is used as its file; a hub model as its folder."""
    return folder / entry.files[0].name if entry.kind == "file" and len(entry.files) == 1 else folder


def _offline_hint(entry: ModelEntry, folder: Path, missing: list[str]) -> str:
    """How to place the files by hand: which file or repository, and the exact folder."""
    if entry.kind == "file":
        return "; ".join(f"download {f.url} on a connected machine and place it as the file '{f.name}'"
                         for f in entry.files if f.name in missing) + f" in the folder {folder}"
    source = entry.source
    return (f"copy the files of the Hugging Face repository {source['repo']} (revision {source['revision']}) "
            f"into the folder {folder}, keeping their sub-folders")


def _missing_message(entry: ModelEntry, folder: Path, missing: list[str]) -> str:
    names = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    return (f"the weights of '{entry.id}' are not in the model cache ({names} missing in {folder}). "
            f"Run `diffreg models download {entry.id}`. Offline: {_offline_hint(entry, folder, missing)}, then "
            f"run `diffreg models verify {entry.id}`.")


def path(model: str | ModelEntry) -> Path:
    """The verified local path of a model (its file, or its folder for a hub model). Files already verified
    and unchanged since are not re-hashed. RegistrationError with the exact command and folder if missing."""
    entry = with_weights(model)
    folder = model_dir(entry)
    missing = [f.name for f in entry.files if not (folder / f.name).is_file()]
    if missing:
        raise RegistrationError(_missing_message(entry, folder, missing))
    stamp = _read_stamp(folder)
    if any(status_of_file(folder, expected, stamp) == "pending" for expected in entry.files):
        return verify(entry)
    return _location(entry, folder)


def status(model: str | ModelEntry) -> str:
    """'verified', 'unverified' (checked, but some file has no reference checksum), 'not checked'
    (present, never checked or changed since), 'incomplete', 'missing', or 'built in' (no weights);
    cheap: never hashes."""
    entry = get_model(model)
    if entry.kind == "builtin":
        return "built in"
    folder = model_dir(entry)
    present = [f for f in entry.files if (folder / f.name).is_file()]
    if not present:
        return "missing"
    if len(present) < len(entry.files):
        return "incomplete"
    stamp = _read_stamp(folder)
    states = {status_of_file(folder, expected, stamp) for expected in entry.files}
    return "not checked" if "pending" in states else "unverified" if "unverified" in states else "verified"


def _fetch(url: str, target: Path, expected: ModelFile, entry: ModelEntry, report: Callable[[int], None]) -> str:
    """Streams `url` into `target` (a temporary path), with size, MD5 and SHA-256 computed on the way;
    returns the SHA-256. RegistrationError when any differs from the catalog."""
    digests = Digests()
    limit = expected.size
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            # never more than one byte past the catalog's size: a server that sends more fills no disk
            while chunk := response.read(CHUNK if limit is None else min(CHUNK, limit + 1 - digests.size)):
                out.write(chunk)
                digests.update(chunk)
                report(digests.size)
                if limit is not None and digests.size > limit:
                    raise RegistrationError(f"downloading {url}: the server sent more than the catalog's "
                                            f"{limit:,} bytes; stopped and kept nothing. The server sent another "
                                            f"file: report it, or place the right file '{expected.name}' in "
                                            f"{model_dir(entry)} by hand.")
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise RegistrationError(f"downloading {url} failed ({reason}). Check the connection and run "
                                f"`diffreg models download {entry.id}` again; offline, place the file "
                                f"'{expected.name}' in {model_dir(entry)}.") from None
    if expected.size is not None and digests.size != expected.size:
        raise RegistrationError(f"downloading {url}: got {digests.size:,} bytes instead of {expected.size:,} (the "
                                f"transfer was cut). Run `diffreg models download {entry.id}` again.")
    problem = digests.mismatch(expected, expected.sha256)
    if problem is not None:
        raise RegistrationError(f"downloading {url}: wrong checksum ({problem}); nothing was kept. The server sent "
                                f"another file: report it, or place the right file '{expected.name}' in "
                                f"{model_dir(entry)} by hand.")
    return digests.sha256


def _download_files(entry: ModelEntry, folder: Path, progress: ProgressCallback, force: bool) -> None:
    stamp = _read_stamp(folder)
    todo = [f for f in entry.files if force or status_of_file(folder, f, stamp) != "verified"]
    total = sum(f.size or 0 for f in todo) or 1
    done = 0
    for expected in todo:
        target = folder / expected.name
        message = f"{expected.name} ({_human(expected.size)})"
        progress(Progress("download", done / total, message))
        with atomic_path(target) as temporary:
            sha = _fetch(expected.url, temporary, expected, entry,
                         lambda n, start=done: progress(Progress("download", min((start + n) / total, 1.0), message)))
        stamp[expected.name] = _record(target, sha, "catalog" if expected.sha256 else "none")
        _write_stamp(folder, stamp)
        done += expected.size or 0


def status_of_file(folder: Path, expected: ModelFile, stamp: dict) -> str:
    """For a file present and unchanged since its last check: 'verified' when it was checked against a
    reference (the catalog's or the hub's checksum), 'unverified' when there was none; else 'pending'."""
    target, record = folder / expected.name, stamp.get(expected.name) or {}
    if not target.is_file():
        return "pending"
    stat = target.stat()
    same = record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
    if not same:
        return "pending"
    if expected.sha256 is not None:  # the catalog's SHA-256 (which the recorded hash matched) is the reference
        return "verified" if record.get("sha256") == expected.sha256 else "pending"
    return "verified" if record.get("reference") == "hub" else "unverified"


def hub_references(repo: str, revision: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """The hub's own record of each file at `revision`: {name: {"size", "sha256" (LFS files) or
    "blob_id" (the git object id of the others)}}, from huggingface_hub's repository info with file
    metadata. Files the hub does not list are left out."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    references = {}
    for sibling in info.siblings or []:
        if sibling.rfilename not in names:
            continue
        lfs = sibling.lfs
        sha256 = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        references[sibling.rfilename] = {"size": sibling.size, "sha256": sha256, "blob_id": sibling.blob_id}
    return references


def _check_hub_file(target: Path, expected: ModelFile, entry: ModelEntry, reference: Optional[dict]) -> dict:
    """Checks a downloaded hub file against the hub's own record; returns its stamp entry."""
    if not reference or not (reference.get("sha256") or reference.get("blob_id")):
        return verify_file(target, expected, entry)  # no reference: recorded as unverified
    expected = dataclasses.replace(expected, size=reference.get("size", expected.size))
    if reference.get("sha256"):
        return verify_file(target, expected, entry, {"sha256": reference["sha256"].lower(), "reference": "hub"})
    record = verify_file(target, expected, entry)
    if git_blob_id(target) != reference["blob_id"]:
        raise RegistrationError(f"{target}: wrong checksum, not the hub's file (git blob id differs from "
                                f"{reference['blob_id']}). {_redownload(entry)}")
    return {**record, "reference": "hub"}


def _download_hub(entry: ModelEntry, folder: Path, progress: ProgressCallback) -> None:
    """huggingface_hub's snapshot of the pinned revision into the cache folder, then the SHA-256 record."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise RegistrationError("downloading hub models needs the package huggingface_hub: "
                                "pip install huggingface_hub.") from None
    source = entry.source
    names = [f.name for f in entry.files]
    progress(Progress("download", 0.0, f"{source['repo']} @ {source['revision']} (huggingface_hub)"))
    try:
        references = hub_references(source["repo"], source["revision"], names)
        snapshot_download(repo_id=source["repo"], revision=source["revision"], local_dir=str(folder),
                          allow_patterns=names)
    except Exception as error:  # the hub client raises many types (HTTP, offline, repository errors)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise RegistrationError(f"downloading {source['repo']} (revision {source['revision']}) failed ({first}). "
                                f"Check the connection and run `diffreg models download {entry.id}` again. Offline: "
                                f"{_offline_hint(entry, folder, [f.name for f in entry.files])}.") from None
    records = {}
    for index, expected in enumerate(entry.files):
        target = folder / expected.name
        progress(Progress("download", 0.9 + 0.1 * index / len(entry.files), f"checking {expected.name}"))
        records[expected.name] = _check_hub_file(target, expected, entry, references.get(expected.name))
    _write_stamp(folder, records)


def download(model: str | ModelEntry, progress: ProgressCallback = silent, force: bool = False) -> Path:
    """Fetches a model's files into the cache (verified before they take their final names); returns the
    verified local path. Files already verified are skipped unless `force`."""
    entry = with_weights(model)
    folder = model_dir(entry)
    folder.mkdir(parents=True, exist_ok=True)
    if entry.kind == "hub":
        _download_hub(entry, folder, progress)
    else:
        _download_files(entry, folder, progress, force)
    progress(Progress("download", 1.0, f"{entry.id} ready in {folder}"))
    return _location(entry, folder)


def extractor_spec(model: str | ModelEntry, dim: int = 2) -> dict[str, Any]:
    """The load_extractor spec of a catalog model: its backbone, its verified weights (none for a builtin
    backbone) and its defaults. RegistrationError (with the download command) when the weights are not
    in the cache."""
    entry = get_model(model)
    defaults = entry.extractor.get(f"{int(dim)}d", entry.extractor)
    defaults = {k: v for k, v in defaults.items() if not k.endswith("d") or not k[:-1].isdigit()}
    if entry.kind == "builtin":
        return {"backbone": entry.backbone, **defaults}
    location = path(entry)
    if entry.backbone == "adm":
        return {"backbone": "adm", "checkpoint": str(location), **defaults}
    return {"backbone": entry.backbone, "model": str(location), **defaults}


def default_backbone_path() -> Path:
    """The verified local weights of the default backbone, or RegistrationError saying how to get them."""
    return path(default_backbone_id())
