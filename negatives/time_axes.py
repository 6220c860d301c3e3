"""Where time runs in a batch of video and audio and how many steps make a second, for the temporal-negative rules.

Two layouts (negatives/rules.py): latents, video ``[B, Cv, Fv, Hv, Wv]`` (time axis 2) and audio ``[B, La, Ca]``
(time axis 1) at the codec's latent rates (``TimeAxes.latent``); raw media, frames ``[B, F, H, W, 3]`` (time axis 1)
and waveform ``[B, C, T]`` (time axis 2) at the frame rate and sample rate (``TimeAxes.raw``). Seconds become steps
of a stream with that stream's rate, rounded to the nearest step (half away from zero).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["TimeAxes", "ClipLengths", "to_steps"]


@dataclass(frozen=True, eq=False)
class TimeAxes:
    """Where time runs in each stream and how many steps make a second.

    video_hz / audio_hz: steps per second along the time axis (latent frames per second and latents per second for
    latents; fps and sample rate for raw media). video_axis / audio_axis: the time dimension of the batched tensors.
    audio_silence: what the audio is at silence, written by ``audio_mute``: a number, or a tensor that broadcasts
    to one row of audio (a latent ``[Ca]``, ``[La, Ca]`` or the codec's ``[1, La, Ca]``; for a waveform 0).
    """

    video_hz: float
    audio_hz: float
    video_axis: int = 2
    audio_axis: int = 1
    audio_silence: float | torch.Tensor = 0.0

    def __post_init__(self):
        for name in ("video_hz", "audio_hz"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"TimeAxes.{name}: expected a positive rate in steps per second, got {value!r}")
        for name in ("video_axis", "audio_axis"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TimeAxes.{name}: expected the time dimension (>= 1, dimension 0 is the batch), "
                                 f"got {value!r}")

    @classmethod
    def latent(cls, video_codec, audio_codec, num_frames: int | None = None,
               audio_latents: int | None = None, silence: float | torch.Tensor | None = None) -> "TimeAxes":
        """Axes of latents ``[B, Cv, Fv, Hv, Wv]`` / ``[B, La, Ca]`` made by these codecs.

        num_frames: frames of the clip, for a causal video codec whose latent rate depends on it (else
        fps / temporal_stride). silence: the silence latent; by default the codec's own encoding of silence,
        ``[audio_latents, Ca]`` when the clip length is given (the edges may differ from the middle), else one
        middle latent ``[Ca]``.
        """
        if num_frames is not None:
            video_hz = video_codec.latent_hz(num_frames)
        else:
            video_hz = video_codec.fps / video_codec.temporal_stride
        if silence is None:
            if audio_latents is not None:
                silence = audio_codec.silence_latent(audio_latents)[0]
            else:
                silence = audio_codec.silence_latent(9)[0, 4]     # away from both edge windows
        return cls(float(video_hz), float(audio_codec.latents_per_second), 2, 1, silence)

    @classmethod
    def of_latents(cls, video_codec, audio_codec, video: torch.Tensor, audio: torch.Tensor) -> "TimeAxes":
        """Axes of this batch of latents, video ``[B, Cv, Fv, Hv, Wv]`` and audio ``[B, La, Ca]`` made by these codecs:
        the rates at this clip length and the codec's silence as long as the clip (what the DPO trainer uses)."""
        with torch.no_grad():
            return cls.latent(video_codec, audio_codec, num_frames=video_codec.num_frames(int(video.shape[2])),
                              audio_latents=int(audio.shape[1]))

    @classmethod
    def raw(cls, video_fps: float, sample_rate_hz: float) -> "TimeAxes":
        """Axes of frames ``[B, F, H, W, 3]`` at ``video_fps`` and waveforms ``[B, C, T]`` at ``sample_rate_hz``."""
        return cls(float(video_fps), float(sample_rate_hz), 1, 2, 0.0)

    def video_steps(self, seconds: float) -> int:
        """Seconds -> video steps, rounded to the nearest step (half away from zero)."""
        return _round_away(seconds * self.video_hz)

    def audio_steps(self, seconds: float) -> int:
        """Seconds -> audio steps, rounded to the nearest step (half away from zero)."""
        return _round_away(seconds * self.audio_hz)

    def lengths(self, video: torch.Tensor, audio: torch.Tensor) -> "ClipLengths":
        """The clip lengths of a batch (checks the layouts)."""
        _check_layout(video, audio, self)
        return ClipLengths(int(video.shape[self.video_axis]), int(audio.shape[self.audio_axis]), int(video.shape[0]))


class ClipLengths(NamedTuple):
    """Steps along each stream's time axis, and the batch size (a swap needs another row)."""

    video_steps: int
    audio_steps: int
    batch: int = 2


def _round_away(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def to_steps(values: torch.Tensor, hz: float) -> torch.Tensor:
    """[B] float64 seconds -> [B] int64 steps, nearest step, half away from zero (the same as ``_round_away``)."""
    return (torch.sign(values) * torch.floor(values.abs() * hz + 0.5)).long()


def _check_layout(video: torch.Tensor, audio: torch.Tensor, axes: TimeAxes) -> None:
    for name, x, axis in (("video", video, axes.video_axis), ("audio", audio, axes.audio_axis)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, received {type(x).__name__}")
        if x.ndim <= axis:
            raise ValueError(f"{name}: expected a batch with its time axis at dimension {axis} (TimeAxes."
                             f"{name}_axis), received shape {list(x.shape)}")
    if video.shape[0] != audio.shape[0]:
        raise ValueError(f"video and audio: expected the same batch size, received {video.shape[0]} and "
                         f"{audio.shape[0]}")
