"""Text -> synchronized clip in one call: the composition the CLI uses and the nodes split into steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pipeline import AVPipeline
from .sampling import StepCallback, sample_av
from .sync_cfg import SyncCFGGuidance


MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass
class GeneratedClip:
    frames: torch.Tensor        # [B, F, H, W, 3] in 0..1
    waveform: torch.Tensor      # [B, C, T] in -1..1
    fps: float
    sample_rate_hz: int

    @property
    def seconds(self) -> float:
        return self.frames.shape[1] / self.fps


def initial_noise(video_shape, audio_shape, seed: int, device=None, dtype=torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal noise for both latents, drawn on the CPU so a seed gives the same clip on every device."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: expected an integer in 0..{MAX_SEED}, received {seed!r}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    video = torch.randn(video_shape, generator=generator)
    audio = torch.randn(audio_shape, generator=generator)
    return video.to(device, dtype), audio.to(device, dtype)


def generate_clip(pipeline: AVPipeline, video_prompt: str, audio_prompt: str | None = None, *,
                  seconds: float = 2.0, height_px: int = 32, width_px: int = 32, seed: int = 0, steps: int = 25,
                  solver: str = "unipc", shift: float = 3.0, guidance: SyncCFGGuidance | None = None,
                  video_negative: str = "", audio_negative: str = "", callback: StepCallback | None = None,
                  progress: bool = False) -> GeneratedClip:
    if not video_prompt or not video_prompt.strip():
        raise ValueError("video_prompt is empty: describe the scene to generate")
    audio_prompt = audio_prompt if audio_prompt and audio_prompt.strip() else video_prompt
    guidance = guidance or SyncCFGGuidance()
    model = pipeline.model
    device, dtype = next(model.parameters()).device, model.working_dtype()
    video_shape, audio_shape = pipeline.latent_shapes(seconds, height_px, width_px)
    texts = pipeline.encode_prompts([video_prompt, audio_prompt, video_negative, audio_negative])
    pick = lambda i: type(texts)(texts.embeddings[i:i + 1].to(device), texts.lengths[i:i + 1].to(device))  # noqa: E731
    positive, negative = (pick(0), pick(1)), (pick(2), pick(3))
    anchors = pipeline.anchors(video_shape, audio_shape, device=device, dtype=dtype)
    noise_video, noise_audio = initial_noise(video_shape, audio_shape, seed, device, dtype)
    video, audio = sample_av(model, noise_video, noise_audio, positive, negative if guidance.needs_negative else None,
                             anchors if guidance.needs_anchors else None, guidance, steps=steps, solver=solver,
                             shift=shift, callback=callback, progress=progress)
    frames, waveform = pipeline.decode(video, audio)
    fps, rate = pipeline.video_codec.fps, pipeline.audio_codec.sample_rate
    samples = round(frames.shape[1] / fps * rate)
    return GeneratedClip(frames=frames, waveform=waveform[..., :samples], fps=fps, sample_rate_hz=rate)
