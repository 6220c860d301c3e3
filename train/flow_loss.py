"""Flow-matching loss of the joint model, with Harmony's cross-task synergy.

Flow matching (DESIGN.md): ``x_sigma = (1 - sigma) x0 + sigma noise``, target velocity ``noise - x0``.
Noise levels are drawn per modality from a logit-normal with a shift; a share of the samples gets one level for
both streams (what joint sampling sees), the rest independent ones.

Cross-task synergy (Harmony, 2025): besides the joint task, the batch trains
  * audio-driven video: the audio is given clean (sigma 0) and only the video is scored (weight ``lambda_video``),
  * video-driven audio: the video is given clean and only the audio is scored (weight ``lambda_audio``).
These are exactly the inputs of SyncCFG's driven passes, so training them keeps those passes in distribution.
To keep one forward per step, the tasks partition the batch rows instead of tripling it:
``loss = L_joint + lambda_video * L_audio_driven_video + lambda_audio * L_video_driven_audio``, each term the mean
over its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.batch import AVBatch
from ..model.joint import JointModel


@dataclass(frozen=True)
class FlowLossConfig:
    weight_video: float = 1.0
    weight_audio: float = 1.0
    lambda_video: float = 0.1           # audio-driven video task (Harmony's default)
    lambda_audio: float = 0.3           # video-driven audio task
    driven_fraction: float = 0.4        # share of the batch rows given to the two driven tasks (half each)
    shared_sigma_fraction: float = 0.5  # share of joint rows with one noise level for both streams
    logit_mean: float = 0.0             # sigma = shift(sigmoid(N(logit_mean, logit_std)))
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self):
        for name in ("driven_fraction", "shared_sigma_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FlowLossConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.logit_std <= 0 or self.shift <= 0:
            raise ValueError("FlowLossConfig: logit_std and shift must be > 0")


def sample_sigmas(batch: int, cfg: FlowLossConfig, generator: torch.Generator) -> torch.Tensor:
    """[B] noise levels: logit-normal, then ``shift * s / (1 + (shift - 1) * s)`` (shift > 1: noisier)."""
    s = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(batch, generator=generator))
    return cfg.shift * s / (1 + (cfg.shift - 1) * s)


def sample_task_sigmas(batch: int, cfg: FlowLossConfig, shared_sigma_fraction: float, driven_fraction: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_video [B], sigma_audio [B]) for rows [joint | audio-driven video | video-driven audio]
    (``task_rows``): a share of the rows gets one level for both streams, and the driving stream of a driven
    row is clean (sigma 0)."""
    n_joint, n_video_task, _ = task_rows(batch, driven_fraction)
    sigma_video = sample_sigmas(batch, cfg, generator)
    sigma_audio = sample_sigmas(batch, cfg, generator)
    shared = torch.rand(batch, generator=generator) < shared_sigma_fraction
    sigma_audio = torch.where(shared, sigma_video, sigma_audio)
    sigma_audio[n_joint:n_joint + n_video_task] = 0.0
    sigma_video[n_joint + n_video_task:] = 0.0
    return sigma_video, sigma_audio


def task_rows(batch: int, driven_fraction: float) -> tuple[int, int, int]:
    """Rows per task (joint, audio-driven video, video-driven audio); the driven tasks get half the share each."""
    driven = round(batch * driven_fraction)
    video_driven = driven // 2
    return batch - driven, driven - video_driven, video_driven


def flow_matching_error(velocity_pred: torch.Tensor, velocity_target: torch.Tensor, sigma_b: torch.Tensor,
                        model_config) -> torch.Tensor:
    """Per-sample mean squared error [B].

    Velocity-head models are scored on the velocity. x0-head models (their velocity is ``(x - x0_hat) / sigma``)
    are scored on the same error times ``max(sigma, floor)``, i.e. on x0: a velocity error would weight low noise
    levels by 1 / sigma^2 and drown the rest.
    """
    error = (velocity_pred.float() - velocity_target.float())
    if model_config.prediction == "x0":
        scale = sigma_b.float().clamp(min=model_config.x0_sigma_floor)
        error = error * scale.view(-1, *([1] * (error.dim() - 1)))
    return error.square().flatten(1).mean(dim=1)


def av_flow_loss(model: JointModel, batch: AVBatch, generator: torch.Generator, cfg: FlowLossConfig
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward of the joint model on a batch, partitioned into the three tasks. Returns (loss, logs)."""
    b = batch.video.shape[0]
    device = batch.video.device
    n_joint, n_video_task, n_audio_task = task_rows(b, cfg.driven_fraction)

    sigma_video, sigma_audio = sample_task_sigmas(b, cfg, cfg.shared_sigma_fraction, cfg.driven_fraction, generator)

    noise_video = torch.randn(batch.video.shape, generator=generator).to(device, batch.video.dtype)
    noise_audio = torch.randn(batch.audio.shape, generator=generator).to(device, batch.audio.dtype)
    sv, sa = sigma_video.to(device), sigma_audio.to(device)
    x_video = (1 - sv.view(-1, 1, 1, 1, 1)) * batch.video + sv.view(-1, 1, 1, 1, 1) * noise_video
    x_audio = (1 - sa.view(-1, 1, 1)) * batch.audio + sa.view(-1, 1, 1) * noise_audio

    pred_video, pred_audio = model(x_video, x_audio, sv, sa, batch.text_video, batch.text_audio,
                                   text_video_lengths=batch.text_video_lengths,
                                   text_audio_lengths=batch.text_audio_lengths)
    err_video = flow_matching_error(pred_video, noise_video - batch.video, sv, model.config)
    err_audio = flow_matching_error(pred_audio, noise_audio - batch.audio, sa, model.config)

    joint = slice(0, n_joint)
    video_task = slice(n_joint, n_joint + n_video_task)
    audio_task = slice(n_joint + n_video_task, b)
    zero = err_video.new_zeros(())
    mean = lambda e, rows: e[rows].mean() if e[rows].numel() else zero  # noqa: E731
    joint_video, joint_audio = mean(err_video, joint), mean(err_audio, joint)
    driven_video, driven_audio = mean(err_video, video_task), mean(err_audio, audio_task)
    loss = (cfg.weight_video * joint_video + cfg.weight_audio * joint_audio
            + cfg.lambda_video * driven_video + cfg.lambda_audio * driven_audio)
    logs = {name: float(value.detach()) for name, value in (
        ("loss", loss), ("video", joint_video), ("audio", joint_audio), ("audio_driven_video", driven_video),
        ("video_driven_audio", driven_audio))}
    return loss, logs
