"""Preference pairs from the model's own samples, ranked by a sync score (V2A-DPO style), served easy -> hard.

The second DPO pair source of DESIGN.md section 3. For each prompt the current model draws K samples
(``guidance.sampling.sample_av`` with the config's guidance; the noise of sample k of prompt i is seeded by
``(config.seed, i, k)``), each is decoded and scored by ``score_samples`` (sync first, small quality terms so that
degenerate samples lose ties), and the best sample (winner) is paired with the worst (loser). The pair keeps the
sampled LATENTS (not a re-encode of the decoded media: DPO then scores exactly what the model produced) and the
prompt's text embeddings. Pairs whose score gap is below ``min_gap`` are dropped; the rest are ordered easy -> hard,
largest gap first, and ``ScoredPairs.batches`` serves them in that order to the DPO loop (a curriculum by gap).

Sampling is the expensive part, so everything is cached in ``cache_dir/pairs.safetensors`` (data/pair_cache.py) and
a call with the same prompts, config and model weights loads it; the score is data/pair_scoring.py's.

A plain library (torch, no ComfyUI).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..bouncebench.report import jsonable
from ..generation.generate import MAX_SEED, initial_noise
from ..guidance.sampling import sample_av
from ..guidance.schedules import check_schedule_args
from ..guidance.sync_cfg import SyncCFGGuidance
from ..model.batch import AVBatch, PreferenceBatch
from ..text.interface import EncodedText
from .pair_cache import CACHE_FILE, cache_key, load_cache, model_names, save_cache
from .pair_scoring import ScoreWeights, is_finite_number, score_samples

__all__ = ["ScoredPairsConfig", "ScoredPairs", "ScoredPairBatches", "sample_seed", "build_scored_pairs"]


# ------------------------------------------------------------------------------------------------ config

@dataclass(frozen=True)
class ScoredPairsConfig:
    """How the pairs are sampled, scored and filtered.

    samples_per_prompt: K samples per prompt (>= 2); the best and the worst make the prompt's pair.
    steps / solver / shift / guidance: the sampler's (``sample_av``). The default guidance is text CFG alone, so the
        pairs show the model's own sync rather than SyncCFG's.
    seconds / height_px / width_px: the clip size (``AVPipeline.latent_shapes``). negative_prompt: for text CFG.
    weights: ``ScoreWeights`` (or a dict of them). min_gap: pairs whose winner - loser score gap is below it are
        dropped (a gap of 0, no preference at all, always is). seed: with the prompt index and k, seeds each noise.
    sample_batch_size: samples per sampler call (rows of one batched forward; any prompts mixed).
    """

    samples_per_prompt: int = 4
    steps: int = 25
    solver: str = "unipc"
    shift: float = 3.0
    guidance: SyncCFGGuidance = field(default_factory=lambda: SyncCFGGuidance(text_scale_video=4.0,
                                                                              text_scale_audio=4.0))
    seconds: float = 2.0
    height_px: int = 32
    width_px: int = 32
    negative_prompt: str = ""
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    min_gap: float = 0.05
    seed: int = 0
    sample_batch_size: int = 4

    def __post_init__(self):
        if isinstance(self.guidance, dict):
            object.__setattr__(self, "guidance", SyncCFGGuidance(**self.guidance))
        if isinstance(self.weights, dict):
            object.__setattr__(self, "weights", ScoreWeights(**self.weights))
        k = self.samples_per_prompt
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"ScoredPairsConfig.samples_per_prompt: expected an integer >= 2 (a pair needs a best "
                             f"and a worst sample), got {k!r}")
        check_schedule_args(self.solver, self.steps, self.shift)
        if not isinstance(self.guidance, SyncCFGGuidance):
            raise ValueError(f"ScoredPairsConfig.guidance: expected a SyncCFGGuidance, got "
                             f"{type(self.guidance).__name__}")
        if not isinstance(self.weights, ScoreWeights):
            raise ValueError(f"ScoredPairsConfig.weights: expected a ScoreWeights, got {type(self.weights).__name__}")
        if not (is_finite_number(self.seconds) and self.seconds > 0):
            raise ValueError(f"ScoredPairsConfig.seconds: expected a positive duration, got {self.seconds!r}")
        for name in ("height_px", "width_px", "sample_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ScoredPairsConfig.{name}: expected an integer >= 1, got {value!r}")
        if not (is_finite_number(self.min_gap) and self.min_gap >= 0):
            raise ValueError(f"ScoredPairsConfig.min_gap: expected a number >= 0, got {self.min_gap!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"ScoredPairsConfig.seed: expected an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"ScoredPairsConfig.negative_prompt: expected a string, got "
                             f"{type(self.negative_prompt).__name__}")

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_changes(self, **changes) -> "ScoredPairsConfig":
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------ the pairs

class ScoredPairBatches:
    """``make_batch(step, generator) -> PreferenceBatch`` over ``ScoredPairs`` in their easy -> hard order.

    Step k takes rows ``k * batch_size ... (k + 1) * batch_size - 1`` of the order, modulo the number of pairs
    (cycling; a batch larger than the set repeats pairs). The generator is not used: a step's batch depends on the
    step alone, so a resumed run rebuilds it.
    """

    def __init__(self, pairs: "ScoredPairs", batch_size: int, device=None, rule: str | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batches: batch_size must be an integer >= 1, got {batch_size!r}")
        self.pairs, self.batch_size = pairs, batch_size
        self.device = None if device is None else torch.device(device)
        self.rule = rule

    def rows(self, step: int) -> torch.Tensor:
        """[batch_size] indices into the (easy -> hard) pairs used at ``step``."""
        start = int(step) * self.batch_size
        return (start + torch.arange(self.batch_size)) % len(self.pairs)

    def __call__(self, step: int, generator: torch.Generator | None = None) -> PreferenceBatch:
        p = self.pairs
        rows = self.rows(step)
        # The embeddings as the sampler saw them, padding included (an unmasked model reads the padding rows too).
        text, lengths = p.text[rows], p.text_lengths[rows]
        winner = AVBatch(p.winner_video[rows], p.winner_audio[rows], text, text, lengths, lengths)
        loser = AVBatch(p.loser_video[rows], p.loser_audio[rows], text, text, lengths, lengths)
        batch = PreferenceBatch(winner, loser, None if self.rule is None else (self.rule,) * self.batch_size)
        return batch if self.device is None else batch.to(self.device)


@dataclass
class ScoredPairs:
    """Winner / loser latent pairs of the model's own samples, ordered easy -> hard (score gap descending).

    Row i: ``winner_video`` / ``loser_video`` [N, Cv, F, H, W], ``winner_audio`` / ``loser_audio`` [N, La, Ca]
    (float32, CPU: the sampled latents), ``text`` [N, L, D] + ``text_lengths`` [N] (the prompt's embedding, for both
    towers), ``winner_score`` / ``loser_score`` [N], ``prompt_index`` [N] (into ``prompts``), ``winner_k`` /
    ``loser_k`` [N] (which of the prompt's samples). ``scores`` [P, K]: every sample's score, ``details`` [P][K]: its
    metrics. ``dropped``: pairs below ``config.min_gap``.
    """

    winner_video: torch.Tensor
    winner_audio: torch.Tensor
    loser_video: torch.Tensor
    loser_audio: torch.Tensor
    text: torch.Tensor
    text_lengths: torch.Tensor
    winner_score: torch.Tensor
    loser_score: torch.Tensor
    prompt_index: torch.Tensor
    winner_k: torch.Tensor
    loser_k: torch.Tensor
    prompts: list[str]
    scores: torch.Tensor
    details: list[list[dict]]
    dropped: int
    config: ScoredPairsConfig
    model_name: str = ""
    from_cache: bool = False
    cache_path: Path | None = None

    def __len__(self) -> int:
        return int(self.winner_video.shape[0])

    @property
    def gap(self) -> torch.Tensor:
        """[N] winner score - loser score, descending."""
        return self.winner_score - self.loser_score

    def batches(self, batch_size: int, device=None, rule: str | None = None) -> ScoredPairBatches:
        """The DPO loop's ``make_batch(step, generator) -> PreferenceBatch``: ``batch_size`` pairs a step, easy -> hard,
        cycling (see ``ScoredPairBatches``). rule: a name for the rows' per-rule logs (None: no per-rule logs)."""
        return ScoredPairBatches(self, batch_size, device, rule)

    def summary(self) -> dict:
        gap = self.gap
        return jsonable({"pairs": len(self), "dropped": self.dropped, "prompts": len(self.prompts),
                         "samples_per_prompt": self.config.samples_per_prompt,
                         "largest_gap": float(gap.max()) if len(self) else None,
                         "smallest_gap": float(gap.min()) if len(self) else None,
                         "mean_winner_score": float(self.winner_score.mean()) if len(self) else None,
                         "mean_loser_score": float(self.loser_score.mean()) if len(self) else None,
                         "mean_sample_score": float(self.scores.mean()), "from_cache": self.from_cache})


def _assemble(store: dict[str, torch.Tensor], prompts: list[str], details: list[list[dict]],
              config: ScoredPairsConfig, model_name: str, from_cache: bool, cache_path: Path | None) -> ScoredPairs:
    """Per-prompt pairs (prompt order) -> the min_gap filter and the easy -> hard order."""
    winner_k, loser_k = store["winner_k"], store["loser_k"]
    scores = store["scores"]
    rows = torch.arange(len(prompts))
    winner_score, loser_score = scores[rows, winner_k], scores[rows, loser_k]
    gap = winner_score - loser_score
    keep = (gap > 0) & (gap >= config.min_gap)
    if not bool(keep.any()):
        raise ValueError(
            f"build_scored_pairs: no pair reaches min_gap={config.min_gap:g}: all {len(prompts)} pairs were dropped "
            f"(largest score gap {float(gap.max()):.4g}, from prompt {int(gap.argmax())}: "
            f"{prompts[int(gap.argmax())]!r}); lower min_gap, draw more samples per prompt or use more prompts")
    kept = torch.nonzero(keep).flatten()
    # Easy -> hard: largest gap first; equal gaps keep the prompt order (a stable sort).
    order = kept[torch.sort(-gap[kept], stable=True).indices]
    return ScoredPairs(
        winner_video=store["winner_video"][order], winner_audio=store["winner_audio"][order],
        loser_video=store["loser_video"][order], loser_audio=store["loser_audio"][order],
        text=store["text"][order], text_lengths=store["text_lengths"][order],
        winner_score=winner_score[order], loser_score=loser_score[order], prompt_index=order.clone(),
        winner_k=winner_k[order], loser_k=loser_k[order], prompts=list(prompts), scores=scores, details=details,
        dropped=int(len(prompts) - kept.numel()), config=config, model_name=model_name, from_cache=from_cache,
        cache_path=cache_path)


# ------------------------------------------------------------------------------------------------ building

def sample_seed(seed: int, prompt_index: int, k: int) -> int:
    """The noise seed of sample ``k`` of prompt ``prompt_index``: a 64-bit hash of the three numbers."""
    digest = hashlib.sha256(f"syncav-scored-pairs/{int(seed)}/{int(prompt_index)}/{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class JobShare:
    """One process's share of the sampling when several build the same pairs (``torchrun``): it samples every
    ``size``-th (prompt, k) from ``rank``, and ``gather(obj)`` returns every process's ``obj`` (rank order)."""

    rank: int
    size: int
    gather: Callable[[object], list]


def _merge_extremes(shares: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Each prompt's best and worst over the processes' shares, with the one-process ties: the best is the first
    (lowest k) of the highest score, the worst the last (highest k) of the lowest."""
    best: dict = {}
    worst: dict = {}
    for share_best, share_worst in shares:
        for i, entry in share_best.items():
            if i not in best or (entry[0], -entry[1]) > (best[i][0], -best[i][1]):
                best[i] = entry
        for i, entry in share_worst.items():
            if i not in worst or (entry[0], -entry[1]) < (worst[i][0], -worst[i][1]):
                worst[i] = entry
    return best, worst


def _sample_rows(pipeline, config: ScoredPairsConfig, prompts: list[str], text: EncodedText,
                 negative: EncodedText, video_shape, audio_shape, progress: bool, share: JobShare | None = None):
    """Sample, decode and score every (prompt, k) (with ``share``: this process's every ``share.size``-th, the
    results then gathered from all); keep each prompt's best and worst latents."""
    model = pipeline.model
    parameter = next(model.parameters())
    device = parameter.device
    dtype = model.working_dtype() if hasattr(model, "working_dtype") else parameter.dtype
    guidance = config.guidance
    anchors = pipeline.anchors(video_shape, audio_shape, device=device, dtype=dtype) if guidance.needs_anchors \
        else None
    negative_pair = (negative, negative) if guidance.needs_negative else None
    k_count = config.samples_per_prompt
    jobs = [(i, k) for i in range(len(prompts)) for k in range(k_count)]
    if share is not None:
        jobs = jobs[share.rank::share.size]
    fps, rate = pipeline.video_codec.fps, pipeline.audio_codec.sample_rate
    one_video, one_audio = (1, *video_shape[1:]), (1, *audio_shape[1:])

    scores = torch.zeros(len(prompts), k_count, dtype=torch.float64)
    details: list[list[dict | None]] = [[None] * k_count for _ in prompts]
    best: dict[int, tuple[float, int, torch.Tensor, torch.Tensor]] = {}
    worst: dict[int, tuple[float, int, torch.Tensor, torch.Tensor]] = {}

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc="scored pairs: sampling", dynamic_ncols=True)
    try:
        for start in range(0, len(jobs), config.sample_batch_size):
            chunk = jobs[start:start + config.sample_batch_size]
            noise = [initial_noise(one_video, one_audio, sample_seed(config.seed, i, k), device, dtype)
                     for i, k in chunk]
            noise_video = torch.cat([v for v, _ in noise])
            noise_audio = torch.cat([a for _, a in noise])
            index = torch.tensor([i for i, _ in chunk])
            positive = EncodedText(text.embeddings[index].to(device), text.lengths[index].to(device))
            video, audio = sample_av(model, noise_video, noise_audio, (positive, positive), negative_pair, anchors,
                                     guidance, steps=config.steps, solver=config.solver, shift=config.shift)
            frames, waveform = pipeline.decode(video, audio)
            waveform = waveform[..., :round(frames.shape[1] / fps * rate)]
            video, audio = video.detach().float().cpu(), audio.detach().float().cpu()
            for row, (i, k) in enumerate(chunk):
                score, record = score_samples(frames[row], waveform[row], fps, rate, prompts[i], config.weights)
                scores[i, k], details[i][k] = score, record
                # Ties: the first best and the last worst (so K equal scores still pair two samples, at gap 0).
                if i not in best or score > best[i][0]:
                    best[i] = (score, k, video[row].clone(), audio[row].clone())
                if i not in worst or score <= worst[i][0]:
                    worst[i] = (score, k, video[row].clone(), audio[row].clone())
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(score=f"{float(scores[index, [k for _, k in chunk]].mean()):.3f}")
    finally:
        if bar is not None:
            bar.close()
    if share is not None:
        gathered = share.gather((scores, details, best, worst))
        scores = sum(part[0] for part in gathered)          # each (prompt, k) was scored by one process
        details = [[next(part[1][i][k] for part in gathered if part[1][i][k] is not None) for k in range(k_count)]
                   for i in range(len(prompts))]
        best, worst = _merge_extremes([(part[2], part[3]) for part in gathered])

    order = range(len(prompts))
    stack = lambda chosen, part: torch.stack([chosen[i][part] for i in order])  # noqa: E731
    store = {
        "winner_video": stack(best, 2), "winner_audio": stack(best, 3),
        "loser_video": stack(worst, 2), "loser_audio": stack(worst, 3),
        "winner_k": torch.tensor([best[i][1] for i in order], dtype=torch.int64),
        "loser_k": torch.tensor([worst[i][1] for i in order], dtype=torch.int64),
        "scores": scores,
        "text": text.embeddings.detach().float().cpu().clone(),
        "text_lengths": text.lengths.detach().cpu().to(torch.int64).clone(),
    }
    return store, details


def build_scored_pairs(pipeline, prompts: Sequence[str], config: ScoredPairsConfig | None = None,
                       cache_dir: str | Path | None = None, progress: bool = True,
                       share: JobShare | None = None) -> ScoredPairs:
    """Sample K clips per prompt with the pipeline's current model, score them, pair best against worst.

    pipeline: an ``AVPipeline`` (model, codecs, text encoder). prompts: P non-empty strings (each the video and the
    audio prompt). config: ``ScoredPairsConfig``. cache_dir: where ``pairs.safetensors`` is kept; a cache made for
    the same prompts, config (``min_gap`` aside) and weights is loaded instead of sampling (None: no cache).
    progress: a tqdm bar over the samples. share: this process's share when several processes build the same pairs
    (each samples its share, all get every pair; rank 0 writes the cache).

    Returns ``ScoredPairs``: the pairs reaching ``min_gap``, largest gap first. Raises ValueError for an empty prompt
    list or a blank prompt, and when no pair reaches ``min_gap`` (the message gives the largest gap).
    Cost: P x K samples of ``config.steps`` steps (batched ``sample_batch_size`` rows at a time) + decodes + scoring.
    """
    config = ScoredPairsConfig() if config is None else config
    if isinstance(config, dict):
        config = ScoredPairsConfig(**config)
    if isinstance(prompts, str):
        raise ValueError("prompts: expected a list of prompts, got one string (wrap it in a list)")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt, got an empty list")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompts[{i}]: expected a non-empty string, got {prompt!r}")

    # ComfyUI runs nodes under inference mode: tensors made there could not feed the DPO loop's autograd.
    with torch.inference_mode(False), torch.no_grad():
        video_shape, audio_shape = pipeline.latent_shapes(config.seconds, config.height_px, config.width_px)
        encoded = pipeline.encode_prompts(prompts + [config.negative_prompt])
        count = len(prompts)
        text = EncodedText(encoded.embeddings[:count].detach().clone(), encoded.lengths[:count].clone())
        negative = EncodedText(encoded.embeddings[count:].detach().clone(), encoded.lengths[count:].clone())
        key, fingerprint = cache_key(prompts, config, pipeline, text, video_shape, audio_shape)
        model_name, _ = model_names(pipeline)
        path = None if cache_dir is None else Path(cache_dir) / CACHE_FILE

        cached = None if path is None else load_cache(path, key)
        if cached is not None:
            store, details = cached
            return _assemble(store, prompts, details, config, model_name, True, path)

        store, details = _sample_rows(pipeline, config, prompts, text, negative, video_shape, audio_shape, progress,
                                      share)
        if path is not None and (share is None or share.rank == 0):
            save_cache(path, store, details, key, fingerprint, prompts, config, pipeline)
        return _assemble(store, prompts, details, config, model_name, False, path)
