"""Diffusion-DPO in flow-matching form, per modality, for the joint audio-video model.

Diffusion-DPO (Wallace et al., 2023) replaces DPO's log-likelihood ratios by denoising errors: with the winner x_w and
the loser x_l noised with the SAME noise at the SAME noise level,

    loss = -log sigmoid(-beta/2 * ((err_w - ref_err_w) - (err_l - ref_err_l)))

where ``err`` is the policy's and ``ref_err`` the frozen reference's per-sample error. The policy is pushed to fit the
winner better than the reference does, and the loser worse; beta bounds how far it may drift (the KL weight). Here
the error is the flow-matching error of ``flow_loss.flow_matching_error`` (velocity MSE, or x0 MSE for x0-head models),
a mean over elements, scored per modality with its own beta.

For synchronization (SyncDPO) the loser is the winner with its temporal structure broken, so a pair often differs
in one stream only. Sharing the noise makes the errors of the untouched stream differ only through what it reads
from the other stream, i.e. exactly through the cross-modal attention.

``dpo_loss`` is the loss alone (a plain function of error tensors, TRL style); ``av_dpo_loss`` runs the model on a
batch of pairs: the reference is the same network with its LoRA switched off (``model.lora.disabled_adapters``), so no
second copy of the weights exists. Noise levels, noise and Harmony's cross-task rows (a stream given clean at sigma 0,
the inputs of SyncCFG's driven passes) come from ``noise_mix``, as for the flow-matching loss.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.lora import disabled_adapters
from ..model.batch import AVBatch
from .distributed import RowShard, logged_mean, row_mean
from .flow_loss import flow_matching_error
from .noise_mix import NoiseDraw, NoiseMix, draw_noise, noised, task_rows
from .value_rules import positive_or_none

# Default betas per error convention. Diffusion-DPO used beta = 5000 (2000-5000) on the epsilon MSE, a mean over
# elements. For one x0 error d at noise level s: eps-MSE = ((1-s)/s)^2 d^2, velocity-MSE = d^2/s^2, x0-MSE = d^2
# (flow_matching_error scores x0-head models on x0 for s above the floor). Velocity errors are thus (1-s)^-2 times
# the epsilon errors, ~4x at the median s = 0.5 of the logit-normal, so 5000 / ~4-5 -> 1000. x0 errors are s^2 times
# velocity errors, E[s^2] ~ 0.3 under logit-normal(0, 1), so the same strength needs ~3x that -> 3000. The loss
# saturates once beta/2 * |margin| ~ 4, i.e. at margins of ~0.008 (velocity) / ~0.003 (x0) in MSE units: a small
# fraction of a trained model's error, which is what keeps the policy close to the reference.
DEFAULT_BETA = {"velocity": 1000.0, "x0": 3000.0}
MODALITIES = ("video", "audio")


@dataclass(frozen=True)
class DPOConfig:
    beta_video: float | None = None     # None: DEFAULT_BETA for the model's error convention (velocity / x0 head)
    beta_audio: float | None = None
    weight_video: float = 1.0           # weights of the per-modality DPO terms in the sum
    weight_audio: float = 1.0
    sft_weight: float = 0.0             # + sft_weight * flow-matching error of the policy on the winners
    noise: NoiseMix = field(default_factory=NoiseMix)   # noise levels and task mix (default: joint rows only)

    def __post_init__(self):
        for name in ("beta_video", "beta_audio"):
            positive_or_none(f"DPOConfig.{name}", getattr(self, name), "the model's default")
        if isinstance(self.noise, dict):
            object.__setattr__(self, "noise", NoiseMix(**self.noise))

    def betas(self, model_config) -> dict[str, float]:
        default = DEFAULT_BETA[model_config.prediction]
        return {"video": default if self.beta_video is None else float(self.beta_video),
                "audio": default if self.beta_audio is None else float(self.beta_audio)}

    def to_dict(self) -> dict:
        """JSON form, flat: the noise mix's fields beside the betas, as run files have always held them."""
        flat = {k: v for k, v in asdict(self).items() if k != "noise"}
        return {**flat, **asdict(self.noise)}

    @classmethod
    def from_dict(cls, values: dict) -> "DPOConfig":
        """From ``to_dict``'s flat form (run files) or with a nested ``noise`` dict."""
        mix_fields = {f.name for f in fields(NoiseMix)}
        mix = {k: v for k, v in values.items() if k in mix_fields}
        own = {k: v for k, v in values.items() if k not in mix_fields}
        return cls(**own, **({"noise": NoiseMix(**mix)} if mix else {}))


# ------------------------------------------------------------------------------------------------ the loss

def preference_margin(err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor
                      ) -> torch.Tensor:
    """[B] ``(err_w - ref_err_w) - (err_l - ref_err_l)``: negative where the policy prefers the winner more than the
    reference does."""
    return (err_w - ref_err_w) - (err_l - ref_err_l)


def implicit_accuracy(margin: torch.Tensor) -> float:
    """Share of rows with margin < 0; an exact tie (identical winner and loser, or policy == reference) counts as
    half a row, the coin flip it is. NaN for no rows."""
    if margin.numel() == 0:
        return math.nan
    return float(((margin < 0).float() + 0.5 * (margin == 0).float()).mean())


def dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO loss per row.

    err_w, err_l: [B] policy errors on the winner / loser; ref_err_w, ref_err_l: [B] the reference's, all computed
    with the same noise and noise level for a row's winner and loser. Returns (loss [B], logs) with
    ``loss = -logsigmoid(-beta/2 * margin)``, margin = ``preference_margin``; logs: ``accuracy`` (implicit),
    ``reward_margin`` (mean of -beta/2 * margin: the implicit reward of the winner minus the loser's, i.e. the
    sigmoid's argument), ``winner_reward``, ``loser_reward``.
    """
    margin = preference_margin(err_w, err_l, ref_err_w, ref_err_l)
    logits = -0.5 * beta * margin                        # implicit reward of the winner minus the loser's
    loss = -F.logsigmoid(logits)
    with torch.no_grad():
        # -beta/2 * (err - ref_err) plays DPO's beta * log(pi / pi_ref): the implicit reward of one sample.
        winner_reward, loser_reward = -0.5 * beta * (err_w - ref_err_w), -0.5 * beta * (err_l - ref_err_l)
        average = lambda x: float(x.mean()) if x.numel() else math.nan  # noqa: E731
        logs = {"accuracy": implicit_accuracy(margin.detach()), "reward_margin": average(logits),
                "winner_reward": average(winner_reward), "loser_reward": average(loser_reward)}
    return loss, logs


# ------------------------------------------------------------------------------------------------ the model side

class PairErrors(NamedTuple):
    """Per-row flow-matching errors [B] of one network on the winners and the losers."""

    video_winner: torch.Tensor
    video_loser: torch.Tensor
    audio_winner: torch.Tensor
    audio_loser: torch.Tensor


def _check_pair(winner: AVBatch, loser: AVBatch) -> None:
    for stream in ("video", "audio"):
        w, l = getattr(winner, stream), getattr(loser, stream)
        if w.shape != l.shape:
            raise ValueError(f"av_dpo_loss: winner and loser {stream} latents must have the same shape (they share "
                             f"the noise), got {list(w.shape)} and {list(l.shape)}")
    for lengths in ("text_video_lengths", "text_audio_lengths"):
        if (getattr(winner, lengths) is None) != (getattr(loser, lengths) is None):
            raise ValueError(f"av_dpo_loss: {lengths} must be given for both winner and loser or for neither")


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None else torch.cat([a, b])


def _cat_text(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, La, D] and [B, Lb, D] -> [2B, max(La, Lb), D]: zero rows are what the towers pad prompts with anyway."""
    length = max(a.shape[1], b.shape[1])
    pad = lambda t: F.pad(t, (0, 0, 0, length - t.shape[1]))  # noqa: E731
    return torch.cat([pad(a), pad(b)])


def _noised_pair(winner_x0: torch.Tensor, loser_x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Model input and target [2B, ...] of the winners then the losers, noised with the same noise at the same level
    (``noise_mix.noised``)."""
    (x_winner, target_winner), (x_loser, target_loser) = noised(winner_x0, noise, sigma), noised(loser_x0, noise, sigma)
    return torch.cat([x_winner, x_loser]), torch.cat([target_winner, target_loser])


def paired_errors(model: nn.Module, winner: AVBatch, loser: AVBatch, noise: NoiseDraw) -> PairErrors:
    """Errors of ``model`` on winners and losers, in ONE forward of 2B rows [winners | losers]."""
    video, target_video = _noised_pair(winner.video, loser.video, noise.noise_video, noise.sigma_video)
    audio, target_audio = _noised_pair(winner.audio, loser.audio, noise.noise_audio, noise.sigma_audio)
    sigma_video, sigma_audio = noise.sigma_video.repeat(2), noise.sigma_audio.repeat(2)
    pred_video, pred_audio = model(video, audio, sigma_video, sigma_audio,
                                   _cat_text(winner.text_video, loser.text_video),
                                   _cat_text(winner.text_audio, loser.text_audio),
                                   text_video_lengths=_cat(winner.text_video_lengths, loser.text_video_lengths),
                                   text_audio_lengths=_cat(winner.text_audio_lengths, loser.text_audio_lengths))
    err_video = flow_matching_error(pred_video, target_video, sigma_video, model.config)
    err_audio = flow_matching_error(pred_audio, target_audio, sigma_audio, model.config)
    b = winner.video.shape[0]
    return PairErrors(err_video[:b], err_video[b:], err_audio[:b], err_audio[b:])


ReferenceContext = Callable[[nn.Module], AbstractContextManager]


def av_dpo_loss(model: nn.Module, winner: AVBatch, loser: AVBatch, generator: torch.Generator, cfg: DPOConfig,
                reference_context: ReferenceContext = disabled_adapters, rules: Sequence[str] | None = None,
                shard: RowShard | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss of a batch of pairs (row i of ``winner`` preferred to row i of ``loser``). Returns (loss, logs).

    loss = sum over modalities m of  weight_m * mean_joint(L_m) + lambda_m * mean_driven_m(L_m)
                                     + sft_weight * weight_m * mean_scored_m(policy error on the winner),
    L_m = ``dpo_loss`` with beta_m; driven_m: the rows where m is denoised while the other stream is given clean
    (``cfg.noise.driven_fraction`` of the batch; none by default).
    ``reference_context(model)`` turns the model into the reference (default: its LoRA off); the reference runs
    first, under no_grad, in one forward of 2B rows, then the policy in another.
    rules: [B] the rule that made each loser; adds ``rule/<name>/<modality>_accuracy`` and ``..._reward_margin``
    for the rules present in this batch.
    shard: compute only these pairs (one process of several): the noise of the whole batch is drawn, the model runs
    on the shard's pairs, the loss is this rank's share of the whole batch's (the shares add up to it) and the logs
    are of its own pairs.
    """
    _check_pair(winner, loser)
    b = winner.video.shape[0]
    if rules is not None and len(rules) != b:
        raise ValueError(f"av_dpo_loss: rules must name one rule per row ({b}), got {len(rules)}")
    noise = draw_noise(winner, cfg.noise, generator)
    shard = shard or RowShard(0, b, b)
    if not shard.whole:
        winner, loser, noise = winner.take(shard.rows), loser.take(shard.rows), noise.take(shard.rows)
        rules = None if rules is None else list(rules)[shard.rows]
    # Reference first: toggling adapters then cannot interfere with the policy's autograd graph.
    with torch.no_grad(), reference_context(model):
        ref = paired_errors(model, winner, loser, noise)
    policy = paired_errors(model, winner, loser, noise)

    # Rows: [joint | audio-driven video | video-driven audio]. A modality is scored on the joint rows and on the
    # driven rows where it is the noisy stream; the driving stream (clean, sigma 0) has nothing to denoise.
    n_joint, n_video_task, _ = task_rows(b, cfg.noise.driven_fraction)
    device = policy.video_winner.device
    row = torch.arange(shard.start, shard.stop, device=device)       # the pairs' places in the whole batch
    joint = row < n_joint
    driven = {"video": (row >= n_joint) & (row < n_joint + n_video_task), "audio": row >= n_joint + n_video_task}
    scored = {m: joint | driven[m] for m in MODALITIES}
    counts = {"joint": n_joint, "video": n_video_task, "audio": b - n_joint - n_video_task}
    betas = cfg.betas(model.config)
    weights = {"video": cfg.weight_video, "audio": cfg.weight_audio}
    lambdas = {"video": cfg.noise.lambda_video, "audio": cfg.noise.lambda_audio}
    driven_name = {"video": "audio_driven_video", "audio": "video_driven_audio"}
    zero = policy.video_winner.new_zeros(())

    loss = zero
    logs: dict[str, float] = {}
    margins: dict[str, torch.Tensor] = {}
    for m in MODALITIES:
        err_w, err_l = getattr(policy, f"{m}_winner"), getattr(policy, f"{m}_loser")
        ref_w, ref_l = getattr(ref, f"{m}_winner"), getattr(ref, f"{m}_loser")
        rows_loss, _ = dpo_loss(err_w, err_l, ref_w, ref_l, betas[m])
        joint_term = row_mean(rows_loss, joint, counts["joint"], shard)
        driven_term = row_mean(rows_loss, driven[m], counts[m], shard)
        winner_error = row_mean(err_w, scored[m], counts["joint"] + counts[m], shard)
        loss = loss + weights[m] * joint_term + lambdas[m] * driven_term
        if cfg.sft_weight:
            loss = loss + cfg.sft_weight * weights[m] * winner_error
        margins[m] = preference_margin(err_w, err_l, ref_w, ref_l).detach()
        rows = scored[m]
        _, scored_logs = dpo_loss(err_w[rows].detach(), err_l[rows].detach(), ref_w[rows], ref_l[rows], betas[m])
        logs[f"{m}_dpo"] = logged_mean(joint_term, joint, counts["joint"], shard)
        logs[f"{driven_name[m]}_dpo"] = logged_mean(driven_term, driven[m], counts[m], shard)
        logs[f"{m}_accuracy"] = scored_logs["accuracy"]
        logs[f"{m}_reward_margin"] = scored_logs["reward_margin"]
        logs[f"{m}_winner_error"] = logged_mean(winner_error, scored[m], counts["joint"] + counts[m], shard)
    logs = {"loss": float(loss.detach()), **logs}

    if rules is not None:
        for rule in sorted(set(rules)):
            of_rule = torch.tensor([r == rule for r in rules], dtype=torch.bool, device=device)
            for m in MODALITIES:
                rows = of_rule & scored[m]
                if rows.any():
                    logs[f"rule/{rule}/{m}_accuracy"] = implicit_accuracy(margins[m][rows])
                    logs[f"rule/{rule}/{m}_reward_margin"] = float(-0.5 * betas[m] * margins[m][rows].mean())
    return loss, logs
