"""SyncAV Empty AV Latent, and the SYNCAV_LATENT value it makes (and the same clip as a ComfyUI LATENT).

SYNCAV_LATENT is a dict: ``{"video": [B, Cv, Fv, Hv, Wv], "audio": [B, La, Ca], "fps": float, "sample_rate": int}``
(latents float32 on the CPU between nodes; fps and sample_rate are the codecs' rates, so the clip's seconds are
known downstream).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..codecs.embedded import TINY_AUDIO_SAMPLE_RATE_HZ, TINY_VIDEO_FPS
from ..generation.pipeline import EMBEDDED_CLIP, EMBEDDED_PIXEL_MULTIPLE
from ..generation.packed_latent import PackedAVLayout
from . import comfy_bridge, comfy_types


class SyncAVEmptyLatent(io.ComfyNode):
    """An empty (all-zero) audio-video latent of a given duration and frame size."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        m = EMBEDDED_PIXEL_MULTIPLE
        return io.Schema(
            node_id="SyncAVEmptyLatent", display_name="SyncAV Empty AV Latent", category=comfy_types.CATEGORY,
            description="Makes an empty audio-video latent. The frame rate and sample rate are the codecs' "
                        f"(embedded default: {TINY_VIDEO_FPS:g} fps video, {TINY_AUDIO_SAMPLE_RATE_HZ} Hz audio), "
                        "so the number of frames is seconds x fps.",
            inputs=[
                comfy_types.CODECS.Input("codecs", tooltip="The codecs from SyncAV Loader: they set fps and latent "
                                                            "sizes."),
                io.Float.Input("seconds", default=EMBEDDED_CLIP.seconds, min=0.1, max=60.0, step=0.1,
                               tooltip="Duration of the clip. Frames are rounded to what the video codec takes; the "
                                       "audio covers exactly the same time."),
                io.Int.Input("width", default=EMBEDDED_CLIP.width_px, min=m, max=4096, step=m,
                             tooltip=f"Frame width in pixels, a multiple of {m} for the embedded default."),
                io.Int.Input("height", default=EMBEDDED_CLIP.height_px, min=m, max=4096, step=m,
                             tooltip=f"Frame height in pixels, a multiple of {m} for the embedded default."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of clips sampled together."),
            ],
            outputs=[comfy_types.output(comfy_types.LATENT, "latent",
                                         "An empty audio-video latent for the SyncAV SyncCFG Sampler."),
                     comfy_types.output(io.Latent, "samples",
                                        "The same clip as a ComfyUI LATENT, for SamplerCustomAdvanced with the SyncAV "
                                        "SyncCFG Guider (both streams in one latent).")])

    @classmethod
    def execute(cls, codecs, seconds: float, width: int, height: int, batch_size: int = 1) -> io.NodeOutput:
        # The pipeline's error names seconds or height/width and the multiple it needs.
        video_shape, audio_shape = codecs.latent_shapes(float(seconds), int(height), int(width), int(batch_size))
        video, audio = torch.zeros(video_shape), torch.zeros(audio_shape)
        latent = {"video": video, "audio": audio, "fps": codecs.fps, "sample_rate": codecs.sample_rate}
        samples = comfy_types.av_latent(PackedAVLayout(video_shape, audio_shape), video, audio,
                                        comfy_bridge.nested_tensor_class())
        return io.NodeOutput(latent, samples)
