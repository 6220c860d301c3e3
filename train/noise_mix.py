"""What the training losses draw per step: noise levels, the task of each row, the noise, and the noised latents.

Flow matching (DESIGN.md): ``x_sigma = (1 - sigma) x0 + sigma noise``, target velocity ``noise - x0`` (``noised``).
Noise levels are drawn per modality from a logit-normal with a shift; a share of the joint rows gets one level for
both streams (what joint sampling sees), the rest independent ones.

Cross-task synergy (Harmony, 2025): besides the joint task, a share of the rows trains
  * audio-driven video: the audio is given clean (sigma 0) and only the video is scored (weight ``lambda_video``),
  * video-driven audio: the video is given clean and only the audio is scored (weight ``lambda_audio``).
These are exactly the inputs of SyncCFG's driven passes, so training them keeps those passes in distribution.
To keep one forward per step, the tasks partition the batch rows instead of tripling it (``task_rows``).

``NoiseMix`` holds these settings once; the flow-matching loss (``flow_loss.FlowLossConfig.noise``) and the DPO loss
(``dpo_loss.DPOConfig.noise``) each hold one, so an SFT baseline and a DPO run share theirs as one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..model.batch import AVBatch
from .value_rules import fraction, positive


@dataclass(frozen=True)
class NoiseMix:
    logit_mean: float = 0.0             # sigma = shift(sigmoid(N(logit_mean, logit_std)))
    logit_std: float = 1.0
    shift: float = 1.0                  # > 1: noisier (``sample_sigmas``)
    shared_sigma_fraction: float = 0.5  # share of joint rows with one noise level for both streams
    driven_fraction: float = 0.0        # share of rows given to the two driven tasks, half each (0: joint rows only)
    lambda_video: float = 0.1           # weight of audio-driven video rows (Harmony's default)
    lambda_audio: float = 0.3           # weight of video-driven audio rows

    def __post_init__(self):
        positive("NoiseMix.logit_std", self.logit_std)
        positive("NoiseMix.shift", self.shift)
        fraction("NoiseMix.shared_sigma_fraction", self.shared_sigma_fraction)
        fraction("NoiseMix.driven_fraction", self.driven_fraction)


# Harmony's recipe: 40% of the rows on the two driven tasks (the embedded default's flow-matching training).
HARMONY_MIX = NoiseMix(driven_fraction=0.4)


def sample_sigmas(batch: int, mix: NoiseMix, generator: torch.Generator) -> torch.Tensor:
    """[B] noise levels: logit-normal, then ``shift * s / (1 + (shift - 1) * s)`` (shift > 1: noisier)."""
    s = torch.sigmoid(mix.logit_mean + mix.logit_std * torch.randn(batch, generator=generator))
    return mix.shift * s / (1 + (mix.shift - 1) * s)


def task_rows(batch: int, driven_fraction: float) -> tuple[int, int, int]:
    """Rows per task (joint, audio-driven video, video-driven audio); the driven tasks get half the share each."""
    driven = round(batch * driven_fraction)
    video_driven = driven // 2
    return batch - driven, driven - video_driven, video_driven


def sample_task_sigmas(batch: int, mix: NoiseMix, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_video [B], sigma_audio [B]) for rows [joint | audio-driven video | video-driven audio]
    (``task_rows``): a share of the rows gets one level for both streams, and the driving stream of a driven
    row is clean (sigma 0)."""
    n_joint, n_video_task, _ = task_rows(batch, mix.driven_fraction)
    sigma_video = sample_sigmas(batch, mix, generator)
    sigma_audio = sample_sigmas(batch, mix, generator)
    shared = torch.rand(batch, generator=generator) < mix.shared_sigma_fraction
    sigma_audio = torch.where(shared, sigma_video, sigma_audio)
    sigma_audio[n_joint:n_joint + n_video_task] = 0.0
    sigma_video[n_joint + n_video_task:] = 0.0
    return sigma_video, sigma_audio


class NoiseDraw(NamedTuple):
    """What one step draws for a batch (DPO: shared by a row's winner and loser)."""

    sigma_video: torch.Tensor   # [B]
    sigma_audio: torch.Tensor   # [B]
    noise_video: torch.Tensor   # [B, Cv, F, H, W]
    noise_audio: torch.Tensor   # [B, La, Ca]

    def take(self, rows: slice) -> "NoiseDraw":
        """The draws of the rows ``rows``."""
        return NoiseDraw(*(t[rows] for t in self))


def draw_noise(batch: AVBatch, mix: NoiseMix, generator: torch.Generator) -> NoiseDraw:
    """One noise level per modality per row (``sample_task_sigmas``), then one noise per row, in that order from
    ``generator`` (on the CPU, so a run draws the same on any device); moved to the batch's device and dtype."""
    sigma_video, sigma_audio = sample_task_sigmas(batch.video.shape[0], mix, generator)
    noise_video = torch.randn(batch.video.shape, generator=generator)
    noise_audio = torch.randn(batch.audio.shape, generator=generator)
    device = batch.video.device
    return NoiseDraw(sigma_video.to(device), sigma_audio.to(device), noise_video.to(device, batch.video.dtype),
                     noise_audio.to(device, batch.audio.dtype))


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow matching's model input and target: (``(1 - sigma) x0 + sigma noise``, velocity ``noise - x0``).

    x0, noise: [B, ...] clean latent and noise of the same shape; sigma: [B] noise levels in [0, 1].
    """
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise, noise - x0
