"""SyncAV SyncCFG Guider: SyncCFG as a GUIDER for ComfyUI's SamplerCustomAdvanced (any sampler, any sigmas).

The guider is ComfyUI's pattern for new guidance (core's CFGGuider, the PerpNeg guider): SamplerCustomAdvanced
hands it noise, a latent, a sampler and sigmas, and the sampler asks it for the denoised latent at each sigma.
This module only translates: the latent ComfyUI carries (a packed tensor, or current ComfyUI's NestedTensor of
(video, audio)) to the two streams and back, and the sampler's (x, sigma) to ``guidance.denoise.guided_denoise``.
"""

from __future__ import annotations

import functools

from comfy_api.latest import io

from ..generation.packed_latent import PackedAVLayout
from ..guidance.denoise import SigmaKeyedGuidance, guided_denoise
from ..guidance.passes import SyncCFGConditioning
from ..guidance.sync_cfg import SyncCFGGuidance, parse_block_list
from . import comfy_bridge, comfy_types

_scale = comfy_types.guidance_scale_input


@functools.lru_cache(maxsize=1)
def _guider_class():
    """The CFGGuider subclass, built on first use (``comfy.samplers`` exists only inside a ComfyUI server)."""
    cfg_guider = comfy_bridge.comfy_module("comfy.samplers").CFGGuider

    class SyncCFGGuider(cfg_guider):
        """Runs every pass of a SyncCFG step as one batched forward of the joint model and returns x0."""

        def __init__(self, model_patcher, codecs, conditioning, guidance: SigmaKeyedGuidance):
            super().__init__(model_patcher)
            self.codecs, self.conditioning, self.guidance = codecs, conditioning, guidance
            self.layout: PackedAVLayout | None = None
            self.prepared: SyncCFGConditioning | None = None
            self.denoise_calls = 0      # sampler requests (one per model evaluation of the sampler)
            self.model_forwards = 0     # joint-model forwards they took (one each: every pass in one batch)

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                   seed=None):
            nested = getattr(latent_image, "is_nested", False)
            if nested:   # current ComfyUI: pack (video, audio) here, so the base class sees one plain tensor
                video, audio = latent_image.unbind()
                self.layout = PackedAVLayout(tuple(video.shape), tuple(audio.shape))
                latent_image, noise = self.layout.pack(video, audio), self.layout.pack(*noise.unbind())
                if denoise_mask is not None:
                    raise ValueError("SyncAV SyncCFG Guider: noise masks are not supported on audio-video latents")
            else:
                self.layout = self.codecs.pipeline.packed_layout(tuple(latent_image.shape))
            self.prepared = None
            out = super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
            if nested:
                return comfy_bridge.nested_tensor_class()(list(self.layout.unpack(out)))
            return out

        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
            video, audio = self.layout.unpack(x)
            if self.prepared is None:
                self.prepared = self._conditioning(video, audio)
            self.denoise_calls += 1
            model = self.inner_model.diffusion_model     # core's TorchCompileModel may have compiled it

            def forward(*args, **kwargs):
                self.model_forwards += 1
                return model(*args, **kwargs)

            x0_video, x0_audio = guided_denoise(forward, video, audio, timestep, self.prepared, self.guidance)
            return self.layout.pack(x0_video.to(x.dtype), x0_audio.to(x.dtype))

        def _conditioning(self, video, audio) -> SyncCFGConditioning:
            guidance = self.guidance.guidance
            anchors = (self.codecs.anchors(video.shape, audio.shape, device=video.device, dtype=video.dtype)
                       if guidance.needs_anchors else (None, None))
            negative = self.conditioning.negative if guidance.needs_negative else None
            return SyncCFGConditioning.prepare(video.shape[0], self.conditioning.positive, negative, *anchors,
                                               slg_blocks=guidance.slg_blocks, device=video.device, dtype=video.dtype)

    return SyncCFGGuider



class SyncAVGuider(io.ComfyNode):
    """SyncCFG as a GUIDER: wire it into SamplerCustomAdvanced with any sampler and sigmas."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVSyncCFGGuider", display_name="SyncAV SyncCFG Guider", category=comfy_types.CATEGORY,
            description="SyncCFG for ComfyUI's own sampling: wire the GUIDER into SamplerCustomAdvanced with any "
                        "sampler (euler, dpmpp_2m, uni_pc ...) and sigmas (BasicScheduler, SyncAV Sigmas ...); the "
                        "latent comes from SyncAV Empty AV Latent. All passes of a step run as one batched forward.",
            inputs=[
                io.Model.Input("model", tooltip="The joint model from SyncAV Loader (LoRAs and model patches "
                                                 "applied)."),
                comfy_types.CONDITIONING.Input("conditioning", tooltip="Prompts from SyncAV Text Encode."),
                comfy_types.CODECS.Input("codecs", tooltip="The codecs from SyncAV Loader (latent layout, sync "
                                                            "anchors)."),
                _scale("text_scale_video", 4.0, "Text guidance of the video (1 = off)."),
                _scale("text_scale_audio", 4.0, "Text guidance of the audio (1 = off)."),
                _scale("sync_scale_video", 2.0, "Sync guidance of the video: pushed away from its sync anchor "
                                                "(1 = off)."),
                _scale("sync_scale_audio", 2.0, "Sync guidance of the audio: pushed away from its sync anchor "
                                                "(1 = off)."),
                io.Float.Input("sync_sigma_max", default=1.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Sync guidance is on at the steps whose sigma lies in [sync_sigma_min, "
                                       "sync_sigma_max] (sigma runs from 1, pure noise, down to 0)."),
                io.Float.Input("sync_sigma_min", default=0.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Lower end of the sync interval (see sync_sigma_max)."),
                comfy_types.anchors_input(),
                comfy_types.slg_blocks_input(),
            ],
            outputs=[comfy_types.output(io.Guider, "guider", "SyncCFG for SamplerCustomAdvanced.")])

    @classmethod
    def execute(cls, model, conditioning, codecs, text_scale_video: float, text_scale_audio: float,
                sync_scale_video: float, sync_scale_audio: float, sync_sigma_max: float, sync_sigma_min: float,
                anchors: str, slg_blocks: str = "") -> io.NodeOutput:
        joint = comfy_types.joint_model_of(model)
        blocks = parse_block_list(slg_blocks, "slg_blocks", joint.config.num_blocks)
        guidance = SigmaKeyedGuidance(
            SyncCFGGuidance(text_scale_video=text_scale_video, text_scale_audio=text_scale_audio,
                            sync_scale_video=sync_scale_video, sync_scale_audio=sync_scale_audio,
                            slg_blocks=blocks, anchors=anchors),
            sync_sigmas=(sync_sigma_min, sync_sigma_max))
        return io.NodeOutput(_guider_class()(model, codecs, conditioning, guidance))
