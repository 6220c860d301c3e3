"""The embedded video codec with a learned decoder: the fixed DCT encoder of ``codecs/embedded.py`` and a small
convolutional network, trained on BounceBench, that draws the frames back from its latents.

The DCT codec keeps 16 of the 96 numbers of each 2x4x4 block, and its linear decoder draws exactly what those 16
numbers span: a ball's hard edge rings into a halo that the benchmark's metrics read as a second ball, and its
colour comes back mixed with the background's (docs/codec.md). What the kept numbers say about a ball (where it is
to a fraction of a pixel, its radius and colour) is far more than a linear decoder can use, because a ball on a
plain background is a strong prior. This decoder learns that prior:

    latent [B, 16, Fv, Hv, Wv] -> 2 + hidden_layers 3-D convs (3x3x3) with SiLU between
    -> 96 numbers per latent position -> the 2x4x4 RGB block around mid-grey -> frames
    -> (optional) + a full-resolution refinement of each frame -> clamped to 0..1.

Each 3x3x3 convolution sees the neighbouring blocks, so a ball that straddles a block border is drawn as one object.
Blocks drawn from 96 numbers each still ripple inside a ball by about +-0.05 (a dip, a bright ring), which the
colour proxy reads; the refinement (a few 3x3 convolutions on each decoded frame, at full resolution, added to it)
flattens that, and it is trained as a second stage on top of a frozen first one (``train/codec_training.py``).
The encoder, the latent space, the rates and the linear preview colours are the DCT codec's, so every joint model
trained on DCT latents (the embedded default's weights) decodes through it unchanged. The decoder is trained on
latents with added noise too (``train/codec_training.py``), so the slightly wrong latents a diffusion model samples
still decode to clean balls. Its weights ship in ``weights/`` (about 3 MB); the config is in the file's metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..files.safetensors_io import CheckpointError, load_weights, read_header, save_tensors_atomic
from .blocks import blocks_to_frames, check_latent
from .embedded import TinyVideoCodec

CONFIG_METADATA_KEY = "video_decoder_config"


@dataclass(frozen=True)
class VideoDecoderConfig:
    width: int = 64                  # channels of the hidden convolutions
    hidden_layers: int = 1           # width -> width convolutions between the first and the last (files saved
                                     # before this field existed have one)
    refine_width: int = 0            # channels of the full-resolution refinement; 0: none (files saved before
                                     # this field existed have none)
    refine_layers: int = 2           # its width -> width convolutions between the first and the last

    def __post_init__(self):
        for name, least in (("width", 1), ("hidden_layers", 0), ("refine_width", 0), ("refine_layers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"VideoDecoderConfig.{name}: expected an integer >= {least}, got {value!r}")

    def without_refinement(self) -> "VideoDecoderConfig":
        """The first stage of this decoder: the same block network, no refinement."""
        return VideoDecoderConfig(width=self.width, hidden_layers=self.hidden_layers)


class FrameRefiner(nn.Module):
    """frames [B, F, H, W, 3] -> a correction [B, F, H, W, 3]: 2 + layers 2-D convs (3x3) per frame, SiLU between.

    The last convolution starts at zero, so a new refiner leaves the frames as they are and training starts from
    the first stage's drawing."""

    def __init__(self, width: int, layers: int):
        super().__init__()
        hidden = [module for _ in range(layers) for module in (nn.Conv2d(width, width, 3, padding=1), nn.SiLU())]
        last = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.layers = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), *hidden, last)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, f, h, w, c = frames.shape
        planes = frames.reshape(b * f, h, w, c).permute(0, 3, 1, 2)               # [B F, 3, H, W]
        return self.layers(planes).permute(0, 2, 3, 1).reshape(b, f, h, w, c)


class VideoDecoder(nn.Module):
    """DCT latent [B, 16, Fv, Hv, Wv] -> frames [B, 2 Fv, 4 Hv, 4 Wv, 3] (unclamped; ``LearnedDecoderVideoCodec``
    clamps)."""

    def __init__(self, config: VideoDecoderConfig = VideoDecoderConfig()):
        super().__init__()
        self.config = config
        width = config.width
        hidden = [module for _ in range(config.hidden_layers)
                  for module in (nn.Conv3d(width, width, 3, padding=1), nn.SiLU())]
        self.layers = nn.Sequential(nn.Conv3d(TinyVideoCodec.latent_channels, width, 3, padding=1), nn.SiLU(),
                                    *hidden, nn.Conv3d(width, TinyVideoCodec.block_size, 3, padding=1))
        self.refiner = FrameRefiner(config.refine_width, config.refine_layers) if config.refine_width else None

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        # A linear output around mid-grey, not a sigmoid: BounceBench's near-black background sits where a
        # sigmoid's gradient has all but vanished (a sigmoid decoder still drew it at 0.01 instead of 0.06 after
        # 2500 steps, which shifts every ball colour the metrics read against the background).
        blocks = self.layers(latent).permute(0, 2, 3, 4, 1) + 0.5                 # [B, Fv, Hv, Wv, 96]
        frames = blocks_to_frames(blocks, TinyVideoCodec.temporal_stride, TinyVideoCodec.spatial_stride)
        return frames if self.refiner is None else frames + self.refiner(frames)


def save_video_decoder(decoder: VideoDecoder, path: str | os.PathLike,
                       extra_metadata: dict[str, str] | None = None) -> None:
    metadata = {CONFIG_METADATA_KEY: json.dumps(asdict(decoder.config)), **(extra_metadata or {})}
    save_tensors_atomic({k: v.float() for k, v in decoder.state_dict().items()}, path, metadata)


def load_video_decoder(path: str | os.PathLike) -> VideoDecoder:
    """The decoder saved in ``path`` (config from the metadata), on the CPU in float32, in eval mode."""
    _, metadata = read_header(path)
    if CONFIG_METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: no {CONFIG_METADATA_KEY!r} in the metadata; expected a video decoder saved "
                              "by train-codec")
    try:
        config = VideoDecoderConfig(**json.loads(metadata[CONFIG_METADATA_KEY]))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable {CONFIG_METADATA_KEY} ({error})") from None
    decoder = VideoDecoder(config)
    tensors = load_weights(path, cast=lambda _, t: t.float())
    expected = decoder.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise CheckpointError(f"{path}: holds another network than a video decoder of config {config}")
    decoder.load_state_dict(tensors)
    return decoder.eval().requires_grad_(False)


class LearnedDecoderVideoCodec(TinyVideoCodec):
    """``TinyVideoCodec`` (its encoder, latents, rates and preview colours) with a trained ``VideoDecoder``.

    The network runs in the latent's dtype on its device (a copy per device/dtype is kept), without gradients unless
    the caller enables them.
    """

    def __init__(self, decoder: VideoDecoder):
        super().__init__()
        self.decoder = decoder
        self._copies: dict[tuple, VideoDecoder] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "LearnedDecoderVideoCodec":
        return cls(load_video_decoder(path))

    def _network(self, like: torch.Tensor) -> VideoDecoder:
        key = (str(like.device), like.dtype)
        if key == ("cpu", torch.float32):
            return self.decoder
        if key not in self._copies:
            # A fresh copy made outside inference mode, so a training graph may use it too.
            with torch.inference_mode(False):
                copy = VideoDecoder(self.decoder.config)
                copy.load_state_dict(self.decoder.state_dict())
                self._copies[key] = copy.to(device=like.device, dtype=like.dtype).eval().requires_grad_(False)
        return self._copies[key]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 16, Fv, Hv, Wv] -> frames [B, 2 Fv, 4 Hv, 4 Wv, 3] in 0..1."""
        check_latent("LearnedDecoderVideoCodec.decode latent", latent, self.latent_channels)
        return self._network(latent)(latent).clamp(0.0, 1.0)
