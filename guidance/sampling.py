"""Joint audio-video sampling: flow-matching ODE solve with SyncCFG guidance.

``sample_av`` turns a pair of noise latents into a (video, audio) latent pair. Each step evaluates the guided
velocity (guidance/sync_cfg.py: up to four passes of the joint model in one batched forward) and advances each
modality with its own solver state (guidance/schedules.py). Plain PyTorch: no ComfyUI imports.

Interruption: ``callback(step_index, total_steps, video_latent, audio_latent)`` is called after every step; any
exception it raises propagates out of ``sample_av`` and ends sampling at once. Inside ComfyUI the node's callback
updates the ProgressBar and calls ``comfy.model_management.throw_exception_if_processing_interrupted()``, which
is how the "Cancel" button stops a run.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .schedules import FlowSolver, check_schedule_args
from .sync_cfg import SyncCFGConditioning, SyncCFGGuidance, guided_velocity
from ..text.interface import EncodedText

# callback(step_index, total_steps, video_latent [B, Cv, F, H, W], audio_latent [B, La, Ca]) -> None
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def _describe(x) -> str:
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_text_pair(name: str, pair, batch: int) -> None:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(t, EncodedText) for t in pair):
        raise ValueError(f"sample_av: {name} must be a pair (EncodedText for video, EncodedText for audio), "
                         f"got {type(pair).__name__}")
    for tower, t in zip(("video", "audio"), pair):
        e = t.embeddings
        if e.dim() != 3 or e.shape[0] not in (1, batch):
            raise ValueError(f"sample_av: {name} {tower} text embeddings must be [1 or B={batch}, L, D], "
                             f"got {list(e.shape)}")
        if tuple(t.lengths.shape) != (e.shape[0],):
            raise ValueError(f"sample_av: {name} {tower} text lengths must be [{e.shape[0]}], "
                             f"got {list(t.lengths.shape)}")


def _check_anchor(name: str, anchor, noise: torch.Tensor, what: str) -> None:
    if not isinstance(anchor, torch.Tensor):
        raise ValueError(f"sample_av: anchors {name} must be a tensor ({what}), got {type(anchor).__name__}")
    if anchor.dim() != noise.dim() or anchor.shape[0] not in (1, noise.shape[0]) \
            or tuple(anchor.shape[1:]) != tuple(noise.shape[1:]):
        dims = ", ".join(map(str, noise.shape[1:]))
        raise ValueError(f"sample_av: anchors {name} ({what}) must be [1 or B, {dims}] like the noise, "
                         f"got {list(anchor.shape)}")


def _check_inputs(model, noise_video, noise_audio, positive, negative, anchors, guidance, steps, solver, shift,
                  callback) -> None:
    if not callable(model):
        raise ValueError(f"sample_av: model must be callable (a JointModel), got {type(model).__name__}")
    if not isinstance(noise_video, torch.Tensor) or noise_video.dim() != 5:
        raise ValueError(f"sample_av: noise_video must be a tensor [B, Cv, F, H, W], got {_describe(noise_video)}")
    if not isinstance(noise_audio, torch.Tensor) or noise_audio.dim() != 3:
        raise ValueError(f"sample_av: noise_audio must be a tensor [B, La, Ca], got {_describe(noise_audio)}")
    batch = noise_video.shape[0]
    if noise_audio.shape[0] != batch or batch < 1:
        raise ValueError(f"sample_av: noise_video and noise_audio must share a batch size >= 1, got {batch} and "
                         f"{noise_audio.shape[0]}")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "video"):
        if noise_video.shape[1] != config.video.in_channels:
            raise ValueError(f"sample_av: noise_video has {noise_video.shape[1]} channels, the model takes "
                             f"{config.video.in_channels}")
        if noise_audio.shape[2] != config.audio.in_channels:
            raise ValueError(f"sample_av: noise_audio has {noise_audio.shape[2]} channels, the model takes "
                             f"{config.audio.in_channels}")
    if not isinstance(guidance, SyncCFGGuidance):
        raise ValueError(f"sample_av: guidance must be a SyncCFGGuidance, got {type(guidance).__name__}")
    check_schedule_args(solver, steps, shift)
    if callback is not None and not callable(callback):
        raise ValueError(f"sample_av: callback must be callable or None, got {type(callback).__name__}")

    _check_text_pair("positive", positive, batch)
    if guidance.needs_negative:
        if negative is None:
            raise ValueError(
                "sample_av: negative (the negative texts for video and audio) is required when a text scale is not "
                f"1 (text_scale_video={guidance.text_scale_video}, text_scale_audio={guidance.text_scale_audio}); "
                "encode negative prompts (an empty prompt is the usual one) or set both text scales to 1")
    if negative is not None:
        _check_text_pair("negative", negative, batch)
    if guidance.needs_anchors:
        if anchors is None:
            raise ValueError(
                "sample_av: anchors (static_video_latent, silence_latent) are required when a sync scale is not 1 "
                f"(sync_scale_video={guidance.sync_scale_video}, sync_scale_audio={guidance.sync_scale_audio}); "
                "encode them with the codecs (VideoCodec.static_latent, AudioCodec.silence_latent) or set both "
                "sync scales to 1")
    if anchors is not None:
        if not isinstance(anchors, (tuple, list)) or len(anchors) != 2:
            raise ValueError("sample_av: anchors must be a pair (static_video_latent, silence_latent), got "
                             f"{type(anchors).__name__}")
        _check_anchor("static_video_latent", anchors[0], noise_video, "clean latent of a static video")
        _check_anchor("silence_latent", anchors[1], noise_audio, "clean latent of silence")
    if guidance.slg_blocks and config is not None and hasattr(config, "num_blocks"):
        bad = [b for b in guidance.slg_blocks if b >= config.num_blocks]
        if bad:
            raise ValueError(f"sample_av: guidance.slg_blocks {bad} out of range: the model has blocks "
                             f"0..{config.num_blocks - 1}")


def sample_av(model, noise_video: torch.Tensor, noise_audio: torch.Tensor,
              positive: tuple[EncodedText, EncodedText],
              negative: Optional[tuple[EncodedText, EncodedText]] = None,
              anchors: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
              guidance: Optional[SyncCFGGuidance] = None, steps: int = 50, solver: str = "unipc",
              shift: float = 5.0, callback: Optional[StepCallback] = None, batched: bool = True,
              progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a (video, audio) latent pair from noise with SyncCFG.

    Args:
        model: the joint model (``JointModel`` or anything with its call contract), returning velocities
            ``noise - x0`` for both streams. It is only called, never put in train/eval mode.
        noise_video: [B, Cv, F, H, W] standard normal noise: the video latent at sigma = 1.
        noise_audio: [B, La, Ca] standard normal noise: the audio latent at sigma = 1.
        positive: (EncodedText for the video tower, EncodedText for the audio tower), batch 1 or B.
        negative: the same for the negative prompts; required when a text scale is not 1.
        anchors: (static_video_latent [1 or B, Cv, F, H, W], silence_latent [1 or B, La, Ca]), clean codec
            latents; required when a sync scale is not 1.
        guidance: scales, sync interval and skip-layer blocks (default: every scale 1, a plain joint pass).
        steps: model evaluations (each up to four batched passes); solver: "unipc" or "euler"; shift: the
            flow-matching timestep shift (> 1 spends more steps at high noise).
        callback: ``callback(step_index, total_steps, video_latent, audio_latent)`` after each step, with the
            latents at the next noise level; for progress bars and previews. An exception raised inside it
            stops sampling and propagates to the caller (that is how interruption works).
        batched: True runs all passes of a step as one forward; False runs them one by one (same math, less
            peak memory, slower).
        progress: show a tqdm bar (for scripts; ComfyUI reports progress through the callback).

    Returns:
        (video latent [B, Cv, F, H, W], audio latent [B, La, Ca]) at sigma = 0, in the dtype of the noise.
    """
    guidance = SyncCFGGuidance() if guidance is None else guidance
    _check_inputs(model, noise_video, noise_audio, positive, negative, anchors, guidance, steps, solver, shift,
                  callback)
    batch, device = noise_video.shape[0], noise_video.device
    steps = int(steps)

    with torch.no_grad():
        cond = SyncCFGConditioning.prepare(
            batch, positive, negative=negative,
            static_video=None if anchors is None else anchors[0], silence=None if anchors is None else anchors[1],
            slg_blocks=guidance.slg_blocks, device=device, dtype=noise_video.dtype)
        # One solver per modality: UniPC's multistep history must not mix the two streams.
        video_solver = FlowSolver(solver, steps, shift, device=device)
        audio_solver = FlowSolver(solver, steps, shift, device=device)
        video, audio = noise_video, noise_audio

        indices: Sequence[int] = range(steps)
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices, desc="SyncAV sampling", total=steps)
        for i in indices:
            scales = guidance.scales_at(i, steps)
            sigma_video = torch.full((batch,), video_solver.sigma(i), device=device, dtype=torch.float32)
            sigma_audio = torch.full((batch,), audio_solver.sigma(i), device=device, dtype=torch.float32)
            velocity_video, velocity_audio = guided_velocity(model, video, audio, sigma_video, sigma_audio, cond,
                                                             scales, batched=batched)
            video = video_solver.step(velocity_video.to(video.dtype), video, i)
            audio = audio_solver.step(velocity_audio.to(audio.dtype), audio, i)
            if callback is not None:
                callback(i, steps, video, audio)
    return video, audio
