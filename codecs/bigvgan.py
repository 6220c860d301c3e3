"""BigVGAN generator (the vocoder MMAudio's 16 kHz VAE decodes through): log-mel [B, 80, F] -> waveform [B, 1, 256 F].

Architecture (Lee et al., "BigVGAN", 2023; HiFi-GAN generator with anti-aliased periodic activations):
a 7-tap conv from the mels to ``upsample_initial_channel`` channels, then per stage a transposed conv that
upsamples time by ``rate`` and halves the channels, followed by the average of three AMP residual blocks (kernels
3, 7, 11, dilations 1, 3, 5); finally an anti-aliased activation, a 7-tap conv to one channel and tanh.
Every activation is SnakeBeta, ``x + sin²(αx) / β`` with log-scale α, β per channel, run at twice the sample rate
(up by 2 with a Kaiser-windowed sinc, activation, low-pass and down by 2) so its harmonics do not alias.

Parameter names are those of the published checkpoint (``conv_pre``, ``ups.{i}.0``, ``resblocks.{3i+j}.convs1``,
``.activations.{k}.act.alpha``, ``...upsample.filter``, ``activation_post``, ``conv_post``). The modules here hold
plain ``.weight`` tensors: the checkpoint's weight normalisation (gain ``g`` and direction ``v``, stored either as
``.parametrizations.weight.original0/1`` or as legacy ``.weight_g/.weight_v``) is folded to ``g * v / ||v||`` when
the state dict is read (``fold_weight_norm``), which is what inference uses anyway.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.checkpoint import key_mismatch_error
from ..files.safetensors_io import CheckpointError, check_weights, load_weights, read_header, shape_of


@dataclass(frozen=True)
class BigVGANConfig:
    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    @property
    def hop_samples(self) -> int:
        """Waveform samples per mel frame."""
        return math.prod(self.upsample_rates)

    def stage_channels(self, stage: int) -> int:
        """Channels after upsampling stage ``stage`` (0-based)."""
        return self.upsample_initial_channel // 2 ** (stage + 1)


# The vocoder MMAudio's 16 kHz VAE was trained with (MMAudio's ``best_netG.pt``): 80 mels, 256 samples per frame.
BIGVGAN_16K_CONFIG = BigVGANConfig()


# ------------------------------------------------------------------------------------ anti-aliased activation

def kaiser_sinc_lowpass(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Low-pass FIR filter [1, 1, kernel_size]: a sinc at ``cutoff`` (cycles per sample) under a Kaiser window whose
    beta gives the stop-band attenuation that a transition band of ``half_width`` allows (Kaiser's design formula);
    normalised to unit DC gain so a constant signal passes unchanged."""
    half = kernel_size // 2
    attenuation_db = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation_db > 50.0:
        beta = 0.1102 * (attenuation_db - 8.7)
    elif attenuation_db >= 21.0:
        beta = 0.5842 * (attenuation_db - 21.0) ** 0.4 + 0.07886 * (attenuation_db - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta)
    if kernel_size % 2 == 0:
        taps = torch.arange(-half, half) + 0.5           # an even filter is centred between two samples
    else:
        taps = torch.arange(kernel_size) - half
    lowpass = 2 * cutoff * window * torch.sinc(2 * cutoff * taps)
    return (lowpass / lowpass.sum()).view(1, 1, kernel_size)


class Upsample2x(nn.Module):
    """[B, C, T] -> [B, C, 2T]: zero-stuffing and a windowed-sinc low-pass (one transposed depthwise conv)."""

    ratio = 2

    def __init__(self, kernel_size: int = 12):
        super().__init__()
        self.kernel_size = kernel_size
        self.register_buffer("filter", kaiser_sinc_lowpass(0.5 / self.ratio, 0.6 / self.ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, k = self.ratio, self.kernel_size
        edge = k // r - 1                                    # input samples of replicate padding per side
        x = F.pad(x, (edge, edge), mode="replicate")
        y = r * F.conv_transpose1d(x, self.filter.expand(x.shape[1], -1, -1), stride=r, groups=x.shape[1])
        crop_left = edge * r + (k - r) // 2
        crop_right = edge * r + (k - r + 1) // 2
        return y[..., crop_left:y.shape[-1] - crop_right]


class LowPassFilter(nn.Module):
    """Depthwise windowed-sinc low-pass with replicate padding, optionally strided (decimation)."""

    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int = 12):
        super().__init__()
        self.stride = stride
        self.pad_left = kernel_size // 2 - (1 if kernel_size % 2 == 0 else 0)
        self.pad_right = kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_lowpass(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(x.shape[1], -1, -1), stride=self.stride, groups=x.shape[1])


class Downsample2x(nn.Module):
    """[B, C, 2T] -> [B, C, T]: low-pass below the new Nyquist, keep every other sample."""

    ratio = 2

    def __init__(self, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter(0.5 / self.ratio, 0.6 / self.ratio, stride=self.ratio, kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """``x + sin²(αx) / β`` per channel, with α = exp(alpha), β = exp(beta) (log-scale parameters, [C] each)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:                       # x [B, C, T]
        alpha = self.alpha.exp()[None, :, None]
        beta = self.beta.exp()[None, :, None]
        return x + torch.sin(x * alpha).square() / (beta + 1e-9)


class AntiAliasedSnakeBeta(nn.Module):
    """SnakeBeta evaluated at twice the sample rate: [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int):
        super().__init__()
        self.upsample = Upsample2x()
        self.act = SnakeBeta(channels)
        self.downsample = Downsample2x()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


# ------------------------------------------------------------------------------------------------- generator

class AMPBlock(nn.Module):
    """Anti-aliased multi-periodicity residual block: per dilation, ``x += conv(act(conv_dilated(act(x))))``."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations)
        # Two activations per dilation, interleaved: 2i before convs1[i], 2i + 1 before convs2[i].
        self.activations = nn.ModuleList(AntiAliasedSnakeBeta(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (dilated, plain) in enumerate(zip(self.convs1, self.convs2)):
            h = dilated(self.activations[2 * i](x))
            x = x + plain(self.activations[2 * i + 1](h))
        return x


class BigVGANGenerator(nn.Module):
    """Log-mel [B, num_mels, F] (log10 magnitudes, MMAudio's features) -> waveform [B, 1, hop_samples * F] in -1..1."""

    def __init__(self, config: BigVGANConfig = BIGVGAN_16K_CONFIG):
        super().__init__()
        if len(config.upsample_rates) != len(config.upsample_kernel_sizes):
            raise ValueError(f"BigVGANConfig: {len(config.upsample_rates)} upsample rates but "
                             f"{len(config.upsample_kernel_sizes)} kernel sizes")
        if config.stage_channels(len(config.upsample_rates) - 1) < 1:
            raise ValueError(f"BigVGANConfig: upsample_initial_channel={config.upsample_initial_channel} halves to "
                             f"nothing over {len(config.upsample_rates)} stages")
        self.config = config
        c0 = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, c0, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for stage, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
            channels_in = c0 // 2 ** stage
            channels = config.stage_channels(stage)
            # Output length is exactly rate * input length: (T - 1) rate - 2 (k - rate) / 2 + k.
            self.ups.append(nn.ModuleList([nn.ConvTranspose1d(channels_in, channels, kernel, rate,
                                                              padding=(kernel - rate) // 2)]))
            for kernel_size, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilations):
                self.resblocks.append(AMPBlock(channels, kernel_size, tuple(dilations)))
        last = config.stage_channels(len(config.upsample_rates) - 1)
        self.activation_post = AntiAliasedSnakeBeta(last)
        self.conv_post = nn.Conv1d(last, 1, 7, padding=3)

    @property
    def hop_samples(self) -> int:
        return self.config.hop_samples

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        blocks_per_stage = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(mel)
        for stage, (upsample,) in enumerate(self.ups):
            x = upsample(x)
            blocks = self.resblocks[stage * blocks_per_stage:(stage + 1) * blocks_per_stage]
            x = sum(block(x) for block in blocks) / blocks_per_stage
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x)


# ------------------------------------------------------------------------------------------- weight norm

WEIGHT_NORM_STYLES = ("parametrizations", "legacy")
_GAIN_SUFFIXES = {"parametrizations": ".parametrizations.weight.original0", "legacy": ".weight_g"}
_DIRECTION_SUFFIXES = {"parametrizations": ".parametrizations.weight.original1", "legacy": ".weight_v"}


def _norm_over_all_but_first(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)


def fold_weight_norm(state_dict: dict[str, torch.Tensor], where: str = "state dict") -> dict[str, torch.Tensor]:
    """Replace each weight-normalised pair (gain g [O, 1, 1], direction v [O, I, K]) by ``weight = g * v / ||v||``
    (norm over all dims but the first, as ``torch.nn.utils.weight_norm`` with dim 0), in either naming style;
    the fold is computed in float32 and stored in v's dtype. Other entries pass through unchanged."""
    folded: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        for style in WEIGHT_NORM_STYLES:
            for part, suffix in (("g", _GAIN_SUFFIXES[style]), ("v", _DIRECTION_SUFFIXES[style])):
                if key.endswith(suffix):
                    pending.setdefault(key[:-len(suffix)], {})[part] = tensor
                    break
            else:
                continue
            break
        else:
            folded[key] = tensor
    for module, parts in pending.items():
        if set(parts) != {"g", "v"}:
            raise CheckpointError(f"{where}: weight norm of {module} has only its "
                                  f"{'gain' if 'g' in parts else 'direction'} tensor")
        if module + ".weight" in folded:
            raise CheckpointError(f"{where}: {module} has both a plain .weight and weight-norm tensors")
        g, v = parts["g"], parts["v"]
        v32 = v.float()
        folded[module + ".weight"] = (g.float() * v32 / _norm_over_all_but_first(v32)).to(v.dtype)
    return folded


def unfold_weight_norm(state_dict: dict[str, torch.Tensor], style: str = "parametrizations"
                       ) -> dict[str, torch.Tensor]:
    """The inverse layout of ``fold_weight_norm``: every conv ``.weight`` of a BigVGAN state dict becomes a gain
    ``||w||`` [O, 1, ..] and a direction ``w``, named in ``style`` ("parametrizations": ``.parametrizations.weight
    .original0/1``, as torch's ``parametrizations.weight_norm`` saves; "legacy": ``.weight_g/.weight_v``)."""
    if style not in WEIGHT_NORM_STYLES:
        raise ValueError(f"unfold_weight_norm style: expected one of {WEIGHT_NORM_STYLES}, got {style!r}")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(".weight"):
            module = key[:-len(".weight")]
            out[module + _GAIN_SUFFIXES[style]] = _norm_over_all_but_first(tensor.float()).to(tensor.dtype)
            out[module + _DIRECTION_SUFFIXES[style]] = tensor
        else:
            out[key] = tensor
    return out


# --------------------------------------------------------------------------------------------------- loading

_GENERATOR_PREFIX = "generator."


def strip_generator_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints nest the generator under ``generator`` (a flattened copy then has ``generator.`` keys)."""
    if state and all(k.startswith(_GENERATOR_PREFIX) for k in state):
        return {k[len(_GENERATOR_PREFIX):]: v for k, v in state.items()}
    return state


def _describe_other_file(shapes: dict[str, list[int]]) -> str | None:
    """A recognisable non-vocoder file, or None."""
    if "encoder.conv_in.weight" in shapes and "decoder.conv_out.weight" in shapes and "data_mean" in shapes:
        return "an MMAudio mel VAE, not a vocoder (were the VAE and vocoder files swapped?)"
    if any(k.startswith("encoder.") for k in shapes) and any(k.startswith("decoder.") for k in shapes):
        return "an autoencoder (it has encoder.* and decoder.* weights), not a BigVGAN vocoder"
    if any(k.startswith(("video_model.", "audio_model.")) for k in shapes):
        return "a joint audio-video model, not a vocoder"
    return None


def infer_bigvgan_config(shapes: dict[str, list[int]], path: str = "vocoder") -> BigVGANConfig:
    """Read the channel width off the shapes of a folded BigVGAN state dict and check the file is the 80-band,
    256x vocoder MMAudio's 16 kHz VAE needs (the upsampling rates are not stored; the kernel sizes identify them)."""
    other = _describe_other_file(shapes)
    if other:
        raise CheckpointError(f"{path}: this is {other}")
    if "conv_pre.weight" not in shapes or "conv_post.weight" not in shapes:
        sample = ", ".join(sorted(shapes)[:5])
        raise CheckpointError(f"{path}: not a BigVGAN vocoder (no conv_pre / conv_post weights); its first keys are: "
                              f"{sample}")
    channels, num_mels, _ = shape_of(shapes, "conv_pre.weight", 3, path)
    expected = BIGVGAN_16K_CONFIG
    stages = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"ups\.(\d+)\.0\.weight$", k))})
    kernels = tuple(shape_of(shapes, f"ups.{i}.0.weight", 3, path)[2] for i in stages)
    if num_mels != expected.num_mels or kernels != expected.upsample_kernel_sizes:
        hint = (" (e.g. bigvgan_v2_44khz_128band_512x, which MMAudio pairs with its 44.1 kHz VAE)"
                if num_mels == 128 else "")
        raise CheckpointError(
            f"{path}: a BigVGAN vocoder of another kind: {num_mels} mel bands and upsampling kernels "
            f"{list(kernels)}{hint}; Ovi needs the 16 kHz vocoder MMAudio trained with its 16 kHz VAE "
            f"(best_netG.pt: {expected.num_mels} mel bands, kernels {list(expected.upsample_kernel_sizes)}, "
            f"{expected.hop_samples} samples per frame)")
    if "conv_post.bias" not in shapes:
        raise CheckpointError(f"{path}: a BigVGAN vocoder without conv_post.bias (a BigVGAN-v2 layout); Ovi needs "
                              "MMAudio's 16 kHz vocoder (best_netG.pt)")
    if channels < 1:
        raise CheckpointError(f"{path}: conv_pre.weight has 0 output channels; expected the vocoder's width")
    return BigVGANConfig(num_mels=num_mels, upsample_initial_channel=channels)


def bigvgan_state_dict_for_loading(tensors: dict[str, torch.Tensor], path: str = "vocoder"
                                   ) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors in any of the published layouts -> the folded state dict ``BigVGANGenerator`` takes.
    A direction tensor of norm 0 folds to NaN: such weights are refused (real tensors only; meta ones pass)."""
    folded = fold_weight_norm(strip_generator_prefix(tensors), where=path)
    real = {k: v for k, v in folded.items() if v.device.type != "meta"}
    check_weights(real, path)
    return folded


def load_bigvgan(path: str | os.PathLike, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> BigVGANGenerator:
    """Load a BigVGAN vocoder from a safetensors file (flat or ``generator.``-prefixed keys; weight norm folded or
    in either naming style). dtype: weights in memory (default float32); the fold is computed in float32."""
    path = os.fspath(path)
    header, _ = read_header(path)
    # Check the layout on shapes alone (meta tensors) before reading a gigabyte of weights.
    placeholders = {k: torch.empty(v["shape"], device="meta") for k, v in header.items()}
    shapes = {k: list(v.shape) for k, v in bigvgan_state_dict_for_loading(placeholders, path).items()}
    config = infer_bigvgan_config(shapes, path)
    with torch.device("meta"):
        model = BigVGANGenerator(config)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    if expected != shapes:
        raise key_mismatch_error(path, expected, shapes)
    raw = load_weights(path, cast=lambda key, tensor: tensor.float())       # refuses NaN/inf weights
    state = bigvgan_state_dict_for_loading(raw, path)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval().requires_grad_(False)
