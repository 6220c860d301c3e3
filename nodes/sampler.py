"""SyncAV SyncCFG Sampler: joint video + audio denoising with text and synchronization guidance."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..generation.generate import MAX_SEED, initial_noise
from ..guidance.schedules import MAX_SAMPLING_STEPS, SOLVERS
from ..guidance.sync_cfg import DEFAULT_ANCHORS, SyncCFGGuidance, parse_block_list
from . import comfy_bridge, comfy_types

_scale = comfy_types.guidance_scale_input

log = logging.getLogger(__name__)



def _fraction(name: str, default: float, tooltip: str):
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


class SyncAVSampler(io.ComfyNode):
    """Samples video and audio together from noise with SyncCFG (text + synchronization guidance)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVSampler", display_name="SyncAV SyncCFG Sampler", category=comfy_types.CATEGORY,
            description="Generates video and its soundtrack in one joint denoising pass with SyncCFG: text "
                        "guidance per modality, plus sync guidance that pushes the video away from its prediction "
                        "beside muted audio and the audio away from its prediction beside a static video.",
            inputs=[
                io.Model.Input("model", tooltip="The joint model from SyncAV Loader."),
                comfy_types.CONDITIONING.Input("conditioning", tooltip="Prompts from SyncAV Text Encode."),
                comfy_types.LATENT.Input("latent", tooltip="The clip's shape (SyncAV Empty AV Latent); its content "
                                                            "is replaced by noise (full denoise)."),
                comfy_types.CODECS.Input("codecs", tooltip="The codecs from SyncAV Loader (SyncCFG's silence and "
                                                            "static-video anchors)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the noise (drawn on the CPU: the same clip on every device)."),
                io.Int.Input("steps", default=25, min=1, max=MAX_SAMPLING_STEPS,
                             tooltip="Denoising steps (each runs up to four guidance passes in one batch)."),
                io.Combo.Input("solver", options=list(SOLVERS), default=SOLVERS[0],
                               tooltip="unipc: second-order multistep (Wan/Ovi's); euler: first order."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.1, round=0.01,
                               tooltip="Flow-matching timestep shift: > 1 spends more steps at high noise. 3.0 "
                                       "suits the embedded default."),
                _scale("text_scale_video", 4.0, "Text guidance of the video (1 = off)."),
                _scale("text_scale_audio", 4.0, "Text guidance of the audio (1 = off)."),
                _scale("sync_scale_video", 2.0, "Sync guidance of the video: pushed away from what the model "
                                                "predicts beside muted audio (1 = off)."),
                _scale("sync_scale_audio", 2.0, "Sync guidance of the audio: pushed away from its sync anchor, see "
                                                "anchors (1 = off)."),
                _fraction("sync_start", 0.0, "Fraction of the steps where sync guidance starts."),
                _fraction("sync_end", 1.0, "Fraction of the steps where sync guidance ends (step i of n is "
                                           "guided when sync_start <= i/n < sync_end)."),
                comfy_types.slg_blocks_input(),
                comfy_types.anchors_input(optional=True),
            ],
            outputs=[comfy_types.output(comfy_types.LATENT, "latent",
                                         "The denoised audio-video latent (decode it with SyncAV Decode).")])

    @classmethod
    def execute(cls, model, conditioning, latent, codecs, seed: int, steps: int, solver: str, shift: float,
                text_scale_video: float, text_scale_audio: float, sync_scale_video: float,
                sync_scale_audio: float, sync_start: float, sync_end: float, slg_blocks: str = "",
                anchors: str = DEFAULT_ANCHORS.value) -> io.NodeOutput:
        from ..guidance.sampling import sample_av  # imports diffusers (schedulers): only when a clip is sampled

        joint = comfy_types.joint_model_of(model)
        video_shape, audio_shape = tuple(latent["video"].shape), tuple(latent["audio"].shape)
        codecs.pipeline.check_latent(video_shape, audio_shape)
        blocks = parse_block_list(slg_blocks, "slg_blocks", joint.config.num_blocks)
        guidance = SyncCFGGuidance(text_scale_video=text_scale_video, text_scale_audio=text_scale_audio,
                                   sync_scale_video=sync_scale_video, sync_scale_audio=sync_scale_audio,
                                   sync_interval=(sync_start, sync_end), slg_blocks=blocks, anchors=anchors)
        if blocks and not guidance.needs_negative:
            log.warning("SyncAV sampler: slg_blocks %s have no effect while both text scales are 1", blocks)
        noise_video, noise_audio = initial_noise(video_shape, audio_shape, seed)
        device = comfy_bridge.load_for_sampling(model)
        anchors = codecs.anchors(video_shape, audio_shape, device=device) if guidance.needs_anchors else None
        with comfy_bridge.StepProgress(steps, "SyncAV sampling", preview=codecs.video_codec.preview_frame) as progress:
            video, audio = sample_av(joint, noise_video.to(device), noise_audio.to(device),
                                     positive=conditioning.positive, negative=conditioning.negative,
                                     anchors=anchors, guidance=guidance, steps=int(steps), solver=solver,
                                     shift=float(shift), callback=progress)
        return io.NodeOutput({**latent, "video": video.float().cpu(), "audio": audio.float().cpu()})
