"""SyncAV Sigmas and SyncAV Noise: the SyncCFG Sampler's schedule and noise for SamplerCustomAdvanced.

With them, SamplerCustomAdvanced + SyncAV SyncCFG Guider + the euler sampler makes the clip the SyncCFG Sampler
node makes at the same seed, steps and shift; core's BasicScheduler and RandomNoise work too (other sigmas,
other noise).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..generation.generate import MAX_SEED, initial_noise
from ..generation.packed_latent import PackedAVLayout
from ..guidance.schedules import MAX_SAMPLING_STEPS, flow_sigmas
from . import comfy_bridge, comfy_types


class SyncAVSigmas(io.ComfyNode):
    """The noise levels the SyncCFG Sampler uses (Wan/Ovi's shifted grid), as SIGMAS."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVSigmas", display_name="SyncAV Sigmas", category=comfy_types.CATEGORY,
            description="The noise levels Wan and Ovi sample with (an even grid from 1, shifted, then 0), the ones "
                        "the SyncCFG Sampler uses, for SamplerCustomAdvanced.",
            inputs=[
                io.Int.Input("steps", default=25, min=1, max=MAX_SAMPLING_STEPS, tooltip="Denoising steps."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.1, round=0.01,
                               tooltip="Flow-matching timestep shift: > 1 spends more steps at high noise. 3 suits "
                                       "the embedded default, 5 Ovi."),
            ],
            outputs=[comfy_types.output(io.Sigmas, "sigmas", "steps + 1 noise levels, 1 down to 0.")])

    @classmethod
    def execute(cls, steps: int, shift: float) -> io.NodeOutput:
        return io.NodeOutput(flow_sigmas(int(steps), float(shift)))


class _ClipNoise:
    """ComfyUI's NOISE protocol: ``seed`` and ``generate_noise(latent)``; the noise ``initial_noise`` draws for the
    clip's two streams (the SyncCFG Sampler's), laid out like the latent."""

    def __init__(self, codecs, seed: int):
        self.codecs, self.seed = codecs, int(seed)

    def generate_noise(self, input_latent: dict):
        video, audio = comfy_types.split_av_latent(input_latent, self.codecs.pipeline)
        layout = PackedAVLayout(tuple(video.shape), tuple(audio.shape))
        noise_video, noise_audio = initial_noise(layout.video_shape, layout.audio_shape, self.seed)
        return comfy_types.av_latent(layout, noise_video, noise_audio, comfy_bridge.nested_tensor_class())["samples"]


class SyncAVNoise(io.ComfyNode):
    """The SyncCFG Sampler's noise for a seed, as NOISE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVNoise", display_name="SyncAV Noise", category=comfy_types.CATEGORY,
            description="Noise for an audio-video latent, drawn as the SyncCFG Sampler draws it for the same seed "
                        "(on the CPU: the same clip on every device).",
            inputs=[
                comfy_types.CODECS.Input("codecs", tooltip="The codecs from SyncAV Loader (latent layout)."),
                io.Int.Input("noise_seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the noise."),
            ],
            outputs=[comfy_types.output(io.Noise, "noise", "Noise for SamplerCustomAdvanced.")])

    @classmethod
    def execute(cls, codecs, noise_seed: int) -> io.NodeOutput:
        return io.NodeOutput(_ClipNoise(codecs, noise_seed))
