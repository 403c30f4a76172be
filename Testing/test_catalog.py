"""Model catalog and weight cache: verification, clear errors, the cache folder, file:// downloads with
progress and cancel, the catalog's schema, and the `diffreg models` commands. Nothing leaves this machine."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from DiffusionRegistrationLib.features import catalog, weights
from DiffusionRegistrationLib.cli.main import main as diffreg
from DiffusionRegistrationLib.errors import Cancelled, RegistrationError

REPO_CATALOG = Path(__file__).resolve().parents[1] / "DiffusionRegistration" / "DiffusionRegistrationLib" / "features" / "models.json"
BIG = 3 * (1 << 20) + 12345  # more than one download chunk, so a cancel can land mid-file


@pytest.fixture()
def sources(tmp_path):
    """Two source files (one large) with their sizes and SHA-256 computed here with hashlib."""
    folder = tmp_path / "server"
    folder.mkdir()
    payloads = {"weights.bin": os.urandom(BIG), "extra/config.json": b'{"layers": 3}\n'}
    files = []
    for name, data in payloads.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        files.append({"name": name, "url": (folder / name).as_uri(), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
    return folder, files


def _write_catalog(path: Path, files: list[dict], **changes) -> Path:
    entry = {"kind": "file", "backbone": "adm", "source": {"url": files[0]["url"]}, "files": files,
             "licence": "test data", "extractor": {"2d": {"tap": "output_blocks.10", "timestep": 60}}}
    entry.update(changes)
    path.write_text(json.dumps({"models": {"tiny": entry}}))
    return path


@pytest.fixture()
def tiny(tmp_path, sources, monkeypatch):
    """A catalog with one two-file model 'tiny' served from file:// URLs, and an empty cache folder."""
    monkeypatch.setenv("DIFFREG_CATALOG", str(_write_catalog(tmp_path / "models.json", sources[1])))
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "cache"))
    return sources


def _place(sources, cache: Path) -> Path:
    """Copies the source files into the model folder by hand (what an offline user does)."""
    folder = cache / "tiny"
    for item in sources[1]:
        (folder / item["name"]).parent.mkdir(parents=True, exist_ok=True)
        (folder / item["name"]).write_bytes((sources[0] / item["name"]).read_bytes())
    return folder


def test_verify_accepts_right_files_and_names_truncated_or_modified_ones(tiny, tmp_path):
    folder = _place(tiny, tmp_path / "cache")
    assert weights.verify("tiny") == folder  # two files: the model is its folder
    target = folder / "weights.bin"
    data = target.read_bytes()
    target.write_bytes(data[:-100])
    with pytest.raises(RegistrationError, match="truncated") as error:
        weights.verify("tiny")
    assert str(target) in str(error.value) and "diffreg models download tiny" in str(error.value)
    target.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    with pytest.raises(RegistrationError, match="wrong checksum") as error:
        weights.verify("tiny")
    assert str(target) in str(error.value)


def test_path_of_missing_model_gives_command_file_and_folder(tiny, tmp_path):
    with pytest.raises(RegistrationError) as error:
        weights.path("tiny")
    message = str(error.value)
    folder = tmp_path / "cache" / "tiny"
    assert "`diffreg models download tiny`" in message
    assert f"in the folder {folder}" in message and "'weights.bin'" in message and tiny[1][0]["url"] in message
    assert weights.status("tiny") == "missing"


def test_path_rechecks_a_file_changed_after_verification(tiny, tmp_path):
    folder = _place(tiny, tmp_path / "cache")
    assert weights.status("tiny") == "not verified"
    assert weights.path("tiny") == folder
    assert weights.status("tiny") == "verified"
    target = folder / "extra" / "config.json"
    target.write_bytes(b'{"layers": 4}\n')  # same size, other content, newer time
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert weights.status("tiny") == "not verified"
    with pytest.raises(RegistrationError, match="wrong checksum"):
        weights.path("tiny")


def test_cache_folder_honours_env_then_settings_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "env-cache"))
    assert weights.cache_dir() == tmp_path / "env-cache"
    assert weights.cache_dir(configured=tmp_path / "other") == tmp_path / "env-cache"
    monkeypatch.delenv("DIFFREG_CACHE")
    assert weights.cache_dir(configured=tmp_path / "other") == tmp_path / "other"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"model_cache": str(tmp_path / "from-settings")}))
    monkeypatch.setenv("DIFFREG_SETTINGS", str(settings))
    assert weights.cache_dir() == tmp_path / "from-settings"
    monkeypatch.setenv("DIFFREG_SETTINGS", str(tmp_path / "absent.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "diffusionregistration" / "models"


def test_download_from_file_url_with_progress(tiny, tmp_path):
    events = []
    location = weights.download("tiny", events.append)
    folder = tmp_path / "cache" / "tiny"
    assert location == folder
    for item in tiny[1]:
        assert (folder / item["name"]).read_bytes() == (tiny[0] / item["name"]).read_bytes()
    fractions = [e.fraction for e in events if e.stage == "download"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 4
    assert weights.status("tiny") == "verified"
    assert not [p for p in folder.rglob("*") if "partial" in p.name]
    again = []
    weights.download("tiny", again.append)  # already verified: nothing fetched
    assert [e.fraction for e in again] == [1.0]


def test_cancelled_download_leaves_no_partial_file(tiny, tmp_path):
    def cancel_midway(event):
        if 0.1 < event.fraction < 1.0:
            raise Cancelled

    with pytest.raises(Cancelled):
        weights.download("tiny", cancel_midway)
    folder = tmp_path / "cache" / "tiny"
    assert [p for p in folder.rglob("*") if p.is_file()] == []
    assert weights.status("tiny") == "missing"


@pytest.mark.parametrize("change, match", [("sha256", "wrong checksum"), ("size", "instead of")])
def test_download_with_wrong_checksum_or_size_keeps_nothing(tmp_path, sources, monkeypatch, change, match):
    files = [dict(item) for item in sources[1]]
    files[0][change] = "0" * 64 if change == "sha256" else files[0]["size"] + 1
    monkeypatch.setenv("DIFFREG_CATALOG", str(_write_catalog(tmp_path / "models.json", files)))
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RegistrationError, match=match):
        weights.download("tiny")
    assert not (tmp_path / "cache" / "tiny" / "weights.bin").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if "partial" in p.name]


def test_download_of_unreachable_url_says_what_to_do(tmp_path, sources, monkeypatch):
    files = [dict(item) for item in sources[1]]
    files[0]["url"] = (tmp_path / "gone.bin").as_uri()
    monkeypatch.setenv("DIFFREG_CATALOG", str(_write_catalog(tmp_path / "models.json", files)))
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RegistrationError, match="failed .*place the file 'weights.bin'"):
        weights.download("tiny")


def test_repository_catalog_schema():
    """Read with plain json (not the code under test): every entry is complete."""
    data = json.loads(REPO_CATALOG.read_text())
    assert data["default_backbone"] in data["models"]
    for model_id, entry in data["models"].items():
        assert entry["kind"] in ("file", "hub") and entry["backbone"] in ("adm", "sd", "unet2d"), model_id
        assert entry["licence"] and (entry["source"].get("url") or entry["source"].get("repo")), model_id
        if entry["kind"] == "hub":
            assert entry["source"]["repo"] and entry["source"]["revision"], model_id
        assert entry["files"], model_id
        for item in entry["files"]:
            assert "sha256" in item and "size" in item, (model_id, item["name"])
            if item["sha256"] is None:
                assert item.get("reason"), (model_id, item["name"])
            else:
                assert len(item["sha256"]) == 64 and int(item["sha256"], 16) >= 0
    adm = data["models"]["adm-256-uncond"]["files"][0]
    assert (adm["name"], adm["size"]) == ("256x256_diffusion_uncond.pt", 2211383297)
    sd = data["models"]["sd-2-1-base"]
    assert sd["extractor"] == {"up_block_index": 1, "timestep": 261, "ensemble": 8}
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/config.json", "tokenizer/vocab.json",
            "text_encoder/model.safetensors", "scheduler/scheduler_config.json"} <= {f["name"] for f in sd["files"]}
    assert set(catalog.load_catalog(REPO_CATALOG)) == set(data["models"])  # and the parser accepts it


def test_catalog_is_found_beside_the_package_and_bad_entries_are_named(tmp_path, monkeypatch, sources):
    monkeypatch.delenv("DIFFREG_CATALOG", raising=False)
    assert catalog.catalog_path() == REPO_CATALOG
    files = [dict(item) for item in sources[1]]
    files[0]["sha256"] = None
    monkeypatch.setenv("DIFFREG_CATALOG", str(_write_catalog(tmp_path / "models.json", files)))
    with pytest.raises(RegistrationError, match="'tiny' file 1 .*sha256 null without a 'reason'"):
        catalog.load_catalog()
    monkeypatch.setenv("DIFFREG_CATALOG", str(tmp_path / "nothing.json"))
    with pytest.raises(RegistrationError, match="DIFFREG_CATALOG"):
        catalog.load_catalog()
    with pytest.raises(RegistrationError, match="Known models"):
        monkeypatch.setenv("DIFFREG_CATALOG", str(REPO_CATALOG))
        catalog.get_model("no-such-model")


def test_models_commands(tiny, tmp_path, capsys):
    assert diffreg(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "missing" in out and str(tmp_path / "cache") in out
    assert diffreg(["models", "path", "tiny"]) == 2
    assert "diffreg models download tiny" in capsys.readouterr().err
    assert diffreg(["models", "download", "tiny", "--progress", "json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    events = [json.loads(line) for line in lines[:-1]]
    assert events[-1] == {"stage": "download", "fraction": 1.0, "message": events[-1]["message"]}
    assert lines[-1] == str(tmp_path / "cache" / "tiny")
    assert diffreg(["models", "check", "tiny"]) == 0
    assert diffreg(["models", "verify"]) == 0 and "tiny: verified" in capsys.readouterr().out
    (tmp_path / "cache" / "tiny" / "weights.bin").write_bytes(b"short")
    assert diffreg(["models", "verify", "tiny"]) == 2
    assert "truncated" in capsys.readouterr().err


def test_default_backbone_path_and_extractor_spec_follow_the_cache(tiny, tmp_path):
    with pytest.raises(RegistrationError, match="diffreg models download tiny"):
        catalog.default_backbone_path()  # the only model is the default when none is named
    weights.download("tiny")
    folder = tmp_path / "cache" / "tiny"
    assert catalog.default_backbone_path() == folder
    assert catalog.extractor_spec("tiny", dim=2) == {"backbone": "adm", "checkpoint": str(folder),
                                                     "tap": "output_blocks.10", "timestep": 60}


def test_hub_model_records_checksums_at_download_and_catches_later_changes(tmp_path, monkeypatch):
    """Hub files have no catalog SHA-256: the one recorded at download is the reference afterwards.
    huggingface_hub.snapshot_download is replaced by a local copy (nothing is fetched)."""
    huggingface_hub = pytest.importorskip("huggingface_hub", reason="hub models need huggingface_hub")

    names = ["model_index.json", "unet/config.json"]
    entry = {"kind": "hub", "backbone": "sd", "source": {"repo": "someone/tiny-sd", "revision": "abc123"},
             "licence": "test", "files": [{"name": n, "size": None, "sha256": None, "reason": "hub"} for n in names]}
    (tmp_path / "models.json").write_text(json.dumps({"models": {"tiny-hub": entry}}))
    monkeypatch.setenv("DIFFREG_CATALOG", str(tmp_path / "models.json"))
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_snapshot(repo_id, revision, local_dir, allow_patterns):
        calls.append((repo_id, revision, sorted(allow_patterns)))
        for name in allow_patterns:
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(local_dir) / name).write_text(f"contents of {name}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    folder = tmp_path / "cache" / "tiny-hub"
    assert weights.download("tiny-hub") == folder
    assert calls == [("someone/tiny-sd", "abc123", sorted(names))]
    assert weights.status("tiny-hub") == "verified" and weights.verify("tiny-hub") == folder
    (folder / "unet" / "config.json").write_text("contents of unet/config.jsoX")
    with pytest.raises(RegistrationError, match="recorded when it was downloaded"):
        weights.verify("tiny-hub")
    (folder / "model_index.json").unlink()
    with pytest.raises(RegistrationError, match="someone/tiny-sd .revision abc123. into the folder"):
        weights.path("tiny-hub")
