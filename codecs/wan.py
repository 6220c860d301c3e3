"""The real video codec: the Wan2.2 VAE (48 latent channels, 16x spatial and 4x temporal compression), the one Ovi
was trained with, run through diffusers' ``AutoencoderKLWan``.

Layout of the latent: frames ``[B, F, H, W, 3]`` with ``F = 1 + 4 (Fv - 1)`` (the first frame is encoded alone,
causally, then every 4 frames make one latent frame) and ``H, W`` multiples of 16 become ``[B, 48, Fv, H/16, W/16]``.
The 16x spatial stride is a 2x2 pixel unshuffle (``patch_size=2``: 3 colours -> 12 channels) followed by three
2x downsamplings in the encoder.

Latents are normalised per channel, ``(z - mean) / std``, with the constants the Wan2.2 authors published: the joint
model was trained on normalised latents. ``encode`` returns normalised latents and ``decode`` takes them; diffusers'
model itself works on raw ones.

Weights: the file users have is the original Wan2.2 layout (``Wan2.2_VAE.pth`` as released, or ComfyUI's
repackaged ``wan2.2_vae.safetensors`` in ``models/vae``): a flat state dict, no prefix. Its names are turned into
diffusers' by rules (``wan22_vae_key_to_diffusers``); a file already in diffusers' layout loads as it is. Either way
every key and shape must match (strict load), and the header is checked before any tensor is read, so a wrong file
fails in milliseconds with a message that says what it is. The widths are the Wan2.2 VAE's unless the file's metadata
says otherwise (``VAE_CONFIG_METADATA_KEY``: small models made for tests; the published files carry no such entry).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

from .interface import VideoCodec
from ..files.safetensors_io import CheckpointError, describe_key_mismatch, load_weights, read_header, shape_of
from .tiled_decode import decode_tiled

WAN22_LATENT_CHANNELS = 48
WAN22_FPS = 24.0     # Wan2.2 TI2V-5B and Ovi generate at 24 frames per second (121 frames = 5 s)

# diffusers' AutoencoderKLWan arguments that build the Wan2.2 VAE (704,688,668 parameters, same tensors as the
# original file). ``temperal_downsample`` is diffusers' spelling.
WAN22_VAE_CONFIG: dict = dict(
    base_dim=160, decoder_base_dim=256, z_dim=WAN22_LATENT_CHANNELS, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
    attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, is_residual=True,
    in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
)

# Per-channel mean and standard deviation of the Wan2.2 VAE's raw latents (the posterior mean). Numbers from the
# Wan2.2 release, as hard-coded in ``Wan2_2_VAE.__init__`` of wan/modules/vae2_2.py and copied unchanged into Ovi's
# ovi/modules/vae2_2.py (github.com/character-ai/Ovi @ 5b69b25a); diffusers' Wan2.2-TI2V-5B-Diffusers VAE config
# carries the same lists as ``latents_mean`` / ``latents_std``. Ovi encodes with ``(z - mean) * (1 / std)`` and
# decodes with ``z * std + mean`` before the decoder.
WAN22_LATENTS_MEAN: tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD: tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

# Safetensors metadata key under which a file may carry other widths than the Wan2.2 VAE's (a JSON object with
# some of WAN22_VAE_WIDTH_KEYS): smaller models made for tests. The published files carry none.
VAE_CONFIG_METADATA_KEY = "syncav_vae_config"
WAN22_VAE_WIDTH_KEYS = ("base_dim", "decoder_base_dim")

_EXPECTED_FILE = ("the Wan2.2 VAE (48 latent channels), e.g. ComfyUI's wan2.2_vae.safetensors or Wan2.2_VAE.pth "
                  "converted to safetensors")


# ------------------------------------------------------------------------------------------- key conversion
#
# The original model nests modules as Sequentials and lists, diffusers names them. Inside a residual block the
# original ``residual`` Sequential is (RMS norm, SiLU, conv, RMS norm, SiLU, dropout, conv), so the tensors sit at
# indices 0, 2, 3 and 6. A down/up stage of the original is a list of residual blocks followed by one resampler
# (holding ``resample.1`` and, for temporal stages, ``time_conv``); diffusers keeps the resampler apart from the
# numbered ``resnets``.

_RESIDUAL_TO_DIFFUSERS = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
                          "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
_RESIDUAL_TO_ORIGINAL = {v: k for k, v in _RESIDUAL_TO_DIFFUSERS.items()}
_MIDDLE_TO_DIFFUSERS = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}
_MIDDLE_TO_ORIGINAL = {v: k for k, v in _MIDDLE_TO_DIFFUSERS.items()}
_TOP_TO_DIFFUSERS = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
_PART_TO_DIFFUSERS = {"conv1.": "conv_in.", "head.0.": "norm_out.", "head.2.": "conv_out."}
_PART_TO_ORIGINAL = {v: k for k, v in _PART_TO_DIFFUSERS.items()}


def _replace_prefix(name: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if name.startswith(old):
            return new + name[len(old):]
    return None


def _residual_to_diffusers(rest: str) -> str:
    return _replace_prefix(rest, _RESIDUAL_TO_DIFFUSERS) or rest


def wan22_vae_key_to_diffusers(key: str) -> str:
    """One key of the original Wan2.2 VAE state dict -> its name in diffusers' ``AutoencoderKLWan``.

    Keys that no rule matches are returned unchanged (the strict shape check reports them).
    """
    top = _replace_prefix(key, _TOP_TO_DIFFUSERS)
    if top is not None:
        return top
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder") or not rest:
        return key
    simple = _replace_prefix(rest, _PART_TO_DIFFUSERS)
    if simple is not None:
        return f"{part}.{simple}"
    if m := re.fullmatch(r"middle\.(\d+)\.(.+)", rest):
        block = _MIDDLE_TO_DIFFUSERS.get(m.group(1))
        if block is None:
            return key
        inner = _residual_to_diffusers(m.group(2)) if block.startswith("resnets") else m.group(2)
        return f"{part}.mid_block.{block}.{inner}"
    stage = "downsamples" if part == "encoder" else "upsamples"
    if m := re.fullmatch(rf"{stage}\.(\d+)\.{stage}\.(\d+)\.(.+)", rest):
        i, j, inner = m.groups()
        blocks = "down_blocks" if part == "encoder" else "up_blocks"
        if inner.startswith(("resample.", "time_conv.")):
            sampler = "downsampler" if part == "encoder" else "upsampler"
            return f"{part}.{blocks}.{i}.{sampler}.{inner}"
        return f"{part}.{blocks}.{i}.resnets.{j}.{_residual_to_diffusers(inner)}"
    return key


def wan22_vae_key_to_original(key: str, num_res_blocks: int = 2) -> str:
    """The inverse of ``wan22_vae_key_to_diffusers``: a diffusers ``AutoencoderKLWan`` key -> the original name.

    The resampler's index in an original stage is the number of residual blocks before it: ``num_res_blocks`` in the
    encoder, ``num_res_blocks + 1`` in the decoder.
    """
    for original, diffusers in _TOP_TO_DIFFUSERS.items():
        if key.startswith(diffusers):
            return original + key[len(diffusers):]
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder") or not rest:
        return key
    simple = _replace_prefix(rest, _PART_TO_ORIGINAL)
    if simple is not None:
        return f"{part}.{simple}"
    if m := re.fullmatch(r"mid_block\.(resnets\.\d+|attentions\.\d+)\.(.+)", rest):
        index = _MIDDLE_TO_ORIGINAL.get(m.group(1))
        if index is None:
            return key
        inner = m.group(2)
        if m.group(1).startswith("resnets"):
            inner = _replace_prefix(inner, _RESIDUAL_TO_ORIGINAL) or inner
        return f"{part}.middle.{index}.{inner}"
    stage = "downsamples" if part == "encoder" else "upsamples"
    blocks = "down_blocks" if part == "encoder" else "up_blocks"
    sampler = "downsampler" if part == "encoder" else "upsampler"
    if m := re.fullmatch(rf"{blocks}\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        i, j, inner = m.groups()
        return f"{part}.{stage}.{i}.{stage}.{j}.{_replace_prefix(inner, _RESIDUAL_TO_ORIGINAL) or inner}"
    if m := re.fullmatch(rf"{blocks}\.(\d+)\.{sampler}\.(.+)", rest):
        i, inner = m.groups()
        j = num_res_blocks if part == "encoder" else num_res_blocks + 1
        return f"{part}.{stage}.{i}.{stage}.{j}.{inner}"
    return key


def wan22_vae_state_dict_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {wan22_vae_key_to_diffusers(k): v for k, v in state.items()}


def wan22_vae_state_dict_to_original(state: Mapping[str, torch.Tensor], num_res_blocks: int = 2
                                     ) -> dict[str, torch.Tensor]:
    return {wan22_vae_key_to_original(k, num_res_blocks): v for k, v in state.items()}


# ------------------------------------------------------------------------------------------- file recognition

def _vae_layout(shapes: Mapping[str, Sequence[int]]) -> tuple[str, int | None]:
    """('original' | 'diffusers' | 'unknown', latent channels or None) read off a file's keys and shapes."""
    if "conv2.weight" in shapes and any(k.startswith("decoder.middle.") for k in shapes):
        return "original", int((list(shapes["conv2.weight"]) or [0])[0])
    if "post_quant_conv.weight" in shapes and "decoder.conv_in.weight" in shapes:
        return "diffusers", int((list(shapes["post_quant_conv.weight"]) or [0])[0])
    return "unknown", None


def _is_wan21_layout(shapes: Mapping[str, Sequence[int]], layout: str, latent_channels: int | None) -> bool:
    # Wan 2.1 has 16 latent channels. In the original layout its decoder stages are also one flat list
    # (decoder.upsamples.<n>.residual...) where Wan 2.2 nests them (decoder.upsamples.<i>.upsamples.<j>...).
    if latent_channels == 16:
        return True
    if layout == "original":
        return (any(re.match(r"decoder\.upsamples\.\d+\.residual\.", k) for k in shapes)
                and not any(re.match(r"decoder\.upsamples\.\d+\.upsamples\.", k) for k in shapes))
    return False


def _widths_from_metadata(metadata: Mapping[str, str], path: str) -> dict:
    """The widths a file's metadata sets (``VAE_CONFIG_METADATA_KEY``), {} when it sets none. Only widths may
    differ: latent channels and strides are what make a VAE the Wan2.2 one."""
    text = metadata.get(VAE_CONFIG_METADATA_KEY)
    if text is None:
        return {}
    try:
        widths = json.loads(text)
    except json.JSONDecodeError:
        widths = None
    if not isinstance(widths, dict) or not set(widths) <= set(WAN22_VAE_WIDTH_KEYS) \
            or not all(isinstance(v, int) and v > 0 for v in widths.values()):
        raise CheckpointError(f"{path}: metadata {VAE_CONFIG_METADATA_KEY!r} must be a JSON object of positive "
                              f"integers for some of {', '.join(WAN22_VAE_WIDTH_KEYS)}, found {text[:200]!r}")
    return widths


def _mismatch_message(path: str, expected: Mapping[str, list[int]], found: Mapping[str, list[int]]) -> str:
    return f"{path}: expected {_EXPECTED_FILE}; {describe_key_mismatch(expected, found)}"


def wan22_vae_widths(shapes: Mapping[str, Sequence[int]], path: str) -> dict:
    """The widths (``WAN22_VAE_WIDTH_KEYS``) a Wan2.2-layout VAE state dict has, read off its first convolutions
    (encoder: ``base_dim`` out channels; decoder: ``decoder_base_dim`` times the last ``dim_mult``)."""
    layout, _ = _vae_layout(shapes)
    encoder_in, decoder_in = (("encoder.conv1.weight", "decoder.conv1.weight") if layout == "original" else
                              ("encoder.conv_in.weight", "decoder.conv_in.weight"))
    base_dim = shape_of(shapes, encoder_in, 5, path)[0]
    decoder_dim, mult = shape_of(shapes, decoder_in, 5, path)[0], WAN22_VAE_CONFIG["dim_mult"][-1]
    if base_dim < 1 or decoder_dim < mult or decoder_dim % mult:
        raise CheckpointError(f"{path}: {encoder_in} / {decoder_in} have {base_dim} / {decoder_dim} channels; "
                              f"expected {_EXPECTED_FILE}")
    return {"base_dim": base_dim, "decoder_base_dim": decoder_dim // mult}


def check_wan22_vae(shapes: Mapping[str, Sequence[int]], path: str, vae_config: Mapping | None = None
                    ) -> tuple[AutoencoderKLWan, Callable[[str], str]]:
    """Check a state dict's ``{key: shape}`` is exactly the Wan2.2 VAE built from ``vae_config`` (None: the
    Wan2.2 VAE at the widths the file shows), every key and shape; Wan 2.1 and unrelated files are named
    -> (that VAE on the meta device, the key renamer to its names)."""
    expected_channels = int((vae_config or WAN22_VAE_CONFIG)["z_dim"])
    layout, channels = _vae_layout(shapes)
    if _is_wan21_layout(shapes, layout, channels):
        raise CheckpointError(f"{path}: this is a Wan 2.1 VAE ({channels or 16} latent channels); Ovi needs the "
                              f"Wan 2.2 VAE ({expected_channels} channels), e.g. ComfyUI's wan2.2_vae.safetensors")
    if layout == "unknown":
        sample = ", ".join(sorted(shapes)[:4]) or "none"
        raise CheckpointError(f"{path}: not a Wan VAE: expected {_EXPECTED_FILE}, whose keys include "
                              f"'decoder.middle.0.residual.0.gamma' and 'conv2.weight'; this file has "
                              f"{len(shapes)} tensors, e.g. {sample}")
    if channels != expected_channels:
        raise CheckpointError(f"{path}: a Wan VAE with {channels} latent channels; expected {expected_channels} "
                              f"({_EXPECTED_FILE})")
    rename = wan22_vae_key_to_diffusers if layout == "original" else (lambda key: key)
    if vae_config is None:
        vae_config = {**WAN22_VAE_CONFIG, **wan22_vae_widths(shapes, path)}
    try:
        with torch.device("meta"):
            vae = AutoencoderKLWan(**vae_config)
    except (ValueError, TypeError, ZeroDivisionError) as error:
        raise CheckpointError(f"{path}: its widths {dict(vae_config)} do not make a Wan VAE: {error}") from None
    expected = {k: list(v.shape) for k, v in vae.state_dict().items()}
    found = {rename(k): list(shape) for k, shape in shapes.items()}
    if len(found) != len(shapes) or found != expected:
        raise CheckpointError(_mismatch_message(path, expected, found))
    return vae, rename


# ------------------------------------------------------------------------------------------- the codec

class WanVideoCodec(VideoCodec):
    """Frames [B, F, H, W, 3] in 0..1 <-> normalised latents [B, 48, Fv, H/16, W/16]; 24 fps, F = 1 + 4 (Fv - 1).

    tiled: decode in overlapping spatial tiles (each tile runs every frame through the causal decoder), cutting the
    decoder's peak memory to one tile's; ``tile_px`` is the tile side and ``tile_overlap_px`` the strip neighbours
    share, both multiples of 16. Encoding is never tiled (training latents must not carry seams).
    Encoding and decoding run without gradients, on the VAE's device and dtype; results come back as float32 on the
    input's device.
    """

    fps = WAN22_FPS
    causal_first_frame = True

    def __init__(self, vae: AutoencoderKLWan, latents_mean: Sequence[float] = WAN22_LATENTS_MEAN,
                 latents_std: Sequence[float] = WAN22_LATENTS_STD, tiled: bool = False, tile_px: int = 384,
                 tile_overlap_px: int = 128):
        config = vae.config
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = int(config.z_dim)
        self.spatial_stride = int(config.scale_factor_spatial)
        self.temporal_stride = int(config.scale_factor_temporal)
        if len(latents_mean) != self.latent_channels or len(latents_std) != self.latent_channels:
            raise ValueError(f"WanVideoCodec: latents_mean / latents_std need {self.latent_channels} values (one per "
                             f"latent channel), received {len(latents_mean)} / {len(latents_std)}")
        if min(latents_std) <= 0:
            raise ValueError(f"WanVideoCodec: latents_std must be positive, received a minimum of {min(latents_std)}")
        self.latents_mean = torch.tensor(latents_mean, dtype=torch.float32)     # [Cv]
        self.latents_std = torch.tensor(latents_std, dtype=torch.float32)       # [Cv]
        s = self.spatial_stride
        if tile_px < 2 * s or tile_px % s or tile_overlap_px % s or not 0 <= tile_overlap_px < tile_px:
            raise ValueError(f"WanVideoCodec: tile_px must be a multiple of {s} of at least {2 * s} and "
                             f"tile_overlap_px a multiple of {s} below it, received {tile_px} / {tile_overlap_px}")
        self.tiled = tiled
        self.tile_px = tile_px
        self.tile_overlap_px = tile_overlap_px

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None, tiled: bool = False, *, config: Mapping | None = None,
                  latents_mean: Sequence[float] = WAN22_LATENTS_MEAN,
                  latents_std: Sequence[float] = WAN22_LATENTS_STD, **codec_options) -> WanVideoCodec:
        """Load the Wan2.2 VAE from a safetensors file in the original layout (or diffusers' layout).

        device: where the weights live (None: CPU). dtype: their dtype in memory (None: as stored, fp32 if mixed).
        config: AutoencoderKLWan arguments that override ``WAN22_VAE_CONFIG`` (smaller test models). A file may
        also carry smaller widths in its metadata (``VAE_CONFIG_METADATA_KEY``); ``config`` wins over them.
        """
        path = os.fspath(path)
        header, metadata = read_header(path)
        shapes = {k: list(v["shape"]) for k, v in header.items()}
        vae_config = {**WAN22_VAE_CONFIG, **_widths_from_metadata(metadata, path), **(config or {})}
        vae, rename = check_wan22_vae(shapes, path, vae_config)

        if dtype is None:
            stored = {v["dtype"] for v in header.values()}
            dtype = {frozenset({"BF16"}): torch.bfloat16, frozenset({"F16"}): torch.float16}.get(
                frozenset(stored), torch.float32)
        device = torch.device(device if device is not None else "cpu")
        # Read onto the target device: the NaN/inf check and the dtype conversion run there, per tensor.
        state = {rename(k): v for k, v in load_weights(path, device, cast=lambda k, v: v.to(dtype=dtype)).items()}
        vae.load_state_dict(state, strict=True, assign=True)
        return cls(vae, latents_mean, latents_std, tiled=tiled, **codec_options)

    # ------------------------------------------------------------------ normalisation

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.latent_channels, 1, 1, 1)
        return (self.latents_mean.to(like.device).view(shape), self.latents_std.to(like.device).view(shape))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw VAE latent [B, Cv, Fv, Hv, Wv] -> the normalised latent the joint model sees."""
        mean, std = self._stats(raw)
        return (raw.float() - mean) / std

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent [B, Cv, Fv, Hv, Wv] -> the raw latent the VAE decoder takes."""
        mean, std = self._stats(latent)
        return latent.float() * std + mean

    # ------------------------------------------------------------------ encode / decode

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    def _check_frames(self, frames: torch.Tensor) -> None:
        s, t = self.spatial_stride, self.temporal_stride
        expected = f"[B, F, H, W, 3] floats in 0..1 with F = 1 + {t}k and H, W multiples of {s}"
        if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
            got = f"dtype {frames.dtype}" if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"WanVideoCodec.encode frames: expected {expected}, received {got}")
        shape = list(frames.shape)
        if frames.ndim != 5 or shape[-1] != 3:
            hint = " (add a batch dimension with frames[None])" if frames.ndim == 4 else ""
            raise ValueError(f"WanVideoCodec.encode frames: expected {expected}, received {shape}{hint}")
        f, h, w = shape[1:4]
        if (f - 1) % t or h % s or w % s or min(h, w) < s:
            near = f"{1 + t * ((f - 1) // t)} frames of {h // s * s}x{w // s * s}"
            raise ValueError(f"WanVideoCodec.encode frames: expected {expected}, received {shape} (the nearest clip "
                             f"it takes is {near}: crop or resize first)")

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, F, H, W, 3] in 0..1 (clamped) -> normalised latent [B, 48, 1 + (F - 1)/4, H/16, W/16]."""
        self._check_frames(frames)
        param = self._param
        pixels = frames.to(device=param.device, dtype=param.dtype).clamp(0.0, 1.0) * 2.0 - 1.0
        pixels = pixels.permute(0, 4, 1, 2, 3)                              # [B, 3, F, H, W] in -1..1
        raw = self.vae.encode(pixels).latent_dist.mode()                    # the posterior mean, as Ovi encodes
        return self.normalize(raw).to(frames.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """normalised latent [B, 48, Fv, Hv, Wv] -> frames [B, 1 + 4 (Fv - 1), 16 Hv, 16 Wv, 3] in 0..1."""
        c = self.latent_channels
        if not isinstance(latent, torch.Tensor) or not latent.is_floating_point() or latent.ndim != 5 \
                or latent.shape[1] != c:
            got = list(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise ValueError(f"WanVideoCodec.decode latent: expected floats [B, {c}, Fv, Hv, Wv], received {got}")
        param = self._param
        raw = self.denormalize(latent.to(param.device)).to(param.dtype)
        tile = self.tile_px // self.spatial_stride
        if self.tiled and max(raw.shape[-2:]) > tile:
            pixels = decode_tiled(lambda part: self.vae.decode(part).sample.float(), raw, tile,
                                  self.tile_overlap_px // self.spatial_stride, self.spatial_stride)
        else:
            pixels = self.vae.decode(raw).sample.float()                    # [B, 3, F, H, W] in -1..1
        frames = (pixels.permute(0, 2, 3, 4, 1) + 1.0) / 2.0
        return frames.clamp(0.0, 1.0).to(latent.device)
