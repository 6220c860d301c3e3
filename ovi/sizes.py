"""Clip geometry of Ovi's models: frames and latent lengths from seconds, frame sizes from a pixel area.

Ovi's codecs: the Wan2.2 VAE (24 fps, causal first frame, 4 frames per latent frame, 16 px per latent pixel)
and the MMAudio 16 kHz VAE (512 samples per latent, 31.25 latents per second). Ovi fixes the latent lengths per
model (``video_latent_length`` / ``audio_latent_length``): 5 s models 31 video and 157 audio latents, the 10 s
model 61 and 314. Those are 121 and 241 frames, i.e. 30 and 60 latent steps of 4 frames after the first frame,
5 s and 10 s of motion; both pair 157 audio latents with every 5 s of it (31.4 per second, a little more than
the audio codec's own 31.25 Hz). The functions here reproduce those numbers and extend the same rule to other
durations.

Frame sizes: Ovi rescales a requested height x width to the model's pixel area keeping its aspect ratio, then
rounds each side to the nearest multiple of 32 (the VAE's 16 px times the transformer's 2x2 patch).
"""

from __future__ import annotations

import math

from ..model.config import audio_rope_scale

OVI_FPS = 24.0
OVI_SHIFT = 5.0                  # the flow-matching shift Ovi samples with (its inference config)
OVI_TEMPORAL_STRIDE = 4          # frames per latent frame after the causal first frame (Wan2.2 VAE)
OVI_SPATIAL_STRIDE = 16          # pixels per latent pixel (Wan2.2 VAE)
OVI_PIXEL_MULTIPLE = 32          # VAE stride x the transformer's 2x2 patch
OVI_AUDIO_LATENTS_PER_5_SECONDS = 157   # what every Ovi model pairs with 5 s (30 latent steps) of video
OVI_AUDIO_LATENT_HZ = 16000 / 512       # the MMAudio 16 kHz VAE's own rate: 31.25 latents per second


def frames_for_seconds(seconds: float, fps: float = OVI_FPS, temporal_stride: int = OVI_TEMPORAL_STRIDE) -> int:
    """Frames a causal video VAE takes for about ``seconds``: ``1 + stride * k`` with ``k = round(seconds * fps /
    stride)`` (at least 1). 5 s at 24 fps -> 121, 10 s -> 241."""
    if not seconds > 0 or not fps > 0 or temporal_stride < 1:
        raise ValueError(f"frames_for_seconds: seconds and fps must be > 0 and the stride >= 1, got "
                         f"seconds={seconds}, fps={fps}, stride={temporal_stride}")
    steps = max(1, round(seconds * fps / temporal_stride))
    return 1 + temporal_stride * steps


def video_latent_frames(frames: int, temporal_stride: int = OVI_TEMPORAL_STRIDE) -> int:
    """Latent frames of ``frames`` frames through a causal VAE (121 -> 31, 241 -> 61)."""
    if frames < 1 or (frames - 1) % temporal_stride:
        raise ValueError(f"video_latent_frames: a causal VAE with temporal stride {temporal_stride} takes "
                         f"1 + {temporal_stride}k frames, got {frames}")
    return 1 + (frames - 1) // temporal_stride


def audio_latent_length(video_latent_frames_: int, fps: float = OVI_FPS,
                        temporal_stride: int = OVI_TEMPORAL_STRIDE) -> int:
    """Audio latents Ovi pairs with a video of ``video_latent_frames_`` latent frames (31 -> 157, 61 -> 314).

    The motion after the first frame lasts ``(Fv - 1) * stride / fps`` seconds; Ovi gives it 157 audio latents per
    5 s, rounded to the nearest latent (at least 1).
    """
    if video_latent_frames_ < 1:
        raise ValueError(f"audio_latent_length: expected at least 1 video latent frame, got {video_latent_frames_}")
    motion_seconds = (video_latent_frames_ - 1) * temporal_stride / fps
    return max(1, round(motion_seconds * OVI_AUDIO_LATENTS_PER_5_SECONDS / 5.0))


def latent_lengths(seconds: float, fps: float = OVI_FPS, temporal_stride: int = OVI_TEMPORAL_STRIDE
                   ) -> tuple[int, int, int]:
    """(frames, video latent frames, audio latents) of a clip of about ``seconds``: 5 s -> (121, 31, 157),
    10 s -> (241, 61, 314)."""
    frames = frames_for_seconds(seconds, fps, temporal_stride)
    latents = video_latent_frames(frames, temporal_stride)
    return frames, latents, audio_latent_length(latents, fps, temporal_stride)


def _nearest_multiple(x: int, multiple: int) -> int:
    # Python's round() (half to even), the rounding Ovi applies: 720 px -> 22.5 x 32 -> 704 px.
    return max(multiple, int(round(x / multiple)) * multiple)


def snap_size_to_area(height_px: int, width_px: int, area_px: int, multiple: int = OVI_PIXEL_MULTIPLE
                      ) -> tuple[int, int]:
    """(height, width) with the aspect ratio of ``height_px x width_px``, about ``area_px`` pixels, each side
    the nearest multiple of ``multiple`` (Ovi's sizing): (720, 720, 720*720) -> (704, 704),
    (704, 1280, 960*960) -> (704, 1280)."""
    if height_px <= 0 or width_px <= 0 or area_px <= 0 or multiple <= 0:
        raise ValueError(f"snap_size_to_area: sizes must be positive, got {height_px}x{width_px}, area {area_px}, "
                         f"multiple {multiple}")
    scale = math.sqrt(area_px / (height_px * width_px))
    height, width = int(round(height_px * scale)), int(round(width_px * scale))
    return _nearest_multiple(height, multiple), _nearest_multiple(width, multiple)


def size_for_aspect(aspect: str | float, area_px: int, multiple: int = OVI_PIXEL_MULTIPLE) -> tuple[int, int]:
    """(height, width) for an aspect ratio ``"H:W"`` (e.g. ``"9:16"``) or a height/width ratio, at about
    ``area_px`` pixels: ``("9:16", 960*960)`` -> (704, 1280)."""
    if isinstance(aspect, str):
        try:
            h, w = (float(part) for part in aspect.split(":"))
        except ValueError:
            raise ValueError(f"aspect: expected 'H:W' such as '9:16', got {aspect!r}") from None
    else:
        h, w = float(aspect), 1.0
    if not (h > 0 and w > 0):
        raise ValueError(f"aspect: both sides must be positive, got {aspect!r}")
    # Any rectangle of that ratio works: snap_size_to_area rescales it to the area.
    return snap_size_to_area(max(1, round(1000 * h)), max(1, round(1000 * w)), area_px, multiple)


def rope_scale_from_codecs(video_codec, audio_codec, frames: int = 121) -> float:
    """The audio tower's RoPE scale that puts both towers on one time axis, from the codecs' rates and the clip
    length the model was trained on (Wan2.2 + MMAudio 16 kHz at 121 frames: 0.19676, Ovi's value)."""
    return audio_rope_scale(video_codec.fps, frames, video_codec.temporal_stride, audio_codec.latents_per_second)
