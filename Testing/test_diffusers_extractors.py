"""Stable Diffusion and pixel UNet2DModel extractors on tiny random diffusers models.

The models are built here, saved with save_pretrained and loaded back through the path users take
(a model folder). References are computed independently: a full diffusers forward with a hook that only
records the tapped block's output.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from DiffusionRegistrationLib.errors import RegistrationError  # noqa: E402
from DiffusionRegistrationLib.features.loading import load_extractor  # noqa: E402
from DiffusionRegistrationLib.features.sd_extractor import StableDiffusionExtractor  # noqa: E402
from DiffusionRegistrationLib.features.unet2d_extractor import PixelUNetExtractor  # noqa: E402

TEXT_LENGTH, TEXT_WIDTH = 8, 16


def _tiny_tokenizer(folder):
    """A CLIP BPE tokenizer from a hand-written vocabulary (no download): pad '!', bos, eos, two letters."""
    folder.mkdir(parents=True)
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2, "a</w>": 3, "b</w>": 4, "a": 5, "b": 6}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!",
                                           model_max_length=TEXT_LENGTH)
    tokenizer.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny Stable Diffusion folder: VAE with 2 levels (x2), UNet with 3 levels (2 down-samplings)."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    _tiny_tokenizer(folder / "tokenizer")
    config = transformers.CLIPTextConfig(vocab_size=7, hidden_size=TEXT_WIDTH, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         max_position_embeddings=TEXT_LENGTH, bos_token_id=1, eos_token_id=2,
                                         pad_token_id=0, projection_dim=TEXT_WIDTH)
    transformers.CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                            layers_per_block=1, norm_num_groups=4, sample_size=32).save_pretrained(folder / "vae")
    diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16, 24),
        layers_per_block=1, cross_attention_dim=TEXT_WIDTH, attention_head_dim=4,
        norm_num_groups=4).save_pretrained(folder / "unet")
    # Stable Diffusion 2.1 ships a PNDM scheduler configuration; the extractor reads it as DDPM (same betas)
    diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                            steps_offset=1, set_alpha_to_one=False).save_pretrained(folder / "scheduler")
    return folder


def _images(batch=2, height=32, width=32, seed=1):
    return torch.rand(batch, 1, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sd_parts(sd_folder):
    """The tiny model's parts loaded directly with diffusers / transformers (for the references)."""
    return {"tokenizer": transformers.CLIPTokenizer.from_pretrained(sd_folder / "tokenizer"),
            "text_encoder": transformers.CLIPTextModel.from_pretrained(sd_folder / "text_encoder"),
            "vae": diffusers.AutoencoderKL.from_pretrained(sd_folder / "vae"),
            "unet": diffusers.UNet2DConditionModel.from_pretrained(sd_folder / "unet"),
            "scheduler": diffusers.PNDMScheduler.from_pretrained(sd_folder / "scheduler")}


def _reference_sd(parts, images, up_block, timestep, seed, latent):
    """The whole diffusers pipeline by hand (full UNet forward), recording up block `up_block`'s output."""
    tokenizer, text_encoder, vae, unet, scheduler = (parts[k] for k in ("tokenizer", "text_encoder", "vae", "unet",
                                                                        "scheduler"))
    with torch.no_grad():
        ids = tokenizer([""] * len(images), padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt")
        context = text_encoder(ids.input_ids).last_hidden_state
        rgb = images.repeat(1, 3, 1, 1) * 2 - 1
        posterior = vae.encode(rgb).latent_dist
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, 4, *posterior.mean.shape[-2:]), generator=generator)
        latents = posterior.mean
        if latent == "sample":
            latents = latents + posterior.std * torch.randn((1, 4, *latents.shape[-2:]), generator=generator)
        latents = latents * vae.config.scaling_factor
        t = torch.full((len(images),), timestep, dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise.repeat(len(images), 1, 1, 1), t)
        recorded = {}
        handle = unet.up_blocks[up_block].register_forward_hook(lambda m, i, o: recorded.setdefault("out", o))
        full = unet(noisy, t, encoder_hidden_states=context).sample
        handle.remove()
    assert full.shape == noisy.shape  # the reference ran the whole network
    return recorded["out"]


# -- Stable Diffusion ---------------------------------------------------------------------------------
@pytest.mark.parametrize("up_block, stride, channels", [(0, 4, 24), (1, 2, 16), (2, 2, 8)])
def test_sd_tap_shape_and_stride(sd_folder, up_block, stride, channels):
    # VAE halves once; the UNet halves twice; up block 0 and 1 double, up block 2 (the last) does not
    extractor = StableDiffusionExtractor.from_pretrained(sd_folder, up_block_index=up_block, ensemble=1)
    assert (extractor.stride, extractor.size_multiple, extractor.channels) == (stride, 8, channels)
    features = extractor(_images(2, 16, 24))
    assert features.shape == (2, channels, 16 // stride, 24 // stride)
    odd = extractor(_images(1, 14, 19))  # padded to 16 x 24 and cropped back
    assert odd.shape == (1, channels, -(-14 // stride), -(-19 // stride))


@pytest.mark.parametrize("latent", ["mean", "sample"])
def test_sd_features_equal_manual_diffusers_forward(sd_folder, sd_parts, latent):
    images = _images(2, 16, 24)
    extractor = StableDiffusionExtractor.from_pretrained(sd_folder, up_block_index=1, timestep=261, ensemble=1,
                                                         noise_seed=7, latent=latent)
    expected = _reference_sd(sd_parts, images, up_block=1, timestep=261, seed=7, latent=latent)
    got = extractor(images)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    other = _reference_sd(sd_parts, images, up_block=1, timestep=261, seed=8, latent=latent)
    assert not torch.allclose(got, other, atol=1e-4)  # the noise draw matters, so the match above is real


def test_sd_stops_the_unet_at_the_tap(sd_folder):
    extractor = StableDiffusionExtractor.from_pretrained(sd_folder, up_block_index=0, ensemble=1)
    calls = []
    handles = [extractor.unet.up_blocks[1].register_forward_hook(lambda *a: calls.append("up1")),
               extractor.unet.conv_out.register_forward_hook(lambda *a: calls.append("conv_out"))]
    extractor(_images(1, 16, 16))
    for handle in handles:
        handle.remove()
    assert calls == []


def test_sd_ensemble_is_mean_of_single_draws(sd_folder):
    images = _images(2, 16, 16)
    extractor = StableDiffusionExtractor.from_pretrained(sd_folder, ensemble=3, noise_seed=5)
    ensemble = extractor(images)
    singles = []
    for seed in (5, 6, 7):
        extractor.ensemble, extractor.noise_seed = 1, seed
        singles.append(extractor(images))
    torch.testing.assert_close(ensemble, torch.stack(singles).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(singles[0], singles[1], atol=1e-4)


def test_sd_defaults_are_dift(sd_folder):
    extractor = StableDiffusionExtractor.from_pretrained(sd_folder)
    assert (extractor.timestep, extractor.up_block_index, extractor.ensemble) == (261, 1, 8)


def test_sd_weights_frozen_input_gets_gradient(sd_folder):
    extractor = StableDiffusionExtractor.from_pretrained(sd_folder, ensemble=1)
    images = _images(1, 16, 16).requires_grad_(True)
    extractor(images).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in extractor.parameters())


def test_sd_bfloat16_autocast_stays_close_to_float32(sd_folder):
    extractor = StableDiffusionExtractor.from_pretrained(sd_folder, ensemble=1)
    images = _images(2, 16, 16)
    reference = extractor(images)
    extractor.compute_dtype = torch.bfloat16
    reduced = extractor(images)
    assert reduced.dtype == torch.float32
    assert 0 < ((reduced - reference).norm() / reference.norm()).item() < 0.05


def test_sd_empty_prompt_embedding_computed_once(sd_folder, monkeypatch):
    calls = []
    forward = transformers.CLIPTextModel.forward
    monkeypatch.setattr(transformers.CLIPTextModel, "forward",
                        lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    extractor = StableDiffusionExtractor.from_pretrained(sd_folder, ensemble=2)
    extractor(_images(2, 16, 16))
    extractor(_images(1, 16, 16))
    assert len(calls) == 1
    assert not any(isinstance(m, transformers.CLIPTextModel) for m in extractor.modules())
    tokenizer = transformers.CLIPTokenizer.from_pretrained(sd_folder / "tokenizer")
    text_encoder = transformers.CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    with torch.no_grad():
        expected = text_encoder(tokenizer("", padding="max_length", max_length=TEXT_LENGTH,
                                          return_tensors="pt").input_ids).last_hidden_state
    torch.testing.assert_close(extractor.prompt_embedding, expected)
    assert "prompt_embedding" in dict(extractor.named_buffers())


def test_sd_loads_through_load_extractor_and_reports_bad_folders(sd_folder, tmp_path):
    extractor = load_extractor({"backbone": "sd", "model": str(sd_folder), "ensemble": 1, "timestep": 100})
    assert isinstance(extractor, StableDiffusionExtractor) and extractor.timestep == 100
    with pytest.raises(RegistrationError, match="no such folder"):
        load_extractor({"backbone": "sd", "model": str(tmp_path / "nowhere")})
    with pytest.raises(RegistrationError, match="needs 'model'"):
        load_extractor({"backbone": "sd"})
    with pytest.raises(RegistrationError, match="up_block_index 5"):
        StableDiffusionExtractor.from_pretrained(sd_folder, up_block_index=5)
    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    weights = next((broken / "unet").glob("diffusion_pytorch_model.*"))
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(RegistrationError, match="unet"):
        StableDiffusionExtractor.from_pretrained(broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(RegistrationError, match="lacks vae"):
        StableDiffusionExtractor.from_pretrained(broken)


# -- pixel-space UNet2DModel --------------------------------------------------------------------------
def _tiny_unet2d(in_channels):
    torch.manual_seed(in_channels)
    return diffusers.UNet2DModel(sample_size=16, in_channels=in_channels, out_channels=in_channels,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                                 block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
                                 attention_head_dim=4)


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A grey (1-channel) model saved as a DDPMPipeline folder (unet/ and scheduler/)."""
    folder = tmp_path_factory.mktemp("tiny-ddpm")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2")
    diffusers.DDPMPipeline(unet=_tiny_unet2d(1), scheduler=scheduler).save_pretrained(folder)
    return folder


def _reference_unet2d(folder, images, tap, timestep, seed, channels):
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet")
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    group, _, index = tap.partition(".")
    block = unet.mid_block if group == "mid_block" else getattr(unet, group)[int(index)]
    with torch.no_grad():
        x = images.repeat(1, channels, 1, 1) * 2 - 1
        noise = torch.randn((1, channels, *x.shape[-2:]), generator=torch.Generator().manual_seed(seed))
        t = torch.full((len(images),), timestep, dtype=torch.long)
        noisy = scheduler.add_noise(x, noise.repeat(len(images), 1, 1, 1), t)
        recorded = {}
        handle = block.register_forward_hook(lambda m, i, o: recorded.setdefault("out", o))
        unet(noisy, t)
        handle.remove()
    out = recorded["out"]
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("tap, stride, channels", [("down_blocks.0", 2, 8), ("down_blocks.2", 4, 16),
                                                   ("mid_block", 4, 16), ("up_blocks.0", 2, 16),
                                                   ("up_blocks.1", 1, 16), ("up_blocks.2", 1, 8)])
def test_pixel_unet_taps_match_full_forward(pipeline_folder, tap, stride, channels):
    images = _images(2, 16, 24)
    extractor = PixelUNetExtractor.from_pretrained(pipeline_folder, tap=tap, timestep=120, noise_seed=3)
    assert (extractor.stride, extractor.size_multiple) == (stride, 4)
    got = extractor(images)
    assert got.shape == (2, channels, 16 // stride, 24 // stride)
    expected = _reference_unet2d(pipeline_folder, images, tap, 120, 3, 1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_pixel_unet_rgb_bare_folder_gradients_and_bad_models(tmp_path):
    _tiny_unet2d(3).save_pretrained(tmp_path / "rgb")  # a bare UNet folder: the DDPM default scheduler
    extractor = load_extractor({"backbone": "unet2d", "model": str(tmp_path / "rgb"), "tap": "up_blocks.0"})
    assert isinstance(extractor, PixelUNetExtractor) and extractor.scheduler.config.num_train_timesteps == 1000
    images = _images(1, 18, 21).requires_grad_(True)  # not a multiple of 4: padded and cropped
    features = extractor(images)
    assert features.shape == (1, 16, 9, 11)
    features.sum().backward()
    assert images.grad.abs().sum() > 0 and all(p.grad is None for p in extractor.parameters())
    with pytest.raises(RegistrationError, match="up_blocks.0, up_blocks.1, up_blocks.2"):
        PixelUNetExtractor.from_pretrained(tmp_path / "rgb", tap="up_blocks.7")
    with pytest.raises(RegistrationError, match="outside 0..999"):
        PixelUNetExtractor.from_pretrained(tmp_path / "rgb", timestep=1000)
    _tiny_unet2d(2).save_pretrained(tmp_path / "two")
    with pytest.raises(RegistrationError, match="2 input channels"):
        PixelUNetExtractor.from_pretrained(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistrationError, match="neither unet/config.json"):
        PixelUNetExtractor.from_pretrained(tmp_path / "empty")


def test_catalog_model_is_downloaded_verified_and_loaded_by_id(tmp_path, monkeypatch):
    """The user's path: a catalog id -> `diffreg models download` (file:// here) -> load_extractor(id)."""
    import hashlib

    _tiny_unet2d(1).save_pretrained(tmp_path / "server")
    files = [{"name": p.name, "url": p.as_uri(), "size": p.stat().st_size,
              "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted((tmp_path / "server").iterdir())]
    entry = {"kind": "file", "backbone": "unet2d", "source": {"url": files[0]["url"]}, "files": files,
             "licence": "test", "extractor": {"tap": "down_blocks.1", "timestep": 30}}
    (tmp_path / "models.json").write_text(json.dumps({"models": {"my-ct-ddpm": entry}}))
    monkeypatch.setenv("DIFFREG_CATALOG", str(tmp_path / "models.json"))
    monkeypatch.setenv("DIFFREG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RegistrationError, match="diffreg models download my-ct-ddpm"):
        load_extractor({"backbone": "my-ct-ddpm"})
    from DiffusionRegistrationLib.features.weights import download
    download("my-ct-ddpm")
    extractor = load_extractor({"backbone": "my-ct-ddpm", "timestep": 40})
    assert isinstance(extractor, PixelUNetExtractor)
    assert (extractor.tap, extractor.timestep, extractor.stride) == ("down_blocks.1", 40, 4)
    assert str(tmp_path / "cache" / "my-ct-ddpm") in extractor.cache_key()
