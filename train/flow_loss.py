"""Flow-matching loss of the joint model, with Harmony's cross-task synergy.

The noise levels, the noising and the task of each row come from ``noise_mix`` (one ``NoiseMix``); this module scores
them: ``loss = w_video L_joint_video + w_audio L_joint_audio + lambda_video L_audio_driven_video
+ lambda_audio L_video_driven_audio``, each term the mean over its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.batch import AVBatch
from ..model.joint import JointModel
from .distributed import RowShard, logged_mean, row_mean
from .noise_mix import HARMONY_MIX, NoiseMix, draw_noise, noised, task_rows


@dataclass(frozen=True)
class FlowLossConfig:
    weight_video: float = 1.0           # weights of the joint rows' per-modality terms
    weight_audio: float = 1.0
    noise: NoiseMix = HARMONY_MIX       # noise levels and task mix (default: Harmony's, 40% driven rows)


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


def av_flow_loss(model: JointModel, batch: AVBatch, generator: torch.Generator, cfg: FlowLossConfig,
                 shard: RowShard | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward of the joint model on a batch, partitioned into the three tasks. Returns (loss, logs).

    shard: compute only these rows of the batch (one process of several): the noise of the whole batch is drawn,
    the model runs on the shard's rows, and the loss is this rank's share of the whole batch's (the shares add up
    to it); its logs are of its own rows."""
    b = batch.video.shape[0]
    n_joint, n_video_task, _ = task_rows(b, cfg.noise.driven_fraction)
    draw = draw_noise(batch, cfg.noise, generator)
    shard = shard or RowShard(0, b, b)
    if not shard.whole:
        batch, draw = batch.take(shard.rows), draw.take(shard.rows)
    sv, sa = draw.sigma_video, draw.sigma_audio
    x_video, target_video = noised(batch.video, draw.noise_video, sv)
    x_audio, target_audio = noised(batch.audio, draw.noise_audio, sa)

    pred_video, pred_audio = model(x_video, x_audio, sv, sa, batch.text_video, batch.text_audio,
                                   text_video_lengths=batch.text_video_lengths,
                                   text_audio_lengths=batch.text_audio_lengths)
    err_video = flow_matching_error(pred_video, target_video, sv, model.config)
    err_audio = flow_matching_error(pred_audio, target_audio, sa, model.config)

    row = torch.arange(shard.start, shard.stop, device=err_video.device)       # the rows' places in the batch
    joint = row < n_joint
    video_task = (row >= n_joint) & (row < n_joint + n_video_task)
    audio_task = row >= n_joint + n_video_task
    n_audio_task = b - n_joint - n_video_task
    joint_video, joint_audio = row_mean(err_video, joint, n_joint, shard), row_mean(err_audio, joint, n_joint, shard)
    driven_video = row_mean(err_video, video_task, n_video_task, shard)
    driven_audio = row_mean(err_audio, audio_task, n_audio_task, shard)
    loss = (cfg.weight_video * joint_video + cfg.weight_audio * joint_audio
            + cfg.noise.lambda_video * driven_video + cfg.noise.lambda_audio * driven_audio)
    logs = {"loss": float(loss.detach())}
    for name, share, mask, count in (("video", joint_video, joint, n_joint), ("audio", joint_audio, joint, n_joint),
                                     ("audio_driven_video", driven_video, video_task, n_video_task),
                                     ("video_driven_audio", driven_audio, audio_task, n_audio_task)):
        logs[name] = logged_mean(share, mask, count, shard)
    return loss, logs
