"""The score that ranks a model's own samples for DPO pairs (data/scored_pairs.py): sync first, a little quality.

The score (``score_samples``, one number per clip, higher is better) is a weighted sum of terms:

* ``event_f1_margin`` (weight 1 by default): event F1 (metrics/sync_metrics.py) minus the clip's own chance F1, the F1
  of its video against its audio circularly shifted by 1/9 .. 8/9 of the clip, floored at 0. Like the benchmark's
  F1 - chance margin (NOTES.md, lesson 4), it rewards timing, not event density: a clip that clicks everywhere
  matches its shifted audio as well as its own and gains nothing. The floor keeps a silent or frozen sample (F1 0,
  chance 0) from beating an audible off-beat one on sync: below chance is noise, not evidence.
* ``event_f1`` (0), ``offset`` (0: minus the median |audio - visual| offset of matched events in frames, capped at
  one frame; no match counts as the cap), ``av_align`` (0): the other sync readings, for mixes.
* quality proxies against the caption's balls (BounceBench captions; other prompts get 0 for these):
  ``blob_count`` (0.05: share of frames showing the caption's number of balls, ``video_proxies.video_quality``),
  ``pitch`` (0.05: 1 - 2 x the octaves between the dominant impact pitch and the nearest caption fundamental,
  floored at 0, ``audio_proxies.audio_quality``), ``colour`` (0: 1 - tracked colour error / sqrt 3). Small weights:
  they only decide between samples of equal sync, so a black video or a silent track loses.

A plain library (torch + numpy, no ComfyUI).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..bouncebench.audio_proxies import audio_quality
from ..bouncebench.config import BALL_CLASSES, STANDARD
from ..bouncebench.report import jsonable
from ..bouncebench.video_proxies import video_quality
from ..metrics.sync_metrics import analyze_audio, analyze_video, event_sync, score_pair

__all__ = ["SCORING_VERSION", "CHANCE_SHIFTS", "ScoreWeights", "is_finite_number", "caption_balls", "score_samples"]

# Part of the cache key: bump it whenever score_samples changes what it returns, so old caches are not reused.
SCORING_VERSION = 1
# Circular shifts of the audio (fractions of the clip) whose mean event F1 is a clip's own chance F1: eight, evenly
# spread, the nearest 1/9 of the clip away from the true timing (3.6 frames of a 2 s clip at 16 fps).
CHANCE_SHIFTS = tuple(k / 9 for k in range(1, 9))
# Nominal ball radius for the blob tracker's size reading, in BounceBench standard-frame pixels.
_NOMINAL_RADIUS_PX = sum(STANDARD.radius_px) / 2


def is_finite_number(x) -> bool:
    """A real, finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class ScoreWeights:
    """Weights of the score's terms (see the module docstring); the score is ``sum(weight * term)``."""

    event_f1_margin: float = 1.0    # max(0, event F1 - the clip's own chance F1 (audio circularly shifted)), 0..1
    event_f1: float = 0.0           # event F1, 0..1
    offset: float = 0.0             # -median |offset| of matched events in frames, capped at 1 (no match: -1), -1..0
    av_align: float = 0.0           # AV-Align, 0..1
    blob_count: float = 0.05        # share of frames with the caption's number of balls, 0..1
    pitch: float = 0.05             # 1 - 2 x octaves from the dominant pitch to the nearest caption fundamental, 0..1
    colour: float = 0.0             # 1 - RGB error of the tracked balls / sqrt(3), 0..1

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not is_finite_number(value):
                raise ValueError(f"ScoreWeights.{f.name}: expected a finite number, got {value!r}")
        if not any(getattr(self, f.name) for f in dataclasses.fields(self)):
            raise ValueError("ScoreWeights: every weight is 0, so every sample would score 0; give at least one "
                             "term a weight (event_f1_margin=1 is the default)")


_BALL_WORD = re.compile(r"\b(?:a|an)\s+([a-z]+)\s+ball\b")


def caption_balls(caption: str) -> list[dict]:
    """The balls a BounceBench-style caption names, in order ('an orange ball and a blue ball bouncing, ...' ->
    orange, blue), as ``video_quality``'s ``balls`` (colour, rgb, nominal radius_px, fundamental_hz); [] when the
    caption names none of ``BALL_CLASSES``."""
    balls = []
    for word in _BALL_WORD.findall(str(caption).lower()):
        kind = BALL_CLASSES.get(word)
        if kind is not None:
            balls.append({"colour": kind.colour_name, "rgb": list(kind.rgb), "radius_px": _NOMINAL_RADIUS_PX,
                          "fundamental_hz": kind.fundamental_hz})
    return balls


def _chance_f1(visual_s: np.ndarray, onsets_s: np.ndarray, duration_s: float, tolerance_s: float) -> float:
    """Mean event F1 of the visual events against the onsets circularly shifted by ``CHANCE_SHIFTS`` of the clip."""
    if visual_s.size == 0 or onsets_s.size == 0:
        return 0.0
    f1 = [event_sync(visual_s, np.mod(onsets_s + s * duration_s, duration_s), tolerance_s)["f1"]
          for s in CHANCE_SHIFTS]
    return float(np.mean(f1))


def _score_one(frames, waveform, fps: float, sample_rate_hz: float, caption: str, weights: ScoreWeights
               ) -> tuple[float, dict]:
    video = analyze_video(frames, fps)
    audio = analyze_audio(waveform, sample_rate_hz)
    report = score_pair(video, audio)
    tolerance_s = 1.0 / video.fps
    onsets_s = audio.onset_times_s[audio.onset_times_s < video.duration_s]     # what score_pair matched against
    chance = _chance_f1(video.event_times_s, onsets_s, video.duration_s, tolerance_s)
    offset_frames = report["median_offset_ms"] / (1000.0 * tolerance_s)
    margin = report["event_f1"] - chance
    terms = {
        # Below chance is no sync evidence, not negative evidence (a single clip's chance is noisy); clipped so an
        # audible off-beat sample never loses to a silent or frozen one on sync, only the quality terms decide.
        "event_f1_margin": max(0.0, margin),
        "event_f1": report["event_f1"],
        "offset": -min(offset_frames, 1.0) if math.isfinite(offset_frames) else -1.0,
        "av_align": report["av_align"],
        "blob_count": 0.0, "pitch": 0.0, "colour": 0.0,
    }
    details = {**report, "chance_event_f1": chance, "event_f1_margin": margin}
    balls = caption_balls(caption)
    if balls:
        quality = video_quality(frames, balls, STANDARD.size_px)
        # No reference recording here: an all-zero one makes the spectral distance None and leaves the pitch.
        sound = audio_quality(waveform, sample_rate_hz, np.zeros((1, 1)), sample_rate_hz,
                              [b["fundamental_hz"] for b in balls], onsets_s=audio.onset_times_s)
        details.update(quality)
        details.update(sound)
        terms["blob_count"] = quality["video_blob_count_ok"]
        if quality["video_colour_error"] is not None:
            terms["colour"] = 1.0 - quality["video_colour_error"] / math.sqrt(3.0)
        peak = sound["audio_peak_hz"]
        if peak is not None and peak > 0:
            octaves = min(abs(math.log2(peak / b["fundamental_hz"])) for b in balls)
            terms["pitch"] = max(0.0, 1.0 - 2.0 * octaves)
    score = float(sum(getattr(weights, name) * value for name, value in terms.items()))
    details["terms"] = terms
    details["score"] = score
    return score, jsonable(details)


def score_samples(frames, waveform, fps: float, sample_rate_hz: float, caption: str | Sequence[str],
                  weights: ScoreWeights | None = None):
    """Score clips for sync (and a little quality); higher is better.

    One clip: frames ``[F, H, W, 3]`` in 0..1, waveform ``[C, T]`` (or ``[T]``), caption a string ->
    ``(score, details)``. A batch: frames ``[B, F, H, W, 3]``, waveform ``[B, C, T]``, caption one string or B
    strings -> ``(scores np.ndarray [B], [details] * B)``.
    details: the ``sync_report`` keys, ``chance_event_f1`` and ``event_f1_margin``, the quality proxies when the
    caption names BounceBench balls (``video_quality`` / ``audio_quality`` keys), ``terms`` (each term before
    weighting) and ``score``; JSON-able (undefined numbers are None).
    """
    weights = ScoreWeights() if weights is None else weights
    if isinstance(weights, dict):
        weights = ScoreWeights(**weights)
    ndim = len(getattr(frames, "shape", ()))
    if ndim == 4:
        if not isinstance(caption, str):
            raise ValueError(f"caption: expected one string for one clip, got {type(caption).__name__}")
        return _score_one(frames, waveform, fps, sample_rate_hz, caption, weights)
    if ndim != 5:
        raise ValueError(f"frames: expected [F, H, W, 3] (one clip) or [B, F, H, W, 3] (a batch), got shape "
                         f"{tuple(getattr(frames, 'shape', ())) or type(frames).__name__}")
    batch = frames.shape[0]
    if len(getattr(waveform, "shape", ())) != 3 or waveform.shape[0] != batch:
        raise ValueError(f"waveform: expected [B={batch}, C, T] for a batch of frames, got shape "
                         f"{tuple(getattr(waveform, 'shape', ()))}")
    captions = [caption] * batch if isinstance(caption, str) else list(caption)
    if len(captions) != batch:
        raise ValueError(f"caption: expected one string or {batch}, got {len(captions)}")
    results = [_score_one(frames[i], waveform[i], fps, sample_rate_hz, captions[i], weights) for i in range(batch)]
    return np.asarray([r[0] for r in results], dtype=np.float64), [r[1] for r in results]
