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
    assert weights.status("tiny") == "not checked"
    assert weights.path("tiny") == folder
    assert weights.status("tiny") == "verified"
    target = folder / "extra" / "config.json"
    target.write_bytes(b'{"layers": 4}\n')  # same size, other content, newer time
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert weights.status("tiny") == "not checked"
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
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "diffusionregistration" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "diffusionregistration" / "models"


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
        if entry["kind"] == "builtin":
            assert entry["backbone"] == model_id and "files" not in entry and entry["licence"], model_id
            continue
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
    assert adm["md5"] == "fd9dd2335b8736d521de0aed54bd90ca"  # the blob store's Content-MD5
    assert adm["sha256"] == "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1"
    assert all(adm[f"{key}_source"] for key in ("size", "md5", "sha256"))
    assert {"image", "mind"} <= {m for m, e in data["models"].items() if e["kind"] == "builtin"}
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
        weights.default_backbone_path()  # the only model is the default when none is named
    weights.download("tiny")
    folder = tmp_path / "cache" / "tiny"
    assert weights.default_backbone_path() == folder
    assert weights.extractor_spec("tiny", dim=2) == {"backbone": "adm", "checkpoint": str(folder),
                                                     "tap": "output_blocks.10", "timestep": 60}


HUB_FILES = {"model_index.json": b'{"_class_name": "StableDiffusionPipeline"}\n',
             "unet/diffusion_pytorch_model.safetensors": bytes(range(256)) * 300,
             "unet/config.json": b'{"sample_size": 8}\n'}


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A hub model of three files; huggingface_hub's repository info and snapshot are replaced by local
    stand-ins (nothing leaves the machine). The hub lists the safetensors file as LFS with its SHA-256
    and model_index.json with its git blob id, both computed here with hashlib; it does not list
    unet/config.json. Returns the served contents (a dict the test may change) and the calls."""
    huggingface_hub = pytest.importorskip("huggingface_hub", reason="hub models need huggingface_hub")
    from huggingface_hub.hf_api import ModelInfo

    entry = {"kind": "hub", "backbone": "sd", "source": {"repo": "someone/tiny-sd", "revision": "abc123"},
             "licence": "test", "files": [{"name": n, "size": None, "sha256": None, "reason": "hub"} for n in HUB_FILES]}
    (tmp_path / "models.json").write_text(json.dumps({"models": {"tiny-hub": entry}}))
    monkeypatch.setenv("DIFFREG_CATALOG", str(tmp_path / "models.json"))
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "cache"))
    served, calls = dict(HUB_FILES), []
    lfs_name, blob_name = "unet/diffusion_pytorch_model.safetensors", "model_index.json"
    lfs_data, blob_data = HUB_FILES[lfs_name], HUB_FILES[blob_name]
    # the hub's JSON for these files (parsed by huggingface_hub's own ModelInfo)
    siblings = [{"rfilename": lfs_name, "size": len(lfs_data), "blobId": "0" * 40,
                 "lfs": {"size": len(lfs_data), "sha256": hashlib.sha256(lfs_data).hexdigest(), "pointerSize": 134}},
                {"rfilename": blob_name, "size": len(blob_data),
                 "blobId": hashlib.sha1(b"blob %d\0" % len(blob_data) + blob_data).hexdigest()}]

    def fake_info(self, repo_id, revision=None, files_metadata=False, **_):
        calls.append(("info", repo_id, revision, files_metadata))
        return ModelInfo(id=repo_id, siblings=siblings)

    def fake_snapshot(repo_id, revision, local_dir, allow_patterns):
        calls.append(("snapshot", repo_id, revision, sorted(allow_patterns)))
        for name in allow_patterns:
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(local_dir) / name).write_bytes(served[name])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    return served, calls


def test_hub_model_is_checked_against_the_hubs_checksums_at_download_and_afterwards(hub, tmp_path):
    served, calls = hub
    folder = tmp_path / "cache" / "tiny-hub"
    assert weights.download("tiny-hub") == folder
    assert calls == [("info", "someone/tiny-sd", "abc123", True),
                     ("snapshot", "someone/tiny-sd", "abc123", sorted(HUB_FILES))]
    stamp = json.loads((folder / weights.STAMP).read_text())
    assert {name: record["reference"] for name, record in stamp.items()} == {
        "model_index.json": "hub", "unet/diffusion_pytorch_model.safetensors": "hub", "unet/config.json": "none"}
    # one file has no reference checksum: the model is "unverified", never "verified"
    assert weights.status("tiny-hub") == "unverified" and weights.verify("tiny-hub") == folder
    target = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(RegistrationError, match="reference: the hub's checksum read at download"):
        weights.verify("tiny-hub")
    target.write_bytes(data)
    (folder / "unet" / "config.json").write_text('{"sample_size": 9}\n')
    with pytest.raises(RegistrationError, match="recorded when it was first checked"):
        weights.verify("tiny-hub")
    (folder / "model_index.json").unlink()
    with pytest.raises(RegistrationError, match="someone/tiny-sd .revision abc123. into the folder"):
        weights.path("tiny-hub")


@pytest.mark.parametrize("name", ["unet/diffusion_pytorch_model.safetensors", "model_index.json"])
def test_hub_download_that_differs_from_the_hubs_checksum_is_rejected(hub, tmp_path, name):
    served, _ = hub
    served[name] = served[name][:-1] + b"X"
    with pytest.raises(RegistrationError, match="wrong checksum"):
        weights.download("tiny-hub")
    assert weights.status("tiny-hub") != "verified"


# the catalog's ADM entry with its size, MD5 and SHA-256 replaced by those of b"abc" (FIPS 180-2 and
# RFC 1321 test vectors, literal here), so the stand-in file goes through the same code path
ABC_MD5, ABC_SHA256 = "900150983cd24fb0d6963f7d28e17f72", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.fixture()
def adm_stand_in(tmp_path, monkeypatch):
    data = json.loads(REPO_CATALOG.read_text())
    entry = data["models"]["adm-256-uncond"]
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "256x256_diffusion_uncond.pt").write_bytes(b"abc")
    entry["files"][0].update(size=3, md5=ABC_MD5, sha256=ABC_SHA256,
                             url=(tmp_path / "server" / "256x256_diffusion_uncond.pt").as_uri())
    (tmp_path / "models.json").write_text(json.dumps(data))
    monkeypatch.setenv("DIFFREG_CATALOG", str(tmp_path / "models.json"))
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "adm-256-uncond" / "256x256_diffusion_uncond.pt"


@pytest.mark.parametrize("content, match", [(b"abc", None), (b"Abc", "MD5"), (b"aBc", "MD5"), (b"abC", "MD5"),
                                            (b"ab", "truncated"), (b"abcd", "larger than expected")])
def test_adm_entry_verifies_the_right_file_and_rejects_any_changed_byte(adm_stand_in, content, match):
    adm_stand_in.parent.mkdir(parents=True)
    adm_stand_in.write_bytes(content)
    if match is None:
        assert weights.verify("adm-256-uncond") == adm_stand_in
        assert weights.status("adm-256-uncond") == "verified"
    else:
        with pytest.raises(RegistrationError, match=match):
            weights.verify("adm-256-uncond")
        assert weights.status("adm-256-uncond") == "not checked"


def test_adm_entry_checks_md5_and_sha256_each(adm_stand_in, tmp_path):
    """A catalog MD5 or SHA-256 that the file does not have is caught on its own."""
    adm_stand_in.parent.mkdir(parents=True)
    adm_stand_in.write_bytes(b"abc")
    data = json.loads((tmp_path / "models.json").read_text())
    item = data["models"]["adm-256-uncond"]["files"][0]
    for key, wrong, match in (("md5", hashlib.md5(b"").hexdigest(), "MD5 900150983cd24fb0d6963f7d28e17f72"),
                              ("sha256", hashlib.sha256(b"").hexdigest(), "SHA-256 ba7816bf")):
        (tmp_path / "models.json").write_text(json.dumps(data).replace(item[key], wrong))
        with pytest.raises(RegistrationError, match=match):
            weights.verify("adm-256-uncond")


@pytest.mark.parametrize("served, match", [(b"abc", None), (b"xbc", "MD5"), (b"abx", "MD5"), (b"ab", "instead of")])
def test_adm_download_verifies_while_streaming_without_reading_the_file_again(adm_stand_in, tmp_path, monkeypatch,
                                                                            served, match):
    (tmp_path / "server" / "256x256_diffusion_uncond.pt").write_bytes(served)

    def no_second_read(*args, **kwargs):
        raise AssertionError("the downloaded file was read again")

    monkeypatch.setattr(weights.Digests, "of_file", no_second_read)
    if match is None:
        assert weights.download("adm-256-uncond") == adm_stand_in
        assert weights.status("adm-256-uncond") == "verified"
    else:
        with pytest.raises(RegistrationError, match=match):
            weights.download("adm-256-uncond")
        assert not adm_stand_in.exists()
