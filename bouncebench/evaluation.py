"""Evaluate a joint audio-video pipeline on BounceBench: sync metrics, a chance baseline, and quality proxies.

``evaluate_bouncebench`` generates one clip per BounceBench seed from that clip's caption (video and audio prompt),
with the initial noise seeded by the same BounceBench seed, so every row of a table (plain text CFG, SyncCFG at
several scales, a LoRA, ...) sees the same prompts and the same noise. It scores:

- **sync** (metrics/sync_metrics.py): ``sync_report`` on every generated clip, averaged; the chance baseline on the
  generated clips (each video against another generated clip's audio); and the margin F1 - chance, the number to
  rank sync by (NOTES.md, lesson 4; docs/metrics.md).
- **video quality proxies** (bouncebench/video_proxies.py; against the caption and the real clip of the seed):
  the fraction of frames showing exactly the caption's number of balls, the RGB distance of each tracked ball to
  its caption colour, and the tracked ball's radius over the real ball's.
- **audio quality proxies** (bouncebench/audio_proxies.py): the log-spectrum distance of the average spectrum of
  the generated impact sounds to the real clip's, and the dominant pitch's distance to the caption class's
  fundamental.

With ``include_real=True`` the same numbers are computed once for the real clips of those seeds: the ceiling.
The JSON and text reports are bouncebench/report.py's. A plain library (numpy + torch, no ComfyUI).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..metrics.sync_metrics import (REPORT_KEYS, analyze_audio, analyze_video, chance_baseline, own_and_chance_reports,
                                    score_pair)
from .audio_proxies import audio_quality
from .clips import BounceClip, make_clips
from .config import BALL_CLASSES, VARIANTS, split_seeds
from .report import finite_mean, jsonable
from .video_proxies import video_quality

__all__ = ["SYNC_KEYS", "QUALITY_KEYS", "COUNT_KEYS", "SUMMARY_KEYS", "SETTINGS_KEYS", "RESULT_KEYS", "score_clip",
           "evaluate_bouncebench"]

# The headline sync numbers (means over clips of sync_report's keys of the same names).
SYNC_KEYS = ("event_f1", "median_offset_ms", "av_align", "xcorr_offset_ms")
# Per-modality quality proxies (means over clips; see video_quality / audio_quality).
QUALITY_KEYS = ("video_blob_count_ok", "video_colour_error", "video_radius_ratio",
                "audio_spectral_distance_db", "audio_pitch_error_hz")
COUNT_KEYS = ("clips", "num_audio_onsets", "num_visual_events", "num_true_impacts", "clips_with_blobs",
              "chance_pairs")
# What every summary (the generated clips, and the ``real`` reference) starts with, in this order.
SUMMARY_KEYS = SYNC_KEYS + QUALITY_KEYS + ("chance_event_f1", "event_f1_margin") + COUNT_KEYS
SETTINGS_KEYS = ("bench", "split", "variant", "seed", "seeds", "guidance", "steps", "solver", "shift", "tolerance_ms",
                 "model")
# The top-level keys of evaluate_bouncebench's result, in order (``real`` only with include_real=True).
RESULT_KEYS = SUMMARY_KEYS + SETTINGS_KEYS + ("elapsed_s", "sync", "chance", "real", "per_clip")


# ------------------------------------------------------------------------------------------------ one clip

def score_clip(frames, waveform, fps: float, sample_rate_hz: float, real: BounceClip,
               tolerance_s: float | None = None) -> dict:
    """Every per-clip number for a clip made for the BounceBench clip ``real`` (which may be ``real`` itself).

    frames ``[F, H, W, 3]`` in 0..1, waveform ``[C, T]``, their rates. Returns ``{"seed", "caption"}`` + the
    ``sync_report`` keys (``REPORT_KEYS``) + ``video_quality`` + ``audio_quality`` + ``num_true_impacts``.
    Undefined numbers (no matched event, no blob, silence) are None.
    """
    video = analyze_video(frames, fps)
    audio = analyze_audio(waveform, sample_rate_hz)
    record = {"seed": int(real.seed), "caption": real.caption}
    record.update(score_pair(video, audio, tolerance_s))
    record.update(video_quality(frames, real.balls, int(real.frames.shape[2])))
    fundamentals = [BALL_CLASSES[b["colour"]].fundamental_hz for b in real.balls]
    record.update(audio_quality(waveform, sample_rate_hz, real.waveform, real.sample_rate_hz, fundamentals,
                                onsets_s=audio.onset_times_s))
    record["num_true_impacts"] = len(real.impacts)
    return jsonable(record)


def _chance_f1_per_clip(media: list[tuple]) -> list[float]:
    """Event F1 of clip i's video against clip i + 1's audio (mod n), for each clip i of ``media``
    (``own_and_chance_reports``: the pairs of ``chance_baseline``'s single rotation, as ``_summarise`` calls it, so
    their mean is its event_f1, and a clip's own margin F1_i - chance_i can be paired with another row's clip by
    clip)."""
    return [report["event_f1"] for report in own_and_chance_reports(media)[1]]


def _summarise(records: list[dict], media: list[tuple]) -> tuple[dict, dict, dict]:
    """(summary in SUMMARY_KEYS order, mean sync report, chance report) of per-clip records and their media
    ``(frames, waveform, fps, sample_rate_hz)``."""
    sync = {key: finite_mean(r[key] for r in records) for key in REPORT_KEYS}
    if len(media) >= 2:
        chance = jsonable(chance_baseline(media))
        chance["per_clip_event_f1"] = jsonable(_chance_f1_per_clip(media))
    else:  # one clip cannot be mismatched
        chance = {key: None for key in REPORT_KEYS} | {"num_pairs": 0, "per_clip_event_f1": [None] * len(media)}
    chance_f1 = chance["event_f1"]
    summary = {key: sync[key] for key in SYNC_KEYS}
    for key in QUALITY_KEYS:
        summary[key] = finite_mean(r[key] for r in records)
    summary["chance_event_f1"] = chance_f1
    summary["event_f1_margin"] = (sync["event_f1"] - chance_f1) if chance_f1 is not None else None
    summary["clips"] = len(records)
    summary["num_audio_onsets"] = finite_mean(r["num_audio_onsets"] for r in records)
    summary["num_visual_events"] = finite_mean(r["num_visual_events"] for r in records)
    summary["num_true_impacts"] = finite_mean(r["num_true_impacts"] for r in records)
    summary["clips_with_blobs"] = sum(1 for r in records if r["balls_tracked"] > 0)
    summary["chance_pairs"] = int(chance["num_pairs"])
    return summary, sync, chance


# ------------------------------------------------------------------------------------------------ the benchmark

def evaluate_bouncebench(pipeline, *, split: str = "val", seed: int = 0, clips: int = 64,
                         variant: str = "standard", guidance, steps: int = 25, solver: str = "unipc",
                         shift: float = 3.0, include_real: bool = False, tolerance_s: float | None = None,
                         progress: bool = True) -> dict:
    """Generate one clip per BounceBench seed with ``pipeline`` and score sync and quality.

    pipeline: an ``AVPipeline`` (generation/pipeline.py), e.g. ``build_embedded_default()``.
    split / seed / clips: clip i uses BounceBench seed ``split_seeds(split, clips, start=seed)[i]``: its caption is
        the video and the audio prompt, and the same number seeds the initial noise (``model.generate.initial_noise``),
        so rows with other guidance see the same prompts and noise.
    variant: a ``bouncebench.VARIANTS`` name (sets the clip length, frame size and the real reference).
    guidance: a ``SyncCFGGuidance`` (plain text CFG = sync scales 1). steps / solver / shift: the sampler's.
    include_real: also score the real clips of those seeds (the ceiling), under ``"real"``.
    tolerance_s: event-matching window, default one frame of the generated video.

    Returns a JSON-able dict (None where a number is undefined), keys in this order (``RESULT_KEYS``):
    event_f1, median_offset_ms, av_align, xcorr_offset_ms (means of sync_report over clips);
    video_blob_count_ok, video_colour_error, video_radius_ratio, audio_spectral_distance_db, audio_pitch_error_hz
    (means; see video_quality / audio_quality); chance_event_f1 (generated videos against other generated clips'
    audio), event_f1_margin (event_f1 - chance_event_f1); clips, num_audio_onsets, num_visual_events,
    num_true_impacts (means per clip), clips_with_blobs, chance_pairs; the settings (bench, split, variant, seed,
    seeds, guidance, steps, solver, shift, tolerance_ms, model); elapsed_s (wall-clock seconds); sync (the mean
    of every sync_report key), chance (the full chance report, plus per_clip_event_f1: clip i's video against clip
    i + 1's audio, the pairs it averages, in seed order); real (when asked: the same summary for the real
    clips, with its own sync, chance and per_clip); per_clip (one record per seed, see ``score_clip``).
    """
    from ..generation.generate import check_fits_memory, clip_host_bytes, generate_clip  # only needed to generate
    from ..guidance.sync_cfg import SyncCFGGuidance

    if not isinstance(guidance, SyncCFGGuidance):
        raise ValueError(f"guidance: expected a SyncCFGGuidance, got {type(guidance).__name__}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 1:
        raise ValueError(f"clips: expected a positive number of clips, got {clips!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive number of sampling steps, got {steps!r}")
    config = VARIANTS[variant]
    seeds = split_seeds(split, clips, start=seed)
    # Every clip's frames and sound are kept (generated and real) for the chance baseline and the summary.
    check_fits_memory(clip_host_bytes(config.seconds, config.size_px, config.size_px, config.fps,
                                      config.sample_rate_hz, clips=clips), "clips",
                      f"the frames and sound of {clips} {variant} clips (generated and real)")
    started = time.perf_counter()

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=clips, desc=f"BounceBench {split} ({variant})", leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency, progress is optional
            bar = None
    records, media, reals = [], [], []
    try:
        for bounce_seed in seeds:
            real = make_clips([bounce_seed], config)[0]
            with torch.inference_mode():
                clip = generate_clip(pipeline, real.caption, real.caption, seconds=config.seconds,
                                     height_px=config.size_px, width_px=config.size_px, seed=int(bounce_seed),
                                     steps=steps, solver=solver, shift=shift, guidance=guidance)
            frames, waveform = clip.frames[0], clip.waveform[0]              # [F, H, W, 3], [C, T]
            records.append(score_clip(frames, waveform, clip.fps, clip.sample_rate_hz, real, tolerance_s))
            media.append((frames, waveform, clip.fps, clip.sample_rate_hz))
            reals.append(real)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    summary, sync, chance = _summarise(records, media)
    fps = media[0][2]
    result = dict(summary)
    result.update({
        "bench": "bouncebench", "split": split, "variant": variant, "seed": int(seed), "seeds": seeds,
        "guidance": jsonable(dataclasses.asdict(guidance)), "steps": steps, "solver": solver, "shift": float(shift),
        "tolerance_ms": 1000.0 * (tolerance_s if tolerance_s is not None else 1.0 / fps),
        "model": getattr(pipeline, "name", type(pipeline).__name__),
    })
    if include_real:
        real_records = [score_clip(r.frames, r.waveform, r.fps, r.sample_rate_hz, r, tolerance_s) for r in reals]
        real_summary, real_sync, real_chance = _summarise(
            real_records, [(r.frames, r.waveform, r.fps, r.sample_rate_hz) for r in reals])
        real_block = dict(real_summary)
        real_block.update({"sync": real_sync, "chance": real_chance, "per_clip": real_records})
    result["elapsed_s"] = time.perf_counter() - started
    result["sync"] = sync
    result["chance"] = chance
    if include_real:
        result["real"] = real_block
    result["per_clip"] = records
    return jsonable(result)
