"""Configs and presets of the joint audio-video DiT.

A joint model is two Wan2.2-style towers (video, audio) of equal depth whose blocks attend to each other.
The Ovi presets reproduce Ovi's public checkpoints exactly (key names, shapes, RoPE); ``tiny`` is the
embedded default that runs on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


def audio_rope_scale(video_fps: float, video_frames: int, video_temporal_stride: int,
                     audio_latents_per_second: float) -> float:
    """Scale of the audio tower's temporal RoPE positions so that one second spans the same angle in both towers.

    The video tower counts positions in latent frames, the audio tower in audio latents; multiplying audio
    positions by ``video_latent_hz / audio_latent_hz`` puts both on the video's time axis. A causal video VAE
    turns ``video_frames`` frames (``1 + k * stride``) into ``1 + (frames - 1) / stride`` latent frames over
    ``frames / fps`` seconds, so the video latent rate depends on the clip geometry the model was trained on.

    Ovi: 24 fps, 121 frames, stride 4 -> 31 latents over 5.0417 s = 6.149 Hz; audio 31.25 Hz -> 0.19676.
    """
    if video_fps <= 0 or video_frames <= 0 or video_temporal_stride <= 0 or audio_latents_per_second <= 0:
        raise ValueError("audio_rope_scale: every rate and count must be positive, got "
                         f"fps={video_fps}, frames={video_frames}, stride={video_temporal_stride}, "
                         f"audio_latents_per_second={audio_latents_per_second}")
    video_latent_frames = 1 + (video_frames - 1) // video_temporal_stride
    video_latent_hz = video_latent_frames / (video_frames / video_fps)
    return video_latent_hz / audio_latents_per_second


@dataclass(frozen=True)
class TowerConfig:
    """One Wan2.2-style tower. Field names follow Wan's where they exist."""

    modality: str                       # "video" or "audio"
    in_channels: int                    # latent channels in (video: Cv, audio: Ca)
    out_channels: int
    patch_size: tuple[int, ...]         # video (pt, ph, pw); audio (1,) - Ovi's audio tower does not patchify
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    freq_dim: int = 256                 # width of the sinusoidal noise-level embedding
    text_dim: int = 4096                # width of the text encoder's output
    text_len: int = 512                 # prompts are zero-padded to this many rows
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_scale: float = 1.0             # multiplies temporal RoPE positions (audio: see audio_rope_scale)
    audio_embed_kernel: int = 7         # audio tower's conv patch embedding (Ovi: kernel 7, MMAudio-style ConvMLP)

    def __post_init__(self):
        if self.modality not in ("video", "audio"):
            raise ValueError(f"TowerConfig.modality must be 'video' or 'audio', got {self.modality!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"TowerConfig: dim {self.dim} must split into {self.num_heads} heads of even width")
        expected = 3 if self.modality == "video" else 1
        if len(self.patch_size) != expected:
            raise ValueError(f"TowerConfig: a {self.modality} tower takes a patch_size of {expected} numbers, "
                             f"got {self.patch_size}")
        if self.modality == "audio" and tuple(self.patch_size) != (1,):
            raise ValueError("TowerConfig: the audio tower does not patchify (patch_size must be (1,))")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class JointConfig:
    video: TowerConfig
    audio: TowerConfig
    name: str = "custom"
    timestep_scale: float = 1000.0      # Wan/Ovi embed t = 1000 * sigma
    prediction: str = "velocity"        # "velocity": network predicts noise - x0; "x0": it predicts x0 (see DESIGN)
    x0_sigma_floor: float = 0.05        # x0 head: velocity = (x_sigma - x0_hat) / max(sigma, floor)
    mask_text_padding: bool = False     # Ovi attends all text_len rows, padding included
    # Cross-modal interaction. None: Ovi's global fusion (every token attends every token of the other tower).
    # A number w: Harmony's global-local decoupled interaction (model/interaction.py): each token attends only
    # the other tower's tokens whose centres lie within w video latent frames of its own on the shared RoPE time
    # axis, plus a global path (the other tower's mean token). Same parameters either way.
    cross_modal_window_frames: float | None = None

    def __post_init__(self):
        if self.video.num_layers != self.audio.num_layers:
            raise ValueError("JointConfig: both towers need the same number of blocks (one fusion block pairs "
                             f"them), got video {self.video.num_layers} and audio {self.audio.num_layers}")
        if self.video.dim != self.audio.dim or self.video.num_heads != self.audio.num_heads:
            raise ValueError("JointConfig: cross-modal attention needs equal width and heads in both towers")
        if self.prediction not in ("velocity", "x0"):
            raise ValueError(f"JointConfig.prediction must be 'velocity' or 'x0', got {self.prediction!r}")
        window = self.cross_modal_window_frames
        if window is not None and (isinstance(window, bool) or not isinstance(window, (int, float))
                                   or not 0.5 <= window < float("inf")):
            raise ValueError("JointConfig.cross_modal_window_frames must be None (global fusion) or a finite number "
                             f">= 0.5 video latent frames, got {window!r}")

    @property
    def num_blocks(self) -> int:
        return self.video.num_layers

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "JointConfig":
        towers = {}
        for key in ("video", "audio"):
            t = dict(d[key])
            t["patch_size"] = tuple(t["patch_size"])
            towers[key] = TowerConfig(**t)
        rest = {k: v for k, v in d.items() if k not in ("video", "audio")}
        return JointConfig(video=towers["video"], audio=towers["audio"], **rest)

    @staticmethod
    def from_json(text: str) -> "JointConfig":
        return JointConfig.from_dict(json.loads(text))

    def replace(self, **changes) -> "JointConfig":
        return dataclasses.replace(self, **changes)

    def with_num_blocks(self, num_blocks: int) -> "JointConfig":
        """This network with ``num_blocks`` fusion blocks (both towers' ``num_layers``)."""
        return self.replace(video=dataclasses.replace(self.video, num_layers=num_blocks),
                            audio=dataclasses.replace(self.audio, num_layers=num_blocks))


# Ovi's geometry: Wan2.2 VAE (4x temporal, 16x spatial, 48 ch) at 24 fps, MMAudio 16 kHz VAE (20 ch, 31.25 Hz).
OVI_ROPE_SCALE = audio_rope_scale(video_fps=24, video_frames=121, video_temporal_stride=4,
                                  audio_latents_per_second=31.25)


def _ovi(name: str) -> JointConfig:
    common = dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, freq_dim=256, text_dim=4096,
                  text_len=512, qk_norm=True, cross_attn_norm=True, eps=1e-6)
    return JointConfig(
        name=name,
        video=TowerConfig(modality="video", in_channels=48, out_channels=48, patch_size=(1, 2, 2), **common),
        audio=TowerConfig(modality="audio", in_channels=20, out_channels=20, patch_size=(1,),
                          rope_scale=OVI_ROPE_SCALE, **common),
    )


# The embedded default: small enough to train and sample on a CPU. Latent widths match the embedded codec
# (codecs/embedded.py); the text width matches the embedded text encoder (text/embedded.py).
TINY_VIDEO_CHANNELS = 16
TINY_AUDIO_CHANNELS = 32
TINY_TEXT_DIM = 64


def _tiny() -> JointConfig:
    common = dict(dim=128, ffn_dim=512, num_heads=4, num_layers=4, freq_dim=64, text_dim=TINY_TEXT_DIM,
                  text_len=32, qk_norm=True, cross_attn_norm=True, eps=1e-6, audio_embed_kernel=3)
    return JointConfig(
        name="tiny",
        video=TowerConfig(modality="video", in_channels=TINY_VIDEO_CHANNELS, out_channels=TINY_VIDEO_CHANNELS,
                          patch_size=(1, 2, 2), **common),
        # rope_scale is set from the embedded codec's rates when the embedded pipeline is built.
        audio=TowerConfig(modality="audio", in_channels=TINY_AUDIO_CHANNELS, out_channels=TINY_AUDIO_CHANNELS,
                          patch_size=(1,), **common),
        prediction="x0",
    )


PRESETS: dict[str, JointConfig] = {
    "tiny": _tiny(),
    "ovi-720-5s": _ovi("ovi-720-5s"),
    "ovi-960-5s": _ovi("ovi-960-5s"),
    "ovi-960-10s": _ovi("ovi-960-10s"),
}


def get_preset(name: str) -> JointConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
