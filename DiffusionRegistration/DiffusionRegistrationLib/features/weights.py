"""Model weights in the user's cache folder: where they live, verifying them, downloading them.

Cache folder: $DIFFREG_CACHE, else "model_cache" in the settings file ($DIFFREG_SETTINGS, default
~/.config/diffusionregistration/settings.json), else ~/.cache/diffusionregistration/models; never the
install folder. Each model has its own sub-folder named by its catalog id.

Verification checks each file's size, then its SHA-256 (streamed). A successful check is recorded in
the model folder (`.diffreg-verified.json`: size, modification time and SHA-256 per file) so `path()`
does not re-hash gigabytes on every run; `verify()` always re-hashes. For files whose SHA-256 the
catalog cannot give (hub files, null with a reason) the value recorded at download is the reference.
Downloads stream to a temporary file beside the target, hash on the fly and rename only once verified;
a progress callback that raises Cancelled leaves no partial file.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from ..io.atomic import atomic_path
from .catalog import ModelEntry, ModelFile, get_model
from ..errors import RegistrationError
from ..progress import Progress, ProgressCallback, silent

STAMP = ".diffreg-verified.json"
CHUNK = 1 << 20


def settings_file() -> Path:
    """The user settings file (JSON) that may hold "model_cache"."""
    configured = os.environ.get("DIFFREG_SETTINGS")
    return Path(configured).expanduser() if configured else \
        Path.home() / ".config" / "diffusionregistration" / "settings.json"


def cache_dir(configured: Optional[str | os.PathLike] = None) -> Path:
    """The model cache folder: $DIFFREG_CACHE, else `configured`, else the settings file's model_cache,
    else ~/.cache/diffusionregistration/models."""
    if os.environ.get("DIFFREG_CACHE"):
        return Path(os.environ["DIFFREG_CACHE"]).expanduser()
    if configured:
        return Path(configured).expanduser()
    settings = settings_file()
    if settings.is_file():
        try:
            value = json.loads(settings.read_text(encoding="utf-8")).get("model_cache")
        except (OSError, json.JSONDecodeError, AttributeError):
            raise RegistrationError(f"settings file {settings}: not a readable JSON object. Fix it or delete "
                                    "it.") from None
        if value:
            return Path(value).expanduser()
    return Path.home() / ".cache" / "diffusionregistration" / "models"


def model_dir(model: str | ModelEntry) -> Path:
    """The folder of one model in the cache (it may not exist yet)."""
    return cache_dir() / get_model(model).id


def _human(size: Optional[int]) -> str:
    if size is None:
        return "unknown size"
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000.0
    return ""


def sha256_of(path: Path, report: Optional[Callable[[int], None]] = None) -> str:
    """SHA-256 of a file, read in chunks; `report(bytes_so_far)` after each chunk."""
    digest, done = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if report:
                report(done)
    return digest.hexdigest()


def _read_stamp(folder: Path) -> dict:
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _write_stamp(folder: Path, records: dict) -> None:
    with atomic_path(folder / STAMP) as temporary:
        temporary.write_text(json.dumps(records, indent=1, sort_keys=True), encoding="utf-8")


def _record(path: Path, sha256: str, reference: bool) -> dict:
    """A stamp entry; `reference`: the SHA-256 was checked against the catalog's or came from a download
    (a hash taken of hand-placed files proves nothing and is kept with reference false)."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256, "reference": reference}


def unreferenced(model: str | ModelEntry) -> list[str]:
    """Names of a cached model's files whose checksum has no reference (neither catalog nor download)."""
    entry = get_model(model)
    stamp = _read_stamp(model_dir(entry))
    return [f.name for f in entry.files if not f.sha256 and not stamp.get(f.name, {}).get("reference")]


def _redownload(entry: ModelEntry) -> str:
    return f"Delete it and run `diffreg models download {entry.id}`."


def verify_file(path: Path, expected: ModelFile, entry: ModelEntry, recorded: Optional[str] = None,
                report: Optional[Callable[[int], None]] = None) -> str:
    """Checks one file's size then SHA-256 against the catalog (or `recorded` when the catalog has none);
    returns its SHA-256. RegistrationError naming the file, what is wrong and the fix."""
    if not path.is_file():
        raise RegistrationError(f"{path}: missing. Run `diffreg models download {entry.id}`.")
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        state = "truncated (an interrupted download?)" if size < expected.size else "larger than expected"
        raise RegistrationError(f"{path}: {state}: {size:,} bytes instead of {expected.size:,}. "
                                f"{_redownload(entry)}")
    digest = sha256_of(path, report)
    reference = expected.sha256 or recorded
    if reference is not None and digest != reference:
        origin = "the catalog's" if expected.sha256 else "the one recorded when it was downloaded"
        raise RegistrationError(f"{path}: wrong checksum, the file is corrupt or not the expected one (SHA-256 "
                                f"{digest}, expected {origin} {reference}). {_redownload(entry)}")
    return digest


def verify(model: str | ModelEntry, progress: ProgressCallback = silent) -> Path:
    """Re-hashes every file of a cached model; returns its local path (see `path`); RegistrationError if any
    file is missing, truncated or has the wrong checksum."""
    entry = get_model(model)
    folder = model_dir(entry)
    stamp = _read_stamp(folder)
    total = sum((folder / f.name).stat().st_size for f in entry.files if (folder / f.name).is_file()) or 1
    done, records = 0, {}
    for expected in entry.files:
        target = folder / expected.name
        progress(Progress("verify", done / total, f"checking {expected.name}"))
        recorded = stamp.get(expected.name, {}).get("sha256")
        digest = verify_file(target, expected, entry, recorded,
                             lambda n, start=done: progress(Progress("verify", (start + n) / total, expected.name)))
        reference = bool(expected.sha256) or bool(stamp.get(expected.name, {}).get("reference"))
        records[expected.name] = _record(target, digest, reference)
        done += target.stat().st_size
    _write_stamp(folder, records)
    progress(Progress("verify", 1.0, f"{entry.id}: all {len(entry.files)} files verified"))
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
    entry = get_model(model)
    folder = model_dir(entry)
    missing = [f.name for f in entry.files if not (folder / f.name).is_file()]
    if missing:
        raise RegistrationError(_missing_message(entry, folder, missing))
    stamp = _read_stamp(folder)
    if any(status_of_file(folder, expected, stamp) != "verified" for expected in entry.files):
        return verify(entry)
    return _location(entry, folder)


def status(model: str | ModelEntry) -> str:
    """'verified', 'not verified' (present, never checked or changed since), 'incomplete' or 'missing';
    cheap: never hashes."""
    entry = get_model(model)
    folder = model_dir(entry)
    present = [f for f in entry.files if (folder / f.name).is_file()]
    if not present:
        return "missing"
    if len(present) < len(entry.files):
        return "incomplete"
    stamp = _read_stamp(folder)
    verified = all(status_of_file(folder, expected, stamp) == "verified" for expected in entry.files)
    return "verified" if verified else "not verified"


def _fetch(url: str, target: Path, expected: ModelFile, entry: ModelEntry, report: Callable[[int], None]) -> str:
    """Streams `url` into `target` (a temporary path), hashing as it goes; returns the SHA-256."""
    digest, done = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                report(done)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise RegistrationError(f"downloading {url} failed ({reason}). Check the connection and run "
                                f"`diffreg models download {entry.id}` again; offline, place the file "
                                f"'{expected.name}' in {model_dir(entry)}.") from None
    if expected.size is not None and done != expected.size:
        raise RegistrationError(f"downloading {url}: got {done:,} bytes instead of {expected.size:,} (the transfer "
                                f"was cut). Run `diffreg models download {entry.id}` again.")
    sha = digest.hexdigest()
    if expected.sha256 is not None and sha != expected.sha256:
        raise RegistrationError(f"downloading {url}: wrong checksum (SHA-256 {sha}, expected {expected.sha256}); "
                                "nothing was kept. The server sent another file: report it, or place the right "
                                f"file '{expected.name}' in {model_dir(entry)} by hand.")
    return sha


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
        stamp[expected.name] = _record(target, sha, True)
        _write_stamp(folder, stamp)
        done += expected.size or 0


def status_of_file(folder: Path, expected: ModelFile, stamp: dict) -> str:
    """'verified' when the file is present and unchanged since it was last verified, else 'pending'."""
    target, record = folder / expected.name, stamp.get(expected.name) or {}
    if not target.is_file():
        return "pending"
    stat = target.stat()
    same = record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
    return "verified" if same and (expected.sha256 is None or record.get("sha256") == expected.sha256) else "pending"


def _download_hub(entry: ModelEntry, folder: Path, progress: ProgressCallback) -> None:
    """huggingface_hub's snapshot of the pinned revision into the cache folder, then the SHA-256 record."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise RegistrationError("downloading hub models needs the package huggingface_hub: "
                                "pip install huggingface_hub.") from None
    source = entry.source
    progress(Progress("download", 0.0, f"{source['repo']} @ {source['revision']} (huggingface_hub)"))
    try:
        snapshot_download(repo_id=source["repo"], revision=source["revision"], local_dir=str(folder),
                          allow_patterns=[f.name for f in entry.files])
    except Exception as error:  # the hub client raises many types (HTTP, offline, repository errors)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise RegistrationError(f"downloading {source['repo']} (revision {source['revision']}) failed ({first}). "
                                f"Check the connection and run `diffreg models download {entry.id}` again. Offline: "
                                f"{_offline_hint(entry, folder, [f.name for f in entry.files])}.") from None
    records = {}
    for index, expected in enumerate(entry.files):
        target = folder / expected.name
        progress(Progress("download", 0.9 + 0.1 * index / len(entry.files), f"checking {expected.name}"))
        records[expected.name] = _record(target, verify_file(target, expected, entry), True)
    _write_stamp(folder, records)


def download(model: str | ModelEntry, progress: ProgressCallback = silent, force: bool = False) -> Path:
    """Fetches a model's files into the cache (verified before they take their final names); returns the
    verified local path. Files already verified are skipped unless `force`."""
    entry = get_model(model)
    folder = model_dir(entry)
    folder.mkdir(parents=True, exist_ok=True)
    if entry.kind == "hub":
        _download_hub(entry, folder, progress)
    else:
        _download_files(entry, folder, progress, force)
    progress(Progress("download", 1.0, f"{entry.id} ready in {folder}"))
    return _location(entry, folder)
