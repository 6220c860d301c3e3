"""SyncAV SyncCFG Sampler: joint video + audio denoising with text and synchronization guidance."""

from __future__ import annotations

import logging

from ..generation.generate import MAX_SEED, initial_noise
from ..model.joint import JointModel
from ..guidance.sync_cfg import SyncCFGGuidance
from . import comfy_bridge
from .latent import check_av_latent, check_codecs
from .text_encode import SyncAVConditioning

log = logging.getLogger(__name__)

def joint_model_of(model) -> JointModel:
    """The JointModel inside a MODEL from SyncAV Loader; a clear error for any other MODEL."""
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(inner, JointModel):
        what = type(getattr(model, "model", model)).__name__
        raise ValueError(f"model: expected the MODEL output of SyncAV Loader (a joint audio-video model), "
                         f"received a {what}; image/video models from other loaders cannot be sampled here")
    return inner


def parse_slg_blocks(text: str, num_blocks: int) -> tuple[int, ...]:
    """``"1, 2"`` -> (1, 2); ``""`` -> (). Raises a ValueError naming slg_blocks on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"slg_blocks: expected a string of comma-separated block indices, received "
                         f"{type(text).__name__}")
    blocks = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        if not piece.isdigit():
            raise ValueError(f"slg_blocks: expected comma-separated block indices such as '1' or '0, 2' "
                             f"(this model has blocks 0..{num_blocks - 1}), received {text!r}")
        blocks.append(int(piece))
    bad = [b for b in blocks if b >= num_blocks]
    if bad:
        raise ValueError(f"slg_blocks: block indices {bad} out of range: this model has blocks "
                         f"0..{num_blocks - 1}, received {text!r}")
    return tuple(sorted(set(blocks)))


class SyncAVSampler:
    """Samples video and audio together from noise with SyncCFG (text + synchronization guidance)."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..guidance.schedules import SOLVERS  # imports diffusers: only when ComfyUI asks, not at startup

        def scale(default: float, tooltip: str):
            return ("FLOAT", {"default": default, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                              "tooltip": tooltip})

        def fraction(default: float, tooltip: str):
            return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tooltip})

        return {"required": {
            "model": ("MODEL", {"tooltip": "The joint model from SyncAV Loader."}),
            "conditioning": ("SYNCAV_CONDITIONING", {"tooltip": "Prompts from SyncAV Text Encode."}),
            "latent": ("SYNCAV_LATENT", {"tooltip": "The clip's shape (SyncAV Empty AV Latent); its content is "
                                                    "replaced by noise (full denoise)."}),
            "codecs": ("SYNCAV_CODECS", {"tooltip": "The codecs from SyncAV Loader (SyncCFG's silence and "
                                                    "static-video anchors)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                             "tooltip": "Seed of the noise (drawn on the CPU: the same clip on every device)."}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 1000,
                              "tooltip": "Denoising steps (each runs up to four guidance passes in one batch)."}),
            "solver": (list(SOLVERS), {"default": SOLVERS[0],
                                       "tooltip": "unipc: second-order multistep (Wan/Ovi's); euler: first order."}),
            "shift": ("FLOAT", {"default": 3.0, "min": 0.01, "max": 100.0, "step": 0.1, "round": 0.01,
                                "tooltip": "Flow-matching timestep shift: > 1 spends more steps at high noise. "
                                           "3.0 suits the embedded default."}),
            "text_scale_video": scale(4.0, "Text guidance of the video (1 = off)."),
            "text_scale_audio": scale(4.0, "Text guidance of the audio (1 = off)."),
            "sync_scale_video": scale(2.0, "Sync guidance of the video: pushes it away from what the model "
                                           "predicts beside muted audio (1 = off)."),
            "sync_scale_audio": scale(2.0, "Sync guidance of the audio: pushes it away from what the model "
                                           "predicts beside a static video (1 = off)."),
            "sync_start": fraction(0.0, "Fraction of the steps where sync guidance starts."),
            "sync_end": fraction(1.0, "Fraction of the steps where sync guidance ends (step i of n is guided "
                                      "when sync_start <= i/n < sync_end)."),
            "slg_blocks": ("STRING", {"default": "", "multiline": False,
                                      "tooltip": "Skip-layer guidance: comma-separated block indices (e.g. "
                                                 "'1, 2') skipped in the negative pass. Empty: off. Needs a text "
                                                 "scale other than 1."}),
        }}

    RETURN_TYPES = ("SYNCAV_LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The denoised audio-video latent (decode it with SyncAV Decode).",)
    FUNCTION = "sample"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Generates video and its soundtrack in one joint denoising pass with SyncCFG: text guidance per "
                   "modality, plus sync guidance that pushes the video away from its prediction beside muted "
                   "audio and the audio away from its prediction beside a static video.")

    def sample(self, model, conditioning, latent, codecs, seed: int, steps: int, solver: str, shift: float,
               text_scale_video: float, text_scale_audio: float, sync_scale_video: float,
               sync_scale_audio: float, sync_start: float, sync_end: float, slg_blocks: str = ""):
        joint = joint_model_of(model)
        codecs = check_codecs(codecs)
        latent = check_av_latent(latent)
        if not isinstance(conditioning, SyncAVConditioning):
            raise ValueError(f"conditioning: expected the output of SyncAV Text Encode, received "
                             f"{type(conditioning).__name__}")
        video_shape, audio_shape = tuple(latent["video"].shape), tuple(latent["audio"].shape)
        cv, ca = codecs.video_codec.latent_channels, codecs.audio_codec.latent_channels
        if video_shape[1] != cv or audio_shape[2] != ca:
            raise ValueError(f"latent: made for other codecs: {video_shape[1]} video / {audio_shape[2]} audio latent "
                             f"channels, these codecs use {cv} / {ca} (make it with SyncAV Empty AV Latent from the "
                             "same loader)")
        if not 0.0 <= sync_start <= sync_end <= 1.0:
            raise ValueError(f"sync_start / sync_end: expected 0 <= sync_start <= sync_end <= 1, received "
                             f"sync_start={sync_start}, sync_end={sync_end}")
        blocks = parse_slg_blocks(slg_blocks, joint.config.num_blocks)
        guidance = SyncCFGGuidance(text_scale_video=float(text_scale_video), text_scale_audio=float(text_scale_audio),
                                   sync_scale_video=float(sync_scale_video), sync_scale_audio=float(sync_scale_audio),
                                   sync_interval=(float(sync_start), float(sync_end)), slg_blocks=blocks)
        if blocks and not guidance.needs_negative:
            log.warning("SyncAV sampler: slg_blocks %s have no effect while both text scales are 1", blocks)

        from ..guidance.sampling import sample_av  # imports diffusers (schedulers): lazily, see INPUT_TYPES

        noise_video, noise_audio = initial_noise(video_shape, audio_shape, seed)
        device = comfy_bridge.load_for_sampling(model)
        anchors = codecs.anchors(video_shape, audio_shape, device=device) if guidance.needs_anchors else None
        with comfy_bridge.StepProgress(steps, "SyncAV sampling") as progress:
            video, audio = sample_av(joint, noise_video.to(device), noise_audio.to(device),
                                     positive=conditioning.positive, negative=conditioning.negative,
                                     anchors=anchors, guidance=guidance, steps=int(steps), solver=solver,
                                     shift=float(shift), callback=progress)
        out = dict(latent)
        out["video"] = video.float().cpu()
        out["audio"] = audio.float().cpu()
        return (out,)
