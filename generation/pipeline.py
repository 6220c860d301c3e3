"""An audio-video pipeline: the joint model with the codecs and text encoder it was trained with.

Also the embedded default: the ``tiny`` preset with the package's own codecs and text encoder, which needs no
download and runs on a laptop CPU. Its trained weights ship in ``weights/``; without them (a development checkout
before training) the network is drawn from a fixed seed, so everything still runs, producing noise-like clips.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from ..model.checkpoint import load_joint_model
from ..codecs.interface import AudioCodec, VideoCodec
from ..codecs.embedded import TinyAudioCodec, TinyVideoCodec
from ..model.config import JointConfig, audio_rope_scale, get_preset
from ..model.joint import JointModel
from .packed_latent import PackedAVLayout, layout_of_packed
from ..text.interface import EncodedText, TextEncoder
from ..text.embedded import TinyTextEncoder

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL_FILE = PACKAGE_DIR / "weights" / "embedded_default.safetensors"
EMBEDDED_TEXT_FILE = PACKAGE_DIR / "weights" / "embedded_text_encoder.safetensors"
# The embedded video codec's learned decoder (codecs/learned_video.py): without it, the DCT codec's linear one.
EMBEDDED_VIDEO_DECODER_FILE = PACKAGE_DIR / "weights" / "embedded_video_decoder.safetensors"
# The sync-tuned variant: a LoRA post-trained for sync on the embedded default (docs/results.md says how).
EMBEDDED_SYNC_LORA_FILE = PACKAGE_DIR / "weights" / "embedded_sync_lora.safetensors"
EMBEDDED_SYNC_LORA_NAME = "embedded-sync"   # what the CLI's --lora and the Loader call it
# The text guidance the embedded default generates with: at 2 its sync is that of 4 within the standard error (margin
# -0.007 +- 0.020 over 192 val clips) with truer colour (error 0.018 vs 0.026) and impact pitch (2.1 vs 2.9 Hz);
# 4 draws the ball's size truer (docs/results.md).
EMBEDDED_TEXT_SCALE = 2.0


class ClipSize(NamedTuple):
    """What a pipeline makes when asked for no particular size."""

    seconds: float
    height_px: int
    width_px: int


EMBEDDED_CLIP = ClipSize(seconds=2.0, height_px=32, width_px=32)    # the size the embedded default was trained at
# Frame sides the embedded default takes are multiples of this: the codec's spatial stride times the patch size.
EMBEDDED_PIXEL_MULTIPLE = TinyVideoCodec.spatial_stride * math.lcm(*get_preset("tiny").video.patch_size[1:])


@dataclass
class AVPipeline:
    model: JointModel
    video_codec: VideoCodec
    audio_codec: AudioCodec
    text_encoder: TextEncoder
    name: str = "custom"
    default_clip: ClipSize = EMBEDDED_CLIP
    default_shift: float = 3.0     # the flow-matching shift the model samples best with (Ovi: 5)
    _anchor_cache: dict = field(default_factory=dict, repr=False)

    # ---- sizes --------------------------------------------------------------------------------------------
    def latent_shapes(self, seconds: float, height_px: int, width_px: int, batch: int = 1
                      ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Latent shapes of a clip: (video [B, Cv, Fv, Hv, Wv], audio [B, La, Ca]).

        Frames are rounded to what the video codec takes; the audio covers the same seconds as the frames.
        """
        vc, ac = self.video_codec, self.audio_codec
        if not 0 < seconds < math.inf:
            raise ValueError(f"seconds must be finite and > 0, got {seconds}")
        s = self.pixel_multiple
        if height_px % s or width_px % s or height_px <= 0 or width_px <= 0:
            raise ValueError(f"height and width must be positive multiples of {s} px for this model, got "
                             f"{height_px}x{width_px}")
        wanted_frames = max(1, round(seconds * vc.fps))
        latent_frames = max(1, round((wanted_frames - (1 if vc.causal_first_frame else 0)) / vc.temporal_stride)
                            + (1 if vc.causal_first_frame else 0))
        pt = self.model.config.video.patch_size[0]
        latent_frames = pt * max(1, math.ceil(latent_frames / pt))
        audio_len = self.audio_latent_length(latent_frames)
        video_shape = (batch, vc.latent_channels, latent_frames, height_px // vc.spatial_stride,
                       width_px // vc.spatial_stride)
        return video_shape, (batch, audio_len, ac.latent_channels)

    def audio_latent_length(self, latent_frames: int) -> int:
        """La: the audio latent steps that cover the same seconds as a video latent of ``latent_frames``."""
        vc, ac = self.video_codec, self.audio_codec
        return ac.latent_length(round(vc.num_frames(latent_frames) / vc.fps * ac.sample_rate))

    def packed_layout(self, packed_shape) -> PackedAVLayout:
        """Where video and audio sit in a packed latent [B, Cv, F, H, W + Wa] (generation/packed_latent.py)."""
        if len(packed_shape) == 5:    # channels first: a latent of other codecs would fit no layout at all
            self.check_latent(packed_shape, (1, 1, self.audio_codec.latent_channels))
        return layout_of_packed(packed_shape, self.audio_latent_length, self.audio_codec.latent_channels)

    def check_latent(self, video_shape, audio_shape, what: str = "latent") -> None:
        """Refuse latents made for other codecs (video [B, Cv, ...] / audio [B, La, Ca] channel counts)."""
        cv, ca = self.video_codec.latent_channels, self.audio_codec.latent_channels
        if video_shape[1] != cv or audio_shape[2] != ca:
            raise ValueError(f"{what}: made for other codecs: {video_shape[1]} video / {audio_shape[2]} audio latent "
                             f"channels, these codecs use {cv} / {ca} (make it with SyncAV Empty AV Latent from the "
                             "same loader)")

    @property
    def pixel_multiple(self) -> int:
        """Frame width and height must be positive multiples of this many pixels (codec stride x patch)."""
        _, ph, pw = self.model.config.video.patch_size
        return self.video_codec.spatial_stride * math.lcm(ph, pw)

    # ---- conditioning -------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> EncodedText:
        return self.text_encoder.encode(prompts)

    def anchors(self, video_shape, audio_shape, device=None, dtype=torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(static_video [1, Cv, Fv, Hv, Wv], silence [1, La, Ca]): SyncCFG's anchors, computed once per shape."""
        key = (tuple(video_shape[1:]), tuple(audio_shape[1:]), str(device), dtype)
        if key not in self._anchor_cache:
            vc = self.video_codec
            _, _, fv, hv, wv = video_shape
            # Made outside inference mode (ComfyUI runs nodes inside it), so training code can use them too.
            with torch.inference_mode(False), torch.no_grad():
                static = vc.static_latent(fv, hv * vc.spatial_stride, wv * vc.spatial_stride)
                silence = self.audio_codec.silence_latent(audio_shape[1])
            self._anchor_cache[key] = (static.to(device, dtype), silence.to(device, dtype))
        return self._anchor_cache[key]

    # ---- pixels and samples -------------------------------------------------------------------------------
    def decode(self, video_latent: torch.Tensor, audio_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (frames [B, F, H, W, 3] in 0..1, waveform [B, C, T] in -1..1), float32 on the CPU."""
        with torch.no_grad():
            frames = self.video_codec.decode(video_latent.float().cpu()).clamp(0, 1)
            waveform = self.audio_codec.decode(audio_latent.float().cpu()).clamp(-1, 1)
        return frames, waveform


def embedded_video_codec() -> TinyVideoCodec:
    """The embedded video codec: the DCT codec with the shipped learned decoder (``EMBEDDED_VIDEO_DECODER_FILE``),
    or with its own linear decoder where this copy of the package lacks that file. Both share the DCT latents."""
    if EMBEDDED_VIDEO_DECODER_FILE.is_file():
        from ..codecs.learned_video import LearnedDecoderVideoCodec

        return LearnedDecoderVideoCodec.from_file(EMBEDDED_VIDEO_DECODER_FILE)
    log.warning("embedded video decoder not found (%s): decoding with the DCT codec's linear decoder",
                EMBEDDED_VIDEO_DECODER_FILE.name)
    return TinyVideoCodec()


def embedded_config(video_codec: VideoCodec | None = None, audio_codec: AudioCodec | None = None) -> JointConfig:
    """The ``tiny`` preset fitted to the embedded codecs: their latent widths, and the audio RoPE scale from their
    rates (16 fps / 2x temporal vs 125 audio latents per second -> 0.064)."""
    video_codec = video_codec or TinyVideoCodec()
    audio_codec = audio_codec or TinyAudioCodec()
    preset = get_preset("tiny")
    frames = round(EMBEDDED_CLIP.seconds * video_codec.fps)
    rope = audio_rope_scale(video_codec.fps, frames, video_codec.temporal_stride, audio_codec.latents_per_second)
    return preset.replace(
        audio=dataclasses.replace(preset.audio, rope_scale=rope, in_channels=audio_codec.latent_channels,
                                  out_channels=audio_codec.latent_channels),
        video=dataclasses.replace(preset.video, in_channels=video_codec.latent_channels,
                                  out_channels=video_codec.latent_channels))


def embedded_codec_pipeline(weights: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                            operations=None, name: str | None = None, text_device: str | torch.device = "cpu"
                            ) -> AVPipeline:
    """A joint model trained with the embedded codecs and text encoder, from its file."""
    model = load_joint_model(weights, device=device, dtype=dtype, operations=operations)
    return AVPipeline(model=model, video_codec=embedded_video_codec(), audio_codec=TinyAudioCodec(),
                      text_encoder=embedded_text_encoder(text_device), name=name or Path(weights).stem)


def build_embedded_default(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           operations=None, seed: int = 0, weights: str | Path | None = None) -> AVPipeline:
    """The embedded default pipeline: tiny joint model + the package's codecs and text encoder.

    ``operations``: a layer namespace (ComfyUI's comfy.ops inside ComfyUI). Layers of such namespaces may skip
    weight initialisation, so a seeded network is built with torch.nn and its weights loaded into them.
    ``weights``: another file of the embedded default's network (a training run's) instead of the shipped one.
    """
    if weights is not None and not Path(weights).is_file():
        # Only the shipped file may be missing (a bare checkout); a file asked for by name must be there.
        raise FileNotFoundError(f"weights: {weights} is not a file")
    weights = Path(weights) if weights is not None else EMBEDDED_MODEL_FILE
    if weights.is_file():
        return embedded_codec_pipeline(weights, device=device, dtype=dtype, operations=operations,
                                       name="embedded-default", text_device=device)
    video_codec, audio_codec = embedded_video_codec(), TinyAudioCodec()
    config = embedded_config(video_codec, audio_codec)
    log.warning("embedded default weights not found (%s): using an untrained, seeded network", weights.name)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    seeded = JointModel(config)
    torch.random.set_rng_state(generator_state)
    if operations is None:
        model = seeded
    else:
        with torch.device("meta"):
            model = JointModel(config, operations)
        model.load_state_dict(seeded.state_dict(), assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    return AVPipeline(model=model, video_codec=video_codec, audio_codec=audio_codec,
                      text_encoder=embedded_text_encoder(device), name="embedded-default")


def embedded_sync_lora_path() -> Path:
    """The shipped sync LoRA of the embedded default; a clear error where this copy of the package lacks it."""
    if not EMBEDDED_SYNC_LORA_FILE.is_file():
        raise FileNotFoundError(f"the embedded default's sync LoRA ({EMBEDDED_SYNC_LORA_FILE.name}) is not in this "
                                "package's weights/ folder; reinstall the package or pass a LoRA file")
    return EMBEDDED_SYNC_LORA_FILE


def build_embedded_sync_tuned(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                              operations=None) -> AVPipeline:
    """The embedded default with its shipped sync LoRA merged at full strength on every tower the file adapts."""
    from ..runtime.lora import apply_lora, load_lora

    lora_path = embedded_sync_lora_path()
    pipeline = build_embedded_default(device=device, dtype=dtype, operations=operations)
    tensors, _ = load_lora(lora_path)
    apply_lora(pipeline.model, tensors, where=lora_path.name)
    pipeline.name = "embedded-default-sync"
    return pipeline


def embedded_text_encoder(device: str | torch.device = "cpu") -> TinyTextEncoder:
    """The embedded text encoder: its trained weights when they ship, else the seeded network."""
    if EMBEDDED_TEXT_FILE.is_file():
        return TinyTextEncoder.from_file(EMBEDDED_TEXT_FILE, device=device)
    return TinyTextEncoder(device=device)

