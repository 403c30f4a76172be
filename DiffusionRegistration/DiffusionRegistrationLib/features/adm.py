"""ADM: a clean-room PyTorch UNet with the architecture of OpenAI guided-diffusion's `UNetModel`.

Built from guided-diffusion's model flags (`AdmConfig.from_flags`), its state dict has exactly the keys
and shapes of the official checkpoints (for example `256x256_diffusion_uncond.pt`: 566 tensors,
552,814,086 parameters), so those load with `strict=True`.

Architecture, as the checkpoints expect it:
- `time_embed`: sinusoidal embedding of the timestep (cos half, then sin half) -> Linear -> SiLU -> Linear.
- `input_blocks`: a 3x3 input convolution, then per resolution level `num_res_blocks` residual blocks
  (each followed by an attention block at the attention resolutions) and, except at the last level, a
  down-sampling residual block (average pooling inside the block). Every input block's output is kept
  as a skip connection.
- `middle_block`: residual block, attention block, residual block.
- `output_blocks`: per level, from the coarsest, `num_res_blocks + 1` residual blocks, each on the
  concatenation of the running features and the latest skip, an attention block at the attention
  resolutions, and (except at the finest level) an up-sampling residual block (nearest neighbour).
- `out`: GroupNorm, SiLU, 3x3 convolution to the output channels (6 with learned sigmas).
Residual blocks modulate their second GroupNorm with a per-channel scale and shift from the time
embedding (`use_scale_shift_norm`); GroupNorm has 32 groups and always computes in float32.
Attention has a fixed head width (`num_head_channels`) and the "legacy" q/k/v order of the released
checkpoints (the fused qkv projection is split into heads first, then into q, k, v); it runs through
`scaled_dot_product_attention`.

`AdmUNet.forward_to(x, t, tap)` runs only as far as a tap ("input_blocks.N", "middle_block",
"output_blocks.N", "out"); an encoder tap never runs the middle block or the decoder.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

#: channel multipliers guided-diffusion picks from the image size when `channel_mult` is empty
_DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                         64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


#: guided-diffusion's flags for the official 256x256 unconditional ImageNet model (256x256_diffusion_uncond.pt)
ADM_256_UNCOND_FLAGS = {
    "image_size": 256, "num_channels": 256, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
    "num_head_channels": 64, "attention_resolutions": "32,16,8", "channel_mult": "", "dropout": 0.0,
    "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True, "resblock_updown": True,
    "use_fp16": False, "use_new_attention_order": False, "learn_sigma": True, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "", "use_kl": False, "predict_xstart": False,
    "rescale_timesteps": False, "rescale_learned_sigmas": False,
}
#: the small model of the same family that Testing/reference/adm_small_reference.pt was computed with
ADM_SMALL_FLAGS = {**ADM_256_UNCOND_FLAGS, "num_channels": 32, "num_head_channels": 16}


@dataclass(frozen=True)
class AdmConfig:
    """The architecture hyper-parameters of a guided-diffusion UNetModel."""

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8, 16, 32)  # as downsampling factors
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    num_classes: Optional[int] = None
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_flags(cls, flags: dict) -> "AdmConfig":
        """The config guided-diffusion's `create_model` builds from its command-line flags."""
        image_size = int(flags.get("image_size", 256))
        channel_mult = flags.get("channel_mult", "")
        if isinstance(channel_mult, str):
            if channel_mult == "":
                if image_size not in _DEFAULT_CHANNEL_MULT:
                    raise ValueError(f"unsupported image size {image_size}; give channel_mult explicitly")
                mult = _DEFAULT_CHANNEL_MULT[image_size]
            else:
                mult = tuple(int(m) for m in channel_mult.split(","))
        else:
            mult = tuple(channel_mult)
        attention = flags.get("attention_resolutions", "32,16,8")
        if isinstance(attention, str):
            resolutions = [int(r) for r in attention.split(",") if r.strip()]
            attention_ds = tuple(image_size // r for r in resolutions)
        else:  # already downsampling factors
            attention_ds = tuple(int(a) for a in attention)
        learn_sigma = bool(flags.get("learn_sigma", False))
        return cls(image_size=image_size, in_channels=int(flags.get("in_channels", 3)),
                   model_channels=int(flags["num_channels"]), out_channels=6 if learn_sigma else 3,
                   num_res_blocks=int(flags["num_res_blocks"]), attention_resolutions=attention_ds,
                   channel_mult=mult, num_heads=int(flags.get("num_heads", 4)),
                   num_head_channels=int(flags.get("num_head_channels", -1)),
                   num_heads_upsample=int(flags.get("num_heads_upsample", -1)),
                   use_scale_shift_norm=bool(flags.get("use_scale_shift_norm", True)),
                   resblock_updown=bool(flags.get("resblock_updown", False)),
                   num_classes=1000 if flags.get("class_cond", False) else None,
                   extra={k: v for k, v in flags.items()})


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N] -> [N, dim]: cos of t * frequencies, then sin (frequencies in float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm of 32 groups that computes in float32 and returns the input's dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        autocast = device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)
        if x.dtype == torch.float32 and not autocast:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                                self.eps).to(x.dtype)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling (no convolution inside residual blocks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Downsample(nn.Module):
    """2x2 average pooling with stride 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally resampling (up or down)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, use_scale_shift_norm: bool,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(), Upsample()
        elif down:
            self.h_upd, self.x_upd = Downsample(), Downsample()
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # In-place activations only where no graph is recorded (they would overwrite saved tensors).
        inplace = not torch.is_grad_enabled()
        norm, _, conv = self.in_layers
        if self.updown:
            h = conv(self.h_upd(F.silu(norm(x), inplace=inplace)))
            x = self.x_upd(x)
        else:
            h = conv(F.silu(norm(x), inplace=inplace))
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm, _, dropout, conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = torch.addcmul(shift, norm(h), 1 + scale)  # norm(h) * (1 + scale) + shift
        else:
            h = norm(h + emb_out)
        h = conv(dropout(F.silu(h, inplace=inplace)))
        # the convolution's output is not needed by its backward, so adding into it is safe
        return h.add_(self.skip_connection(x)) if h.dtype == x.dtype else self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    The fused 1x1 qkv projection's 3C channels are laid out head by head, each head holding its q, k and
    v (the order of the released checkpoints).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels do not split into heads of {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        length = height * width
        head = c // self.num_heads
        # tokens [b, T, c]: a free view of a channels-last tensor; 1x1 convolutions as linear layers
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, length, c)
        qkv = F.linear(tokens, self.qkv.weight[:, :, 0], self.qkv.bias)  # [b, T, 3c]
        # per head: [q | k | v] of `head` channels each -> [b, heads, T, 3 * head]
        qkv = qkv.reshape(b, length, self.num_heads, 3 * head).transpose(1, 2)
        q, k, v = qkv.split(head, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head)) v, [b, heads, T, head]
        a = a.transpose(1, 2).reshape(b, length, c)
        h = F.linear(a, self.proj_out.weight[:, :, 0], self.proj_out.bias)
        return x + h.reshape(b, height, width, c).permute(0, 3, 1, 2)


class TimestepSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


_TAP = re.compile(r"^(input_blocks|output_blocks)\.(\d+)$")


class AdmUNet(nn.Module):
    """guided-diffusion's UNetModel (2D, unconditional or class-conditional), inference only."""

    def __init__(self, config: AdmConfig):
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_dim = 4 * mc
        heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.num_classes is not None:
            self.label_emb = nn.Embedding(config.num_classes, emb_dim)

        def res(cin: int, cout: int, **kw) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, config.use_scale_shift_norm, **kw)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, config.num_head_channels)

        ch = int(config.channel_mult[0] * mc)
        input_ch = ch
        blocks = [TimestepSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))]
        skip_channels, ds = [ch], 1
        #: downsampling factor after each input block, used for tap strides and size multiples
        self._input_ds, self._output_ds = [1], []
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in config.attention_resolutions:
                    layers.append(attn(ch, config.num_heads))
                blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
                self._input_ds.append(ds)
            if level != len(config.channel_mult) - 1:
                if not config.resblock_updown:
                    raise NotImplementedError("only resblock_updown=True checkpoints are supported")
                blocks.append(TimestepSequential(res(ch, ch, down=True)))
                skip_channels.append(ch)
                ds *= 2
                self._input_ds.append(ds)
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = TimestepSequential(res(ch, ch), attn(ch, config.num_heads), res(ch, ch))
        self._middle_ds = ds
        blocks = []
        for level, mult in list(enumerate(config.channel_mult))[::-1]:
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in config.attention_resolutions:
                    layers.append(attn(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, up=True))
                    ds //= 2
                blocks.append(TimestepSequential(*layers))
                self._output_ds.append(ds)
        self.output_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, config.out_channels, 3, padding=1))
        self.max_downsampling = self._middle_ds

    # -- taps ---------------------------------------------------------------------------------------
    def _parse_tap(self, tap: str) -> tuple[str, int]:
        if tap in ("middle_block", "out"):
            return tap, 0
        match = _TAP.match(tap)
        if not match:
            raise ValueError(f"unknown ADM tap '{tap}': use input_blocks.N, middle_block, output_blocks.N or out")
        kind, index = match.group(1), int(match.group(2))
        count = len(self.input_blocks if kind == "input_blocks" else self.output_blocks)
        if index >= count:
            raise ValueError(f"ADM tap '{tap}': this network has {count} {kind} (0..{count - 1})")
        return kind, index

    def tap_stride(self, tap: str) -> int:
        """Input pixels per feature pixel at the tap."""
        kind, index = self._parse_tap(tap)
        if kind == "input_blocks":
            return self._input_ds[index]
        if kind == "output_blocks":
            return self._output_ds[index]
        return self._middle_ds if kind == "middle_block" else 1

    def tap_size_multiple(self, tap: str) -> int:
        """What the input size must be a multiple of for the network to run up to the tap.

        Encoder taps only need the downsamplings before them; the middle block and the decoder need the
        full factor (the decoder concatenates skips, whose sizes must match after upsampling).
        """
        kind, index = self._parse_tap(tap)
        return self._input_ds[index] if kind == "input_blocks" else self._middle_ds

    def tap_channels(self, tap: str) -> int:
        kind, index = self._parse_tap(tap)
        mc = self.config.model_channels
        if kind == "out":
            return self.config.out_channels
        if kind == "middle_block":
            return int(self.config.channel_mult[-1] * mc)
        block = (self.input_blocks if kind == "input_blocks" else self.output_blocks)[index]
        for layer in reversed(block):
            if isinstance(layer, nn.Conv2d):
                return layer.out_channels
            if isinstance(layer, ResBlock):
                return layer.out_layers[-1].out_channels
            if isinstance(layer, AttentionBlock):
                return layer.proj_out.out_channels
        raise AssertionError("unreachable")

    # -- forward ------------------------------------------------------------------------------------
    def embed(self, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        if self.config.num_classes is not None:
            if y is None:
                raise ValueError("this class-conditional ADM needs class labels y")
            emb = emb + self.label_emb(y)
        return emb

    def forward_to(self, x: torch.Tensor, timesteps: torch.Tensor | float | int, tap: str = "out",
                   y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Runs x [B, in_channels, H, W] at `timesteps` ([B] or a scalar) up to `tap`, returns its output."""
        kind, index = self._parse_tap(tap)
        if not torch.is_tensor(timesteps) or timesteps.dim() == 0:
            timesteps = torch.full((x.shape[0],), float(timesteps), device=x.device)
        emb = self.embed(timesteps.to(x.device), y)
        h = x
        skips = []
        last_input = index if kind == "input_blocks" else len(self.input_blocks) - 1
        for i in range(last_input + 1):
            h = self.input_blocks[i](h, emb)
            skips.append(h)
        if kind == "input_blocks":
            return h
        h = self.middle_block(h, emb)
        if kind == "middle_block":
            return h
        last_output = index if kind == "output_blocks" else len(self.output_blocks) - 1
        for i in range(last_output + 1):
            h = self.output_blocks[i](torch.cat([h, skips.pop()], dim=1), emb)
        if kind == "output_blocks":
            return h
        return self.out(h)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_to(x, timesteps, "out", y)


def build_adm(flags: dict | AdmConfig, device: torch.device | str | None = None) -> AdmUNet:
    """Builds the network from guided-diffusion flags (or a config); device "meta" allocates nothing."""
    config = flags if isinstance(flags, AdmConfig) else AdmConfig.from_flags(flags)
    with torch.device(device or "cpu"):
        return AdmUNet(config)


@torch.no_grad()
def random_init_(model: nn.Module, seed: int = 0, gain: float = 1.0) -> nn.Module:
    """Fills every weight with small random values (normal, std gain/sqrt(fan_in)), biases with zeros,
    norms with (1, 0). Materialises a model built on the meta device on the CPU first. For tests and
    benchmarks only: random weights cost the same as trained ones but give meaningless features."""
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(int(seed))
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)):
            weight = module.weight
            fan_in = weight[0].numel() if not isinstance(module, nn.Embedding) else 1
            if weight.device.type == "cpu":
                weight.normal_(0.0, gain / math.sqrt(fan_in), generator=generator)
            else:
                weight.copy_(torch.randn(weight.shape, generator=generator) * (gain / math.sqrt(fan_in)))
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
