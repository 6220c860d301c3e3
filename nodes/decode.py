"""SyncAV Decode: SYNCAV_LATENT (or a LATENT) -> IMAGE frames + AUDIO + fps, ready for native CreateVideo -> SaveVideo."""

from __future__ import annotations

from comfy_api.latest import io

from ..generation.generate import latents_to_clip
from . import comfy_types


class SyncAVDecode(io.ComfyNode):
    """Decodes an audio-video latent into frames, a waveform and the frame rate."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVDecode", display_name="SyncAV Decode", category=comfy_types.CATEGORY,
            description="Decodes a SyncAV latent into video frames (IMAGE), the soundtrack (AUDIO) and the frame "
                        "rate; Create Video (images, fps, audio) then Save Video writes an mp4. A batch of clips "
                        "plays one after another.",
            inputs=[comfy_types.CODECS.Input("codecs", tooltip="The codecs from SyncAV Loader."),
                    comfy_types.LATENT.Input("latent", optional=True,
                                             tooltip="The latent from the SyncAV SyncCFG Sampler."),
                    io.Latent.Input("samples", optional=True,
                                    tooltip="Or a LATENT from SamplerCustomAdvanced (SyncAV SyncCFG Guider); "
                                            "connect one of the two.")],
            outputs=[
                comfy_types.output(io.Image, "images", "Every frame of every clip, clip after clip ([clips x "
                                                        "frames, H, W, 3])."),
                comfy_types.output(io.Audio, "audio", "The soundtrack ([clips, channels, samples]), exactly as "
                                                       "long as the frames last."),
                comfy_types.output(io.Float, "fps", "Frames per second (wire it into Create Video's fps)."),
            ])

    @classmethod
    def execute(cls, codecs, latent=None, samples=None) -> io.NodeOutput:
        if (latent is None) == (samples is None):
            raise ValueError("SyncAV Decode: connect exactly one of 'latent' (SyncAV SyncCFG Sampler) and 'samples' "
                             "(SamplerCustomAdvanced)")
        video, audio = ((latent["video"], latent["audio"]) if latent is not None
                        else comfy_types.split_av_latent(samples, codecs.pipeline))
        clip = latents_to_clip(codecs.pipeline, video, audio)
        frames = clip.frames                                              # [B, F, H, W, 3]
        images = frames.reshape(-1, *frames.shape[2:]).contiguous()       # [B * F, H, W, 3]
        audio = {"waveform": clip.waveform.contiguous(), "sample_rate": int(clip.sample_rate_hz)}
        return io.NodeOutput(images, audio, float(clip.fps))
