"""MMAudio's mel VAE (Cheng et al., "MMAudio", 2025): log-mel [B, 80, F] <-> latent [B, 20, F / 2] at 16 kHz.

A 1-D convolutional autoencoder over mel frames built from EDM2's magnitude-preserving layers (Karras et al.,
"Analyzing and Improving the Training Dynamics of Diffusion Models", 2024): convolutions without bias whose
weights are normalised per output channel, SiLU divided by 0.596 (unit output variance for unit-variance input),
residual sums ``lerp(x, h, 0.3) / sqrt(0.7² + 0.3²)``, channel-wise "pixel" normalisation at the input of each
residual block, and activations clamped to ±256. The 16 kHz model: width 384 with multipliers (1, 2, 4), two
residual blocks per level (three in the decoder), one 2x temporal down/upsampling after the first level, one
single-head attention block in the middle, 20 latent channels. The mel input is standardised per band with the
``data_mean`` / ``data_std`` buffers [1, 80, 1] stored in the checkpoint, and the decoder output de-standardised.

Weights: the checkpoint stores the raw (un-normalised) conv weights. EDM2's forced weight normalisation is applied
once after loading (``normalize_weights_``): ``w / (1e-4 + ||w[o]|| / sqrt(fan_in)) / sqrt(fan_in)``, in float32.
It is not idempotent, so the model remembers whether it was applied, and refuses to run before it.
Parameter and buffer names are those of the published checkpoint (``encoder.down.0.block.0.conv1.weight``, ...).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.checkpoint import key_mismatch_error
from ..files.safetensors_io import CheckpointError, load_weights, read_header, shape_of

MP_SILU_GAIN = 0.596          # std of silu(x) for x ~ N(0, 1): dividing by it keeps unit variance
RESIDUAL_BLEND = 0.3          # weight of the residual branch in the magnitude-preserving sum
ACTIVATION_CLAMP = 256.0
NORM_EPS = 1e-4


@dataclass(frozen=True)
class MMAudioVAEConfig:
    data_dim: int = 80            # mel bands
    embed_dim: int = 20           # latent channels
    hidden_dim: int = 384
    channel_multipliers: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2       # per encoder level; the decoder has one more
    downsample_levels: tuple[int, ...] = (0,)
    kernel_size: int = 3

    @property
    def temporal_stride(self) -> int:
        """Mel frames per latent."""
        return 2 ** len(self.downsample_levels)


MMAUDIO_VAE_16K_CONFIG = MMAudioVAEConfig()
# MMAudio's 44.1 kHz VAE, only to recognise its files: 128 mels, 40 latent channels, width 512.
MMAUDIO_VAE_44K_DATA_DIM = 128


def channel_normalize(x: torch.Tensor, dim: int | tuple[int, ...], eps: float = NORM_EPS) -> torch.Tensor:
    """``x / (eps + rms(x over dim))``: unit root-mean-square along ``dim`` (the norm computed in float32)."""
    dims = (dim,) if isinstance(dim, int) else dim
    count = math.prod(x.shape[d] for d in dims)
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    return x / (eps + norm / math.sqrt(count)).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / MP_SILU_GAIN


def mp_residual_sum(x: torch.Tensor, h: torch.Tensor, t: float = RESIDUAL_BLEND) -> torch.Tensor:
    return x.lerp(h, t) / math.sqrt((1 - t) ** 2 + t ** 2)


class MPConv1d(nn.Module):
    """Bias-free 1-D conv with 'same' padding whose ``weight`` [out, in, k] is normalised once after loading."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size))

    def forward(self, x: torch.Tensor, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
        return F.conv1d(x, self.weight * gain, padding=self.weight.shape[-1] // 2)

    @torch.no_grad()
    def normalize_weight_(self) -> None:
        """Forced weight normalisation: unit-rms rows, then 1 / sqrt(fan_in) so outputs keep unit variance."""
        w = self.weight.float()
        fan_in = w[0].numel()
        w = channel_normalize(w, dim=tuple(range(1, w.ndim))) / math.sqrt(fan_in)
        self.weight.copy_(w.to(self.weight.dtype))


class ResnetBlock1d(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1d(out_dim, out_dim, kernel_size)
        # A 1x1 projection of the skip path where the width changes (name as in the checkpoint).
        self.nin_shortcut = MPConv1d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # [B, C_in, T] -> [B, C_out, T]
        x = channel_normalize(x, dim=1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_residual_sum(x, h)


class AttnBlock1d(nn.Module):
    """Single-head self-attention over time with cosine-normalised q, k, v (unit rms over channels)."""

    def __init__(self, channels: int):
        super().__init__()
        self.qkv = MPConv1d(channels, 3 * channels, 1)
        self.proj_out = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # [B, C, T]
        b, c, t = x.shape
        # The checkpoint's qkv rows interleave per channel: row 3c + j is channel c of q (j=0), k (1) or v (2).
        qkv = channel_normalize(self.qkv(x).reshape(b, c, 3, t), dim=1)
        q, k, v = (part.transpose(1, 2)[:, None] for part in qkv.unbind(2))   # [B, 1, T, C] each
        h = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2)      # [B, C, T]
        return mp_residual_sum(x, self.proj_out(h))


class Downsample1d(nn.Module):
    """1x1 conv, average pairs of frames (an odd last frame is dropped), 1x1 conv: [B, C, T] -> [B, C, T // 2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = MPConv1d(channels, channels, 1)
        self.conv2 = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample1d(nn.Module):
    """Repeat each frame twice, then a 3-tap conv: [B, C, T] -> [B, C, 2T]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = MPConv1d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=-1))


class _Middle(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.block_1 = ResnetBlock1d(channels, channels, kernel_size)
        self.attn_1 = AttnBlock1d(channels)
        self.block_2 = ResnetBlock1d(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x))).clamp(-ACTIVATION_CLAMP, ACTIVATION_CLAMP)


class _Level(nn.Module):
    """One resolution: residual blocks (``block``), then optionally a resampler (``downsample`` / ``upsample``)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class MMAudioEncoder(nn.Module):
    """Standardised mel [B, data_dim, F] -> moments [B, 2 embed_dim, F / stride] (mean, then log-variance)."""

    def __init__(self, config: MMAudioVAEConfig):
        super().__init__()
        dim, k = config.hidden_dim, config.kernel_size
        self.downsample_levels = tuple(config.downsample_levels)
        self.conv_in = MPConv1d(config.data_dim, dim, k)
        self.down = nn.ModuleList()
        width = dim
        for level, multiplier in enumerate(config.channel_multipliers):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock1d(width, dim * multiplier, k))
                width = dim * multiplier
            stage = _Level(blocks)
            if level in self.downsample_levels:
                stage.downsample = Downsample1d(width)
            self.down.append(stage)
        self.mid = _Middle(width, k)
        self.conv_out = MPConv1d(width, 2 * config.embed_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))    # the output conv is scaled by (1 + gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for block in stage.block:
                h = block(h).clamp(-ACTIVATION_CLAMP, ACTIVATION_CLAMP)
            if level in self.downsample_levels:
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class MMAudioDecoder(nn.Module):
    """Latent [B, embed_dim, L] -> standardised mel [B, data_dim, L * stride]."""

    def __init__(self, config: MMAudioVAEConfig):
        super().__init__()
        dim, k = config.hidden_dim, config.kernel_size
        multipliers = config.channel_multipliers
        # Level i upsamples where encoder level i - 1 downsampled (the decoder runs the levels in reverse).
        self.upsample_levels = tuple(level + 1 for level in config.downsample_levels)
        width = dim * multipliers[-1]
        self.conv_in = MPConv1d(config.embed_dim, width, k)
        self.mid = _Middle(width, k)
        levels: list[_Level] = []
        for level in reversed(range(len(multipliers))):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock1d(width, dim * multipliers[level], k))
                width = dim * multipliers[level]
            stage = _Level(blocks)
            if level in self.upsample_levels:
                stage.upsample = Upsample1d(width)
            levels.insert(0, stage)                  # ``up.{i}`` is level i, as in the checkpoint
        self.up = nn.ModuleList(levels)
        self.conv_out = MPConv1d(width, config.data_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for block in stage.block:
                h = block(h).clamp(-ACTIVATION_CLAMP, ACTIVATION_CLAMP)
            if level in self.upsample_levels:
                h = stage.upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class MMAudioVAE(nn.Module):
    """Mel VAE: ``encode`` log-mel [B, 80, F] -> (mean, logvar) [B, 20, F // 2]; ``decode`` latent -> log-mel.

    Call ``normalize_weights_()`` once after loading the checkpoint's raw weights (``load_mmaudio_vae`` does).
    """

    def __init__(self, config: MMAudioVAEConfig = MMAUDIO_VAE_16K_CONFIG):
        super().__init__()
        self.config = config
        # Per-band statistics of the training mels; the real values come from the checkpoint.
        self.register_buffer("data_mean", torch.zeros(1, config.data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, config.data_dim, 1))
        self.encoder = MMAudioEncoder(config)
        self.decoder = MMAudioDecoder(config)
        self.weights_normalized = False

    @torch.no_grad()
    def normalize_weights_(self) -> "MMAudioVAE":
        if self.weights_normalized:
            raise RuntimeError("MMAudioVAE.normalize_weights_: already applied (it is not idempotent)")
        for module in self.modules():
            if isinstance(module, MPConv1d):
                module.normalize_weight_()
        self.weights_normalized = True
        return self

    def _require_normalized(self, what: str) -> None:
        if not self.weights_normalized:
            raise RuntimeError(f"MMAudioVAE.{what}: the conv weights are still the checkpoint's raw weights; call "
                               "normalize_weights_() after load_state_dict (load_mmaudio_vae does)")

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel [B, data_dim, F] -> (mean, logvar), each [B, embed_dim, F // stride]."""
        self._require_normalized("encode")
        moments = self.encoder((mel - self.data_mean) / self.data_std)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, embed_dim, L] -> log-mel [B, data_dim, L * stride]."""
        self._require_normalized("decode")
        return self.decoder(latent) * self.data_std + self.data_mean


# --------------------------------------------------------------------------------------------------- loading

def infer_mmaudio_vae_config(shapes: dict[str, list[int]], path: str = "audio VAE") -> MMAudioVAEConfig:
    """Read the widths off the shapes of an MMAudio VAE state dict and check it is the 16 kHz one."""
    if "conv_pre.weight" in shapes or any(".weight_g" in k or ".parametrizations." in k for k in shapes):
        raise CheckpointError(f"{path}: this is a BigVGAN vocoder, not the MMAudio VAE (were the VAE and vocoder "
                              "files swapped?)")
    required = ("encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight", "data_mean")
    absent = [k for k in required if k not in shapes]
    if absent:
        sample = ", ".join(sorted(shapes)[:5])
        raise CheckpointError(f"{path}: not an MMAudio VAE (missing {', '.join(absent)}); its first keys are: "
                              f"{sample}")
    hidden_dim, data_dim, _ = shape_of(shapes, "encoder.conv_in.weight", 3, path)
    embed_dim = shape_of(shapes, "decoder.conv_in.weight", 3, path)[1]
    expected = MMAUDIO_VAE_16K_CONFIG
    if data_dim == MMAUDIO_VAE_44K_DATA_DIM:
        raise CheckpointError(f"{path}: this is the 44.1 kHz MMAudio VAE; Ovi needs the 16 kHz one (v1-16.pth: "
                              f"{expected.data_dim} mel bands and {expected.embed_dim} latent channels; this file has "
                              f"{data_dim} and {embed_dim})")
    if (data_dim, embed_dim) != (expected.data_dim, expected.embed_dim):
        raise CheckpointError(f"{path}: an MMAudio-style VAE with {data_dim} mel bands and {embed_dim} latent "
                              f"channels; Ovi needs the 16 kHz one ({expected.data_dim} bands, "
                              f"{expected.embed_dim} channels)")
    if hidden_dim < 1:
        raise CheckpointError(f"{path}: encoder.conv_in.weight has 0 output channels; expected the VAE's width")
    return MMAudioVAEConfig(data_dim=data_dim, embed_dim=embed_dim, hidden_dim=hidden_dim)


def load_mmaudio_vae(path: str | os.PathLike, device: str | torch.device | None = None,
                     dtype: torch.dtype | None = None) -> MMAudioVAE:
    """Load MMAudio's VAE from a safetensors file holding the checkpoint's raw weights (flat keys, as published),
    normalise the weights in float32, then move to ``device`` / cast to ``dtype`` (default float32)."""
    path = os.fspath(path)
    header, _ = read_header(path)
    shapes = {k: list(v["shape"]) for k, v in header.items()}
    config = infer_mmaudio_vae_config(shapes, path)
    with torch.device("meta"):
        model = MMAudioVAE(config)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    if expected != shapes:
        raise key_mismatch_error(path, expected, shapes)
    state = load_weights(path, cast=lambda key, tensor: tensor.float())     # refuses NaN/inf weights
    model.load_state_dict(state, strict=True, assign=True)
    model.normalize_weights_()
    return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval().requires_grad_(False)
