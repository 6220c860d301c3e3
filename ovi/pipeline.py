"""The Ovi pipeline: Ovi's joint model with the Wan2.2 VAE, the MMAudio 16 kHz VAE + BigVGAN vocoder and UMT5-XXL.

``OviPipeline`` is an ``AVPipeline`` whose clip geometry is Ovi's (ovi/sizes.py: 5 s -> 121 frames, 31 video
and 157 audio latents; frame sizes rescaled to the variant's pixel area in multiples of 32) and which knows its
variant (prompt style, default negatives). ``build_ovi_pipeline`` loads one from files; the codecs and the text
encoder can be passed in instead (tests, or a text encoder shared between pipelines).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..model.checkpoint import CONFIG_METADATA_KEY, load_joint_model
from ..codecs.interface import AudioCodec, VideoCodec
from ..model.config import TowerConfig, get_preset
from .sizes import OVI_SHIFT, audio_latent_length, frames_for_seconds, rope_scale_from_codecs, snap_size_to_area, \
    video_latent_frames
from .variants import OviFiles, OviVariant
from ..generation.pipeline import AVPipeline, ClipSize
from ..text.interface import EncodedText, TextEncoder

log = logging.getLogger(__name__)

OVI_TEXT_DIM = 4096
OVI_TEXT_LENGTH = 512


class OviTextEncoder(TextEncoder):
    """UMT5-XXL for an Ovi pipeline, loaded on first use (a CLIP connected to SyncAV Text Encode may replace it, and
    the 11 GB encoder should not be loaded for nothing). Carries the variant's prompt style.

    ``load``: returns the real encoder (e.g. ``lambda: UMT5TextEncoder(...)``); it may raise FileNotFoundError
    naming what is missing, which then surfaces at the first ``encode``.
    ``dim`` / ``max_length``: the text width and rows the joint model takes (Ovi: 4096, 512); ``build_ovi_pipeline``
    sets them from the model it loads (``fit_model``), and the loaded encoder must give that width.
    """

    def __init__(self, load: Callable[[], TextEncoder], prompt_style: str, dim: int = OVI_TEXT_DIM,
                 max_length: int = OVI_TEXT_LENGTH):
        self._load = load
        self._encoder: Optional[TextEncoder] = None
        self.prompt_style = prompt_style
        self.dim = dim
        self.max_length = max_length
        self.model_name = "Ovi"          # what the width comes from, for error messages

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def fit_model(self, dim: int, max_length: int, model_name: str) -> None:
        """Take the text width and rows of the joint model ``model_name`` (a file name, for error messages)."""
        if self._encoder is not None and self._encoder.dim != dim:
            raise ValueError(f"Ovi text encoder: the loaded encoder gives {self._encoder.dim}-wide embeddings; the "
                             f"joint model {model_name} takes {dim}-wide text")
        self.dim, self.max_length, self.model_name = dim, max_length, model_name

    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            try:
                encoder = self._load()
            except ValueError as error:     # a file of the wrong kind: say which model it was loaded for
                raise ValueError(f"Ovi text encoder for the joint model {self.model_name} ({self.dim}-wide text): "
                                 f"{error}") from error
            if encoder.dim != self.dim:
                source = getattr(encoder, "path", None) or type(encoder).__name__
                expected = " (UMT5-XXL)" if self.dim == OVI_TEXT_DIM else ""
                raise ValueError(f"Ovi text encoder: {source} gives {encoder.dim}-wide embeddings; the joint model "
                                 f"{self.model_name} takes {self.dim}-wide text{expected}")
            self._encoder = encoder
        return self._encoder

    def encode(self, prompts: list[str]) -> EncodedText:
        return self.encoder().encode(prompts)

    def __repr__(self) -> str:
        return f"OviTextEncoder({self.prompt_style}, {'loaded' if self.loaded else 'not loaded yet'})"


def umt5_loader(weights_path: str, config_dir: str, device=None, dtype: torch.dtype = torch.bfloat16,
                expected_dim: int | None = None, max_length: int = OVI_TEXT_LENGTH,
                offload_device=None) -> Callable[[], TextEncoder]:
    """A ``load`` callable for OviTextEncoder: UMT5-XXL through transformers from local files (text/umt5.py).

    expected_dim: refuse a config of another width before reading the weights (the OviTextEncoder checks the
    loaded encoder's width against the joint model's either way).
    """
    def load() -> TextEncoder:
        from ..text.umt5 import UMT5TextEncoder

        return UMT5TextEncoder(weights_path, config_path=config_dir, tokenizer_path=config_dir,
                               max_length=max_length, expected_dim=expected_dim, device=device, dtype=dtype,
                               offload_device=offload_device)
    return load


@dataclass
class OviPipeline(AVPipeline):
    variant: Optional[OviVariant] = None

    @property
    def prompt_style(self) -> str:
        return getattr(self.text_encoder, "prompt_style", None) or self.variant.prompt_style

    def frame_size(self, height_px: int, width_px: int) -> tuple[int, int]:
        """The frame size Ovi makes for a requested one: its aspect ratio at the variant's pixel area, sides in
        multiples of 32 (720x720 -> 704x704 for the 720 models)."""
        multiple = self.pixel_multiple
        if self.variant is None:
            return snap_size_to_area(height_px, width_px, height_px * width_px, multiple)
        return snap_size_to_area(height_px, width_px, self.variant.area_px, multiple)

    def latent_shapes(self, seconds: float, height_px: int, width_px: int, batch: int = 1
                      ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(video [B, 48, Fv, H/16, W/16], audio [B, La, 20]) as Ovi sizes them: 5 s -> Fv 31, La 157; 10 s ->
        61, 314. The frame size is rescaled to the variant's area (see ``frame_size``)."""
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        if height_px <= 0 or width_px <= 0:
            raise ValueError(f"height and width must be positive, got {height_px}x{width_px}")
        vc, ac = self.video_codec, self.audio_codec
        height, width = self.frame_size(int(height_px), int(width_px))
        if (height, width) != (height_px, width_px):
            log.info("Ovi: %dx%d px is made at %dx%d (the %s model's area, multiples of %d)", width_px, height_px,
                     width, height, self.name, self.pixel_multiple)
        if self.variant is not None and abs(seconds - self.variant.seconds) > 0.5:
            log.warning("Ovi: %s was trained on %g s clips; %g s may come out worse", self.name,
                        self.variant.seconds, seconds)
        frames = frames_for_seconds(seconds, vc.fps, vc.temporal_stride)
        latent_frames = video_latent_frames(frames, vc.temporal_stride)
        return ((batch, vc.latent_channels, latent_frames, height // vc.spatial_stride, width // vc.spatial_stride),
                (batch, self.audio_latent_length(latent_frames), ac.latent_channels))

    def audio_latent_length(self, latent_frames: int) -> int:
        """La as Ovi sizes it: 31 video latent frames -> 157 audio latents."""
        vc = self.video_codec
        return audio_latent_length(latent_frames, vc.fps, vc.temporal_stride)


# ------------------------------------------------------------------------------------------------ loading

def load_video_codec(path: str, device=None, dtype=None) -> VideoCodec:
    """The Wan2.2 VAE from its safetensors file (codecs/wan.py)."""
    from ..codecs.wan import WanVideoCodec

    return WanVideoCodec.from_file(path, device=device, dtype=dtype)


def load_audio_codec(vae_path: str, vocoder_path: str, device=None, dtype=None) -> AudioCodec:
    """The MMAudio 16 kHz VAE and its BigVGAN vocoder (codecs/mmaudio.py)."""
    from ..codecs.mmaudio import MMAudioCodec

    return MMAudioCodec.from_files(vae_path, vocoder_path, device=device, dtype=dtype)


def check_codec_rates(video_codec: VideoCodec, audio_codec: AudioCodec, rope_scale: float,
                      frames: int = 121) -> None:
    """Refuse codecs whose rates put the towers on other time axes than the model's RoPE expects."""
    expected = rope_scale_from_codecs(video_codec, audio_codec, frames)
    if abs(expected - rope_scale) > 1e-4:
        raise ValueError(f"Ovi codecs: {type(video_codec).__name__} ({video_codec.fps:g} fps, stride "
                         f"{video_codec.temporal_stride}) and {type(audio_codec).__name__} "
                         f"({audio_codec.latents_per_second:g} latents/s) give an audio RoPE scale of {expected:.5f}; "
                         f"the model was trained with {rope_scale:.5f}")


def build_ovi_pipeline(variant: OviVariant, files: OviFiles | None = None, *, model_path: str | None = None,
                       device: str | torch.device = "cpu", dtype: torch.dtype | None = None, operations=None,
                       codec_device: str | torch.device | None = None,
                       video_codec: VideoCodec | None = None, audio_codec: AudioCodec | None = None,
                       text_encoder: TextEncoder | None = None,
                       text_encoder_files: tuple[str, str] | None = None, blocks_on_gpu: int | None = None,
                       name: str | None = None) -> OviPipeline:
    """An OviPipeline from files (``files``: model/ovi_variants.find_variant_files) or given parts.

    device / dtype / operations: where and how the joint model is loaded (``load_joint_model``; dtype None keeps
        an fp8 file in fp8). blocks_on_gpu: keep only that many fusion blocks on ``device`` (runtime/block_swap.py);
        the model is then loaded on the CPU and the rest swapped in per block.
    codec_device: where the codecs run (default: the codec's own default).
    text_encoder: default an OviTextEncoder that loads nothing until asked (set it to one built with
        ``umt5_loader`` to encode prompts outside ComfyUI). An OviTextEncoder takes the joint model's text width
        (``fit_model``); any other encoder must already have it.
    text_encoder_files: (UMT5 weights file, folder with its config.json and tokenizer), as
        ``find_text_encoder_files`` gives them: the text encoder is loaded from them on first use (on
        ``codec_device``), and a config of another width than the joint model's is refused before the weights load.
    """
    path = model_path or (files.model if files is not None else None)
    if path is None:
        raise ValueError("build_ovi_pipeline: give files (find_variant_files) or model_path")
    load_device = "cpu" if blocks_on_gpu is not None else device
    model = load_joint_model(path, device=load_device, dtype=dtype, operations=operations,
                             **_config_argument(path, variant))
    if video_codec is None or audio_codec is None:
        if files is None:
            raise ValueError("build_ovi_pipeline: the codecs' files are needed (files=find_variant_files(...)) "
                             "unless video_codec and audio_codec are given")
        video_codec = video_codec or load_video_codec(files.video_vae, device=codec_device)
        audio_codec = audio_codec or load_audio_codec(files.audio_vae, files.vocoder, device=codec_device)
    check_codec_rates(video_codec, audio_codec, model.config.audio.rope_scale)
    text_encoder = _text_encoder_for(model.config.video, variant, path, text_encoder, text_encoder_files,
                                     codec_device)
    if blocks_on_gpu is not None:
        from ..runtime.block_swap import enable_block_swap

        enable_block_swap(model, blocks_on_gpu, device)
    pipeline = OviPipeline(model=model, video_codec=video_codec, audio_codec=audio_codec, text_encoder=text_encoder,
                           name=name or variant.label, variant=variant)
    # The clip Ovi makes by default: the variant's length and its frame size as Ovi snaps it (720x720 -> 704x704).
    pipeline.default_clip = ClipSize(variant.seconds, *pipeline.frame_size(variant.height_px, variant.width_px))
    pipeline.default_shift = OVI_SHIFT
    return pipeline


def _text_encoder_for(tower: TowerConfig, variant: OviVariant, model_path: str, text_encoder: TextEncoder | None,
                      files: tuple[str, str] | None, device) -> TextEncoder:
    """The pipeline's text encoder, held to the joint model's text width (``tower.text_dim``) and rows."""
    model_name = os.path.basename(model_path)
    if text_encoder is not None and files is not None:
        raise ValueError("build_ovi_pipeline: give text_encoder or text_encoder_files, not both")
    if files is not None:
        weights, config_dir = files
        # On a GPU the encoder waits in CPU memory between prompts: the joint model and the VAE need the room.
        offload = "cpu" if torch.device(device or "cpu").type != "cpu" else None
        text_encoder = OviTextEncoder(umt5_loader(weights, config_dir, device=device, expected_dim=tower.text_dim,
                                                  max_length=tower.text_len, offload_device=offload),
                                      variant.prompt_style)
    if text_encoder is None:
        def not_configured() -> TextEncoder:
            raise FileNotFoundError("Ovi text encoder: none configured; build the pipeline with text_encoder_files="
                                    "find_text_encoder_files(...) or text_encoder=OviTextEncoder(umt5_loader(weights, "
                                    "config_dir), style)")
        text_encoder = OviTextEncoder(not_configured, variant.prompt_style)
    if isinstance(text_encoder, OviTextEncoder):
        text_encoder.fit_model(tower.text_dim, tower.text_len, model_name)
    elif text_encoder.dim != tower.text_dim:
        raise ValueError(f"text_encoder: {type(text_encoder).__name__} gives {text_encoder.dim}-wide embeddings; the "
                         f"joint model {model_name} takes {tower.text_dim}-wide text")
    return text_encoder


def _config_argument(path: str, variant: OviVariant) -> dict:
    """The variant's preset config for a full-size Ovi file, else what the file itself says (our files carry their
    config; smaller Ovi-layout models need it)."""
    from ..files.safetensors_io import read_header

    header, metadata = read_header(path)
    shape = header.get("video_model.patch_embedding.weight", {}).get("shape") or []
    preset = get_preset(variant.preset)
    if shape[:1] == [preset.video.dim] and CONFIG_METADATA_KEY not in metadata:
        return {"config": preset}
    return {}
