"""SyncCFG as a denoiser of (latent, sigma): what a sampler of the k-diffusion family calls each step.

ComfyUI's samplers (euler, dpmpp_2m, uni_pc, ... through a guider) ask the model for the denoised sample x0 at a
noise level sigma, and choose the sigmas themselves; they know no step index. So here the sync interval is a
sigma range, and the output is x0 instead of a velocity. With flow matching (x_sigma = (1 - sigma) x0 +
sigma noise, velocity = noise - x0), x0 = x_sigma - sigma * velocity, exactly the quantity a Euler step with the
same sigmas turns back into the velocity, so a guider run with SyncAV's sigmas matches ``sample_av``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .passes import SyncCFGConditioning
from .sync_cfg import StepScales, SyncCFGGuidance, guided_velocity


@dataclass(frozen=True)
class SigmaKeyedGuidance:
    """SyncCFG settings for a sampler that chooses its own sigmas.

    guidance: scales, skip-layer blocks and anchors (its step-fraction ``sync_interval`` must stay (0, 1): the
        interval is ``sync_sigmas`` here).
    sync_sigmas: (low, high): sync guidance is on at the steps whose sigma lies in [low, high] (sigma runs from 1,
        pure noise, to 0). (0, 1): every step.
    """

    guidance: SyncCFGGuidance
    sync_sigmas: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        if not isinstance(self.guidance, SyncCFGGuidance):
            raise ValueError(f"guidance: expected a SyncCFGGuidance, got {type(self.guidance).__name__}")
        if self.guidance.sync_interval != (0.0, 1.0):
            raise ValueError("a sigma-keyed guidance takes its sync interval as sync_sigmas; leave the guidance's "
                             f"step-fraction sync_interval at (0, 1), got {self.guidance.sync_interval}")
        low, high = (float(v) for v in self.sync_sigmas)
        if not 0.0 <= low <= high:
            raise ValueError(f"sync_sigmas (sync_sigma_min, sync_sigma_max): expected 0 <= min <= max, got "
                             f"{tuple(self.sync_sigmas)}")
        object.__setattr__(self, "sync_sigmas", (low, high))

    def scales_at_sigma(self, sigma: float) -> StepScales:
        low, high = self.sync_sigmas
        return self.guidance.scales(low <= float(sigma) <= high)


def guided_denoise(model, video: torch.Tensor, audio: torch.Tensor, sigma: torch.Tensor,
                   cond: SyncCFGConditioning, guidance: SigmaKeyedGuidance, batched: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The SyncCFG-guided x0 of both streams at one noise level.

    video [B, Cv, F, H, W], audio [B, La, Ca] at noise level sigma [B] (one level per row, shared by the streams,
    as a single-latent sampler gives it); cond at batch B. Returns (x0_video, x0_audio) in float32 or wider.
    """
    if sigma.dim() != 1 or sigma.shape[0] != video.shape[0]:
        raise ValueError(f"sigma must be [B={video.shape[0]}], got {list(sigma.shape)}")
    # One level per sampler step: the rows share it (ComfyUI gives sigma * ones(B)).
    scales = guidance.scales_at_sigma(float(sigma[0]))
    sigma = sigma.to(torch.float32)
    velocity_video, velocity_audio = guided_velocity(model, video, audio, sigma, sigma, cond, scales,
                                                     batched=batched)
    dtype = velocity_video.dtype
    x0_video = video.to(dtype) - sigma.to(dtype)[:, None, None, None, None] * velocity_video
    x0_audio = audio.to(dtype) - sigma.to(dtype)[:, None, None] * velocity_audio
    return x0_video, x0_audio
