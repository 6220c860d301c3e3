"""SyncAV Empty AV Latent, and the SYNCAV_LATENT value it makes.

SYNCAV_LATENT is a dict: ``{"video": [B, Cv, Fv, Hv, Wv], "audio": [B, La, Ca], "fps": float, "sample_rate": int}``
(latents float32 on the CPU between nodes; fps and sample_rate are the codecs' rates, so the clip's seconds are
known downstream).
"""

from __future__ import annotations

import torch

from ..codecs.embedded import TINY_AUDIO_SAMPLE_RATE_HZ, TINY_VIDEO_FPS
from .loader import EMBEDDED_PIXEL_MULTIPLE, SyncAVCodecs


def check_codecs(codecs) -> SyncAVCodecs:
    if not isinstance(codecs, SyncAVCodecs):
        raise ValueError(f"codecs: expected the codecs output of SyncAV Loader, received {type(codecs).__name__}")
    return codecs


def check_av_latent(latent, name: str = "latent") -> dict:
    """Validate a SYNCAV_LATENT dict; raises a ValueError naming the input otherwise."""
    if not isinstance(latent, dict) or "video" not in latent or "audio" not in latent:
        got = sorted(latent) if isinstance(latent, dict) else type(latent).__name__
        raise ValueError(f"{name}: expected a SyncAV latent (dict with 'video' and 'audio', from SyncAV Empty AV "
                         f"Latent or a SyncAV sampler), received {got}")
    video, audio = latent["video"], latent["audio"]
    if not isinstance(video, torch.Tensor) or video.dim() != 5:
        raise ValueError(f"{name}: 'video' must be a tensor [B, Cv, F, H, W], received "
                         f"{list(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
    if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
        raise ValueError(f"{name}: 'audio' must be a tensor [B, La, Ca], received "
                         f"{list(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__}")
    if video.shape[0] != audio.shape[0]:
        raise ValueError(f"{name}: video and audio batch sizes differ: {video.shape[0]} vs {audio.shape[0]}")
    return latent


class SyncAVEmptyLatent:
    """An empty (all-zero) audio-video latent of a given duration and frame size."""

    @classmethod
    def INPUT_TYPES(cls):
        m = EMBEDDED_PIXEL_MULTIPLE
        return {"required": {
            "codecs": ("SYNCAV_CODECS", {"tooltip": "The codecs from SyncAV Loader: they set fps and latent sizes."}),
            "seconds": ("FLOAT", {
                "default": 2.0, "min": 0.1, "max": 60.0, "step": 0.1,
                "tooltip": "Duration of the clip. Frames are rounded to what the video codec takes; the audio "
                           "covers exactly the same time."}),
            "width": ("INT", {"default": 32, "min": m, "max": 4096, "step": m,
                              "tooltip": f"Frame width in pixels, a multiple of {m} for the embedded default."}),
            "height": ("INT", {"default": 32, "min": m, "max": 4096, "step": m,
                               "tooltip": f"Frame height in pixels, a multiple of {m} for the embedded default."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Number of clips sampled together."}),
        }}

    RETURN_TYPES = ("SYNCAV_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("An empty audio-video latent for a SyncAV sampler.",)
    FUNCTION = "generate"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Makes an empty audio-video latent. The frame rate and sample rate are the codecs' (embedded "
                   f"default: {TINY_VIDEO_FPS:g} fps video, {TINY_AUDIO_SAMPLE_RATE_HZ} Hz audio), so the "
                   "number of frames is seconds x fps.")

    def generate(self, codecs, seconds: float, width: int, height: int, batch_size: int = 1):
        codecs = check_codecs(codecs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, received {batch_size!r}")
        # The pipeline's error names seconds or height/width and the multiple it needs.
        video_shape, audio_shape = codecs.latent_shapes(float(seconds), int(height), int(width), batch_size)
        latent = {"video": torch.zeros(video_shape), "audio": torch.zeros(audio_shape),
                  "fps": codecs.fps, "sample_rate": codecs.sample_rate}
        return (latent,)
