"""Codec interfaces: pixels/waveforms <-> latents, with the rates that tie latent positions to seconds.

Conventions (DESIGN.md): frames are ``[B, F, H, W, 3]`` floats in 0..1, waveforms ``[B, C, T]`` floats in -1..1;
video latents are channels-first ``[B, Cv, Fv, Hv, Wv]``, audio latents time-major ``[B, La, Ca]``.
The anchors SyncCFG guides against (the latent of silence, the latent of a static video) are encodings made
by the codec itself, so they are in-distribution for whatever model was trained with that codec.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class VideoCodec(ABC):
    fps: float
    latent_channels: int
    temporal_stride: int          # frames per latent frame
    spatial_stride: int           # pixels per latent row/column
    causal_first_frame: bool      # True: F = 1 + stride * (Fv - 1) (Wan VAE); False: F = stride * Fv

    def latent_frames(self, num_frames: int) -> int:
        if self.causal_first_frame:
            if (num_frames - 1) % self.temporal_stride:
                raise ValueError(f"{type(self).__name__}: takes 1 + {self.temporal_stride}k frames, got {num_frames}")
            return 1 + (num_frames - 1) // self.temporal_stride
        if num_frames % self.temporal_stride:
            raise ValueError(f"{type(self).__name__}: takes a multiple of {self.temporal_stride} frames, "
                             f"got {num_frames}")
        return num_frames // self.temporal_stride

    def num_frames(self, latent_frames: int) -> int:
        if self.causal_first_frame:
            return 1 + self.temporal_stride * (latent_frames - 1)
        return self.temporal_stride * latent_frames

    def latent_hz(self, num_frames: int) -> float:
        """Latent frames per second for a clip of ``num_frames`` frames."""
        return self.latent_frames(num_frames) / (num_frames / self.fps)

    @abstractmethod
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, F, H, W, 3] in 0..1 -> latent [B, Cv, Fv, Hv, Wv]."""

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, Cv, Fv, Hv, Wv] -> frames [B, F, H, W, 3] in 0..1."""

    def preview_rgb_factors(self) -> tuple[list[list[float]], list[float]] | None:
        """(factors [Cv][3], bias [3]): a linear map from one latent pixel to its mean colour in -1..1, for cheap
        previews while sampling (ComfyUI's ``latent_rgb_factors``); None when the codec has none."""
        return None

    def preview_frame(self, latent: torch.Tensor) -> torch.Tensor | None:
        """latent [B, Cv, Fv, Hv, Wv] -> the middle latent frame of the first clip as colours [Hv, Wv, 3] in 0..1
        (one pixel per latent pixel, through ``preview_rgb_factors``); None when the codec has no preview colours."""
        rgb = self.preview_rgb_factors()
        if rgb is None:
            return None
        factors = torch.tensor(rgb[0], dtype=torch.float32)
        bias = torch.tensor(rgb[1] if rgb[1] is not None else [0.0, 0.0, 0.0], dtype=torch.float32)
        frame = latent[0, :, latent.shape[2] // 2].detach().float().cpu()               # [Cv, Hv, Wv]
        return ((frame.permute(1, 2, 0) @ factors + bias + 1) / 2).clamp(0, 1)

    def static_latent(self, latent_frames: int, height_px: int, width_px: int, grey_level: float = 0.5,
                      device=None, dtype=torch.float32) -> torch.Tensor:
        """Latent [1, Cv, Fv, Hv, Wv] of a frozen uniform frame: the 'static video' anchor of SyncCFG."""
        frames = torch.full((1, self.num_frames(latent_frames), height_px, width_px, 3), grey_level,
                            device=device, dtype=torch.float32)
        return self.encode(frames).to(dtype)


class AudioCodec(ABC):
    sample_rate: int
    audio_channels: int           # channels of the waveform the codec takes (1 = mono)
    latent_channels: int
    samples_per_latent: int       # hop between consecutive latents, in samples

    @property
    def latents_per_second(self) -> float:
        return self.sample_rate / self.samples_per_latent

    def latent_length(self, num_samples: int) -> int:
        return -(-num_samples // self.samples_per_latent)

    def num_samples(self, latent_length: int) -> int:
        return latent_length * self.samples_per_latent

    @abstractmethod
    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform [B, C, T] -> latent [B, La, Ca]."""

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, La, Ca] -> waveform [B, C, T]."""

    def silence_latent(self, latent_length: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """Latent [1, La, Ca] of digital silence: the 'muted audio' anchor of SyncCFG."""
        wave = torch.zeros(1, self.audio_channels, self.num_samples(latent_length), device=device)
        return self.encode(wave)[:, :latent_length].to(dtype)
