"""The clean-room ADM: the official checkpoint's keys and shapes, the reference vectors, the extractor."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.features.adm import (ADM_256_UNCOND_FLAGS, ADM_SMALL_FLAGS, build_adm,
                                                   count_parameters)
from DiffusionRegistrationLib.features.adm_extractor import AdmExtractor
from DiffusionRegistrationLib.features.diffusion_schedule import alphas_cumprod, q_sample
from DiffusionRegistrationLib.features.loading import load_extractor

# Vectors from the reference ADM implementation, kept in the repository (provenance: Testing/reference/README.md)
REFERENCE = Path(__file__).resolve().parent / "reference"
MANIFEST = REFERENCE / "adm_256_uncond_manifest.json"
SMALL = REFERENCE / "adm_small_reference.pt"

TAPS = [("output_blocks_10_t60", "output_blocks.10", 60), ("input_blocks_11_t50", "input_blocks.11", 50),
        ("output_blocks_4_t60", "output_blocks.4", 60), ("input_blocks_5_t261", "input_blocks.5", 261),
        ("model_output_t60", "out", 60)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


@pytest.fixture(scope="module")
def reference():
    return torch.load(SMALL, weights_only=True)


@pytest.fixture(scope="module")
def small_model(reference):
    model = build_adm(reference["config"])
    model.load_state_dict({k: v.float() for k, v in reference["state_dict"].items()}, strict=True)
    return model.eval()


def test_manifest_keys_shapes_and_parameter_count():
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["config"] == ADM_256_UNCOND_FLAGS
    model = build_adm(manifest["config"], device="meta")  # allocates nothing
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 566
    assert shapes == manifest["state_dict_shapes"]
    assert count_parameters(model) == manifest["num_parameters"] == 552_814_086
    assert (model.tap_stride("output_blocks.10"), model.tap_channels("output_blocks.10")) == (4, 512)
    assert (model.tap_stride("input_blocks.11"), model.tap_channels("input_blocks.11")) == (8, 512)
    assert model.tap_size_multiple("input_blocks.11") == 8 and model.tap_size_multiple("output_blocks.10") == 32


def test_schedule_and_q_sample(reference):
    tensors = reference["tensors"]
    assert torch.allclose(alphas_cumprod(), tensors["alphas_cumprod"], rtol=0, atol=1e-15)
    x0 = tensors["images"].repeat(1, 3, 1, 1) * 2 - 1
    for t in (60, 50, 261):
        assert relative_error(q_sample(x0, t, tensors["noise"]), tensors[f"x_t_{t}"]) < 1e-6


@pytest.mark.parametrize("name,tap,t", TAPS)
def test_reference_tensors(reference, small_model, name, tap, t):
    tensors = reference["tensors"]
    with torch.no_grad():
        out = small_model.forward_to(tensors[f"x_t_{t}"], torch.full((2,), t), tap)
    assert out.shape == tensors[name].shape
    assert relative_error(out, tensors[name]) < 2e-5


def test_encoder_tap_never_runs_the_decoder(reference, small_model):
    ran = []
    hooks = [small_model.middle_block.register_forward_hook(lambda *a: ran.append("middle")),
             small_model.output_blocks[0].register_forward_hook(lambda *a: ran.append("decoder"))]
    try:
        with torch.no_grad():
            small_model.forward_to(reference["tensors"]["x_t_50"], 50, "input_blocks.11")
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == []


def test_extractor_matches_the_network_with_its_noise(reference, small_model):
    extractor = AdmExtractor.from_state_dict(reference["config"], reference["state_dict"], noise_seed=3)
    images = reference["tensors"]["images"]
    with torch.no_grad():
        features = extractor(images)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn((1, 3, 64, 96), generator=generator).expand(2, -1, -1, -1)
    expected = small_model.forward_to(q_sample(images.repeat(1, 3, 1, 1) * 2 - 1, 60, noise), 60,
                                      "output_blocks.10").detach()
    assert extractor.tap == "output_blocks.10" and extractor.timestep == 60 and extractor.stride == 4
    assert relative_error(features, expected) < 1e-5
    # every image of a batch sees the same noise: a batch equals its images one at a time
    with torch.no_grad():
        one = extractor(images[1:])
    assert relative_error(features[1:], one) < 1e-5


def test_paper_defaults_for_3d_slices():
    extractor = AdmExtractor.random(dim=3)
    assert (extractor.tap, extractor.timestep, extractor.stride, extractor.size_multiple) == ("input_blocks.11", 50, 8, 8)


def test_weights_get_no_gradient_and_the_input_does():
    extractor = AdmExtractor.random(seed=1)
    assert all(not p.requires_grad for p in extractor.parameters())
    images = torch.rand(2, 1, 32, 32, requires_grad=True)
    extractor(images).square().mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())
    with torch.no_grad():
        assert not extractor(torch.rand(1, 1, 32, 32)).requires_grad


@pytest.mark.parametrize("dim,size,expected", [(2, (50, 70), (13, 18)), (3, (45, 61), (6, 8)), (2, (64, 96), (16, 24))])
def test_padding_crops_back_to_ceil_of_size_over_stride(dim, size, expected):
    extractor = AdmExtractor.random(dim=dim)
    with torch.no_grad():
        features = extractor(torch.rand(3, 1, *size))
    assert features.shape == (3, 64, *expected)


def test_chunks_and_ensemble_behave():
    extractor = AdmExtractor.random(chunk_size=1)
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        chunked = extractor(images)
        extractor.chunk_size = 8
        whole = extractor(images)
    assert torch.allclose(chunked, whole, atol=1e-4, rtol=1e-4)  # batch-dependent kernels round differently


def _small_checkpoint(tmp_path: Path, edit=None) -> Path:
    model = build_adm(ADM_SMALL_FLAGS)
    state = model.state_dict()
    if edit:
        edit(state)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path


def test_checkpoint_loads_strictly_and_through_the_spec(tmp_path):
    path = _small_checkpoint(tmp_path)
    extractor = AdmExtractor.from_checkpoint(path, flags=ADM_SMALL_FLAGS)
    assert extractor.channels == 64
    same = load_extractor({"backbone": "adm", "checkpoint": str(path), "flags": ADM_SMALL_FLAGS}, dim=3)
    assert same.tap == "input_blocks.11" and same.timestep == 50
    random = load_extractor({"backbone": "adm-small-random", "seed": 2, "timestep": 100})
    assert random.timestep == 100 and "adm-small-random" in random.cache_key()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RegistrationError, match="no such file"):
        AdmExtractor.from_checkpoint(tmp_path / "256x256_diffusion_uncond.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = _small_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RegistrationError, match="truncated or corrupt"):
        AdmExtractor.from_checkpoint(path, flags=ADM_SMALL_FLAGS)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RegistrationError, match="truncated or corrupt"):
        AdmExtractor.from_checkpoint(path, flags=ADM_SMALL_FLAGS)


def test_wrong_keys_are_named(tmp_path):
    def edit(state):
        state["input_blocks.1.0.renamed.weight"] = state.pop("input_blocks.1.0.in_layers.2.weight")
        state["out.2.bias"] = torch.zeros(7)

    path = _small_checkpoint(tmp_path, edit)
    with pytest.raises(RegistrationError) as error:
        AdmExtractor.from_checkpoint(path, flags=ADM_SMALL_FLAGS)
    message = str(error.value)
    assert "input_blocks.1.0.in_layers.2.weight" in message and "missing" in message
    assert "input_blocks.1.0.renamed.weight" in message and "unexpected" in message
    assert "out.2.bias" in message and "shape" in message
    # the small network's weights are not the official architecture's
    with pytest.raises(RegistrationError, match="wrong shape"):
        AdmExtractor.from_checkpoint(_small_checkpoint(tmp_path))


def test_bad_specs_are_clear_errors():
    with pytest.raises(RegistrationError, match="unknown feature backbone"):
        load_extractor({"backbone": "nope"})
    with pytest.raises(RegistrationError, match="checkpoint"):
        load_extractor({"backbone": "adm"})
    with pytest.raises(RegistrationError, match="bad options"):
        load_extractor({"backbone": "adm-small-random", "colour": "red"})
    with pytest.raises(RegistrationError, match="tap"):
        load_extractor({"backbone": "adm-small-random", "tap": "input_blocks.99"})


def test_reference_files_are_the_recorded_ones():
    """The vectors are the ones whose SHA-256 the provenance note records (a changed file is no reference)."""
    import hashlib
    import re

    recorded = dict(re.findall(r"^- (\S+) ([0-9a-f]{64})$", (REFERENCE / "README.md").read_text(), re.M))
    assert set(recorded) == {MANIFEST.name, SMALL.name}
    for name, digest in recorded.items():
        assert hashlib.sha256((REFERENCE / name).read_bytes()).hexdigest() == digest
