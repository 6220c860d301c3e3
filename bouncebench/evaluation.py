"""Evaluate a joint audio-video pipeline on BounceBench: sync metrics, a chance baseline, and quality proxies.

``evaluate_bouncebench`` generates one clip per BounceBench seed from that clip's caption (video and audio prompt),
with the initial noise seeded by the same BounceBench seed, so every row of a table (plain text CFG, SyncCFG at
several scales, a LoRA, ...) sees the same prompts and the same noise. It scores:

- **sync** (metrics/sync_metrics.py): ``sync_report`` on every generated clip, averaged; the chance baseline on the
  generated clips (each video against another generated clip's audio); and the margin F1 - chance, the number to
  rank sync by (NOTES.md, lesson 4; docs/metrics.md).
- **video quality proxies** (against the caption and the real clip of the seed): the fraction of frames showing
  exactly the caption's number of balls, the RGB distance of each tracked ball to its caption colour, and the
  tracked ball's radius over the real ball's.
- **audio quality proxies**: the log-spectrum distance of the average spectrum of the generated impact sounds to the
  real clip's, and the dominant pitch's distance to the caption class's fundamental.

With ``include_real=True`` the same numbers are computed once for the real clips of those seeds: the ceiling.
A plain library (numpy + torch, no ComfyUI).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..files.atomic import write_text_atomic
from .clips import BALL_CLASSES, MAX_PARTIAL_HZ, VARIANTS, BounceClip, make_clips, split_seeds
from ..metrics.motion import area_downsample, as_frames, track_blobs
from ..metrics.onsets import as_waveform, detect_onsets
from ..metrics.sync_metrics import (MIN_EVENT_SPACING_S, REPORT_KEYS, analyze_audio, analyze_video, chance_baseline,
                           score_pair, sync_report)

__all__ = [
    "SYNC_KEYS", "QUALITY_KEYS", "COUNT_KEYS", "SUMMARY_KEYS", "SETTINGS_KEYS", "RESULT_KEYS",
    "count_blobs", "video_quality", "onset_spectrum", "audio_quality", "score_clip", "evaluate_bouncebench",
    "batch_sync_report", "jsonable", "format_table", "write_json_atomic",
]

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

# Video proxies: a pixel is foreground when its RGB distance to the clip's median colour is at least this (the
# blob detector's core threshold, metrics/motion.py); components smaller than MIN_BLOB_AREA_PX are specks, not balls.
FOREGROUND_DISTANCE = 0.15
MIN_BLOB_AREA_PX = 2.0

# Audio proxies: the window read after each onset, the spectrum's resolution for the pitch, and the band compared
# (the tones' band: every partial stays <= MAX_PARTIAL_HZ, the embedded codec keeps 0-2 kHz).
ONSET_WINDOW_S = 0.064
ONSET_LEAD_S = 0.002
PITCH_RESOLUTION_HZ = 0.5
SPECTRUM_BAND_HZ = (0.0, MAX_PARTIAL_HZ + 200.0)
SPECTRUM_BAND_WIDTH_HZ = 31.25
SPECTRUM_FLOOR_DB = -60.0
PITCH_SEARCH_HZ = (50.0, MAX_PARTIAL_HZ + 200.0)


# ------------------------------------------------------------------------------------------------ video proxies


def count_blobs(frames, colours=None, *, foreground_distance: float = FOREGROUND_DISTANCE,
                min_area_px: float = MIN_BLOB_AREA_PX, colour_angle_deg: float = 25.0) -> np.ndarray:
    """Number of separate blobs in each frame: ``[F]`` ints.

    frames ``[F, H, W, 3]`` in 0..1. The background is the clip's median colour; a pixel is foreground when its RGB
    distance to it is at least ``foreground_distance``. colours ``[K, 3]`` (e.g. ``track_blobs(frames).colours``):
    each foreground pixel joins the colour whose direction from the background is nearest (within
    ``colour_angle_deg``; other pixels are ignored), and a blob is an 8-connected component of one colour's pixels,
    so touching balls of different colours stay two blobs and a ball split into pieces counts as several. Without
    colours (None or empty) every foreground pixel counts, whatever its colour. Components smaller than
    ``min_area_px`` pixels (of the input frames) are specks, not blobs.
    """
    video, factor = area_downsample(as_frames(frames))
    f, h, w, _ = video.shape
    background = np.median(video.reshape(-1, 3), axis=0)
    offset = video - background
    distance = np.linalg.norm(offset, axis=-1)
    mask = distance >= foreground_distance                                          # [F, H, W]
    group = np.zeros((f, h, w), dtype=np.int64)
    if colours is not None and len(colours):
        directions = np.asarray(colours, dtype=np.float64).reshape(-1, 3) - background
        directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
        cosine = (offset / np.maximum(distance, 1e-12)[..., None]) @ directions.T   # [F, H, W, K]
        group = np.argmax(cosine, axis=-1)
        mask &= np.max(cosine, axis=-1) >= math.cos(math.radians(colour_angle_deg))
    # Label propagation: every foreground pixel starts with its own index and takes the smallest label of its
    # 8 neighbours of the same colour until nothing changes (at most the longest path through a component).
    big = f * h * w
    labels = np.where(mask, np.arange(big).reshape(f, h, w), big)
    padded_group = np.pad(group, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    same = [padded_group[:, dy:dy + h, dx:dx + w] == group for dy, dx in itertools.product((0, 1, 2), repeat=2)]
    while True:
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=big)
        smallest = labels
        for (dy, dx), same_colour in zip(itertools.product((0, 1, 2), repeat=2), same):
            smallest = np.minimum(smallest, np.where(same_colour, padded[:, dy:dy + h, dx:dx + w], big))
        updated = np.where(mask, smallest, big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    counts = np.zeros(f, dtype=np.int64)
    min_cells = min_area_px / factor ** 2
    for k in range(f):
        _, sizes = np.unique(labels[k][mask[k]], return_counts=True)
        counts[k] = int(np.sum(sizes >= min_cells))
    return counts


def _assign(expected_rgb: np.ndarray, found_rgb: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (expected index, found index), each used once, minimising the total RGB distance; as many pairs as
    the shorter list (brute force: at most 3 balls and 8 blobs)."""
    n, k = len(expected_rgb), len(found_rgb)
    if n == 0 or k == 0:
        return []
    distance = np.linalg.norm(expected_rgb[:, None] - found_rgb[None], axis=-1)
    if n <= k:
        best = min(itertools.permutations(range(k), n), key=lambda p: sum(distance[i, p[i]] for i in range(n)))
        return [(i, best[i]) for i in range(n)]
    best = min(itertools.permutations(range(n), k), key=lambda p: sum(distance[p[j], j] for j in range(k)))
    return sorted((best[j], j) for j in range(k))


def _count_colours(expected_rgb: np.ndarray, tracks, angle_deg: float = 25.0) -> np.ndarray:
    """Colours to count blobs of: the caption's balls' colours, plus every tracked blob colour that is none of them
    (an extra object). Two caption colours closer than the tracker's colour angle (red and orange) stay apart."""
    directions = expected_rgb - tracks.background
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    extra = []
    for colour in tracks.colours:
        direction = (colour - tracks.background) / max(float(np.linalg.norm(colour - tracks.background)), 1e-12)
        if np.max(directions @ direction) < math.cos(math.radians(angle_deg)):
            extra.append(colour)
    return np.concatenate([expected_rgb, np.asarray(extra).reshape(-1, 3)])


def video_quality(frames, balls: list[dict], reference_size_px: int) -> dict:
    """Does the video show the caption's balls, in their colours and at a plausible size?

    frames ``[F, H, W, 3]`` in 0..1; balls: the real clip's ``BounceClip.balls`` (``rgb`` in 0..1, ``radius_px``);
    reference_size_px: the real clip's frame width (radii are compared in its pixels, so a generated clip of
    another size is rescaled). Returns:

    - ``video_blob_count_ok`` (0..1): fraction of frames with exactly ``len(balls)`` blobs (``count_blobs`` over
      the caption's colours and any other tracked colour: a ball split into pieces, a missing ball or an extra
      object fails the frame; so do real balls that overlap, which caps the real clips of multi-ball variants);
    - ``video_colour_error`` (RGB distance, 0..sqrt 3): mean over the caption's balls of the distance between the
      ball's colour and the colour of the blob tracked for it (``motion.track_blobs``; balls and blobs paired to
      minimise the total distance); None when no blob is tracked;
    - ``video_radius_ratio``: mean over paired balls of the tracked blob's radius (``sqrt(median area / pi)``) over
      the real ball's radius, 1 = the right size; None when no blob is tracked;
    - ``blobs_per_frame`` (mean), ``balls_tracked`` (how many of the caption's balls got a blob).
    """
    video = as_frames(frames)
    if not balls:
        raise ValueError("balls: expected at least one ball of the real clip, got none")
    tracks = track_blobs(video)
    expected_rgb = np.asarray([b["rgb"] for b in balls], dtype=np.float64)
    counts = count_blobs(video, _count_colours(expected_rgb, tracks))
    pairs = _assign(expected_rgb, tracks.colours)
    scale = reference_size_px / video.shape[2]
    colour_errors, ratios = [], []
    for ball_index, blob_index in pairs:
        colour_errors.append(float(np.linalg.norm(tracks.colours[blob_index] - expected_rgb[ball_index])))
        area = tracks.area_px[blob_index]
        area = area[np.isfinite(tracks.centroids_px[blob_index, :, 0])]
        radius_px = math.sqrt(float(np.median(area)) / math.pi) * scale if area.size else math.nan
        ratios.append(radius_px / float(balls[ball_index]["radius_px"]))
    return {
        "video_blob_count_ok": float(np.mean(counts == len(balls))),
        "video_colour_error": float(np.mean(colour_errors)) if colour_errors else None,
        "video_radius_ratio": float(np.nanmean(ratios)) if ratios and np.isfinite(ratios).any() else None,
        "blobs_per_frame": float(counts.mean()),
        "balls_tracked": len(pairs),
    }


# ------------------------------------------------------------------------------------------------ audio proxies

def _onset_window(length: int, lead: int) -> np.ndarray:
    """``[length]``: a raised-cosine rise over ``2 * lead`` samples, flat to the middle, a cosine fall after it (the
    tones start abruptly and decay, so the window must not dim their start)."""
    window = np.ones(length)
    rise = max(1, 2 * lead)
    window[:rise] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(rise) + 0.5) / rise)
    half = length // 2
    fall = length - half
    window[half:] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(fall) + 0.5) / fall)
    return window


def onset_spectrum(waveform, sample_rate_hz: float, onsets_s=None) -> tuple[np.ndarray, np.ndarray] | None:
    """The average power spectrum of the sounds that start at ``onsets_s``.

    waveform ``[C, T]`` or ``[T]`` (channels averaged); onsets_s ``[K]`` seconds, default the detected onsets
    (``onsets.detect_onsets``). Each onset contributes a 64 ms window starting 2 ms before it; with no onset the
    loudest 64 ms of the clip is read instead. The FFT is zero-padded to about 0.5 Hz resolution.
    Returns ``(frequencies_hz [N], power [N])``, or None for an all-zero waveform.
    """
    channels = as_waveform(waveform)
    audio = channels.mean(axis=0)
    if not (sample_rate_hz > 0):
        raise ValueError(f"sample_rate_hz: expected a positive rate in Hz, got {sample_rate_hz!r}")
    if not np.any(audio):
        return None
    if onsets_s is None:  # the onsets sync_report sees
        onsets_s = detect_onsets(channels, sample_rate_hz, min_spacing_s=MIN_EVENT_SPACING_S)
    length = max(8, int(round(ONSET_WINDOW_S * sample_rate_hz)))
    lead = int(round(ONSET_LEAD_S * sample_rate_hz))
    starts = [int(round(t * sample_rate_hz)) - lead for t in np.asarray(onsets_s, dtype=np.float64).reshape(-1)]
    if not starts:  # the loudest window (8 ms hops)
        hop = max(1, length // 8)
        energy = np.convolve(audio ** 2, np.ones(length), mode="valid")[::hop] if audio.size >= length else [0.0]
        starts = [int(np.argmax(energy)) * hop]
    padded = np.pad(audio, (length, length))
    window = _onset_window(length, lead)
    size = 1 << int(math.ceil(math.log2(max(length, sample_rate_hz / PITCH_RESOLUTION_HZ))))
    segments = np.stack([padded[s + length:s + 2 * length] * window for s in starts])
    power = (np.abs(np.fft.rfft(segments, size, axis=1)) ** 2).mean(axis=0)
    return np.fft.rfftfreq(size, 1.0 / sample_rate_hz), power


def _band_db(spectrum: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Power in 31.25 Hz bands over 0-2 kHz as dB of the band total, floored 60 dB under the loudest band."""
    freqs, power = spectrum
    edges = np.arange(SPECTRUM_BAND_HZ[0], SPECTRUM_BAND_HZ[1] + 1e-9, SPECTRUM_BAND_WIDTH_HZ)
    band = np.asarray([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    total = band.sum()
    if total <= 0:
        return np.full(band.size, SPECTRUM_FLOOR_DB)
    db = 10 * np.log10(np.maximum(band / total, 1e-30))
    return np.maximum(db, db.max() + SPECTRUM_FLOOR_DB)


def _peak_hz(spectrum: tuple[np.ndarray, np.ndarray]) -> float:
    """The frequency of the strongest spectral peak in 50-2000 Hz (parabolic interpolation on log power)."""
    freqs, power = spectrum
    inside = np.flatnonzero((freqs >= PITCH_SEARCH_HZ[0]) & (freqs <= PITCH_SEARCH_HZ[1]))
    if inside.size == 0 or not np.any(power[inside] > 0):
        return math.nan
    k = int(inside[np.argmax(power[inside])])
    if 0 < k < power.size - 1 and np.all(power[k - 1:k + 2] > 0):
        a, b, c = np.log(power[k - 1:k + 2])
        denominator = a - 2 * b + c
        delta = 0.5 * (a - c) / denominator if denominator < 0 else 0.0
        return float(freqs[k] + delta * (freqs[1] - freqs[0]))
    return float(freqs[k])


def audio_quality(waveform, sample_rate_hz: float, reference_waveform, reference_sample_rate_hz: float,
                  fundamentals_hz, *, onsets_s=None, reference_onsets_s=None) -> dict:
    """Do the impact sounds sound like the real clip's, at the caption's pitch?

    waveform ``[C, T]`` at sample_rate_hz: the clip to judge; reference_waveform ``[C, T]``: the real clip of the
    seed; fundamentals_hz: the caption's classes' fundamentals (``BALL_CLASSES[colour].fundamental_hz``). Onsets
    default to the detected ones. Returns:

    - ``audio_spectral_distance_db`` (dB, >= 0): RMS over 31.25 Hz bands of 0-2 kHz of the difference between the
      two onset spectra (``onset_spectrum``), each as dB of its own total power (so loudness does not count) and
      floored 60 dB under its loudest band; 0 = the same timbre and pitch; None for a silent clip;
    - ``audio_pitch_error_hz`` (Hz, >= 0): distance of the onset spectrum's strongest peak to the nearest caption
      fundamental; None for a silent clip;
    - ``audio_peak_hz``: that peak.
    """
    spectrum = onset_spectrum(waveform, sample_rate_hz, onsets_s)
    reference = onset_spectrum(reference_waveform, reference_sample_rate_hz, reference_onsets_s)
    fundamentals = np.asarray(list(fundamentals_hz), dtype=np.float64)
    if fundamentals.size == 0:
        raise ValueError("fundamentals_hz: expected at least one fundamental frequency in Hz, got none")
    if spectrum is None:
        return {"audio_spectral_distance_db": None, "audio_pitch_error_hz": None, "audio_peak_hz": None}
    peak = _peak_hz(spectrum)
    distance = None
    if reference is not None:
        distance = float(np.sqrt(np.mean((_band_db(spectrum) - _band_db(reference)) ** 2)))
    return {
        "audio_spectral_distance_db": distance,
        "audio_pitch_error_hz": float(np.min(np.abs(fundamentals - peak))) if math.isfinite(peak) else None,
        "audio_peak_hz": peak if math.isfinite(peak) else None,
    }


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


# ------------------------------------------------------------------------------------------------ summaries

def _finite_mean(values) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else None


def _summarise(records: list[dict], media: list[tuple]) -> tuple[dict, dict, dict]:
    """(summary in SUMMARY_KEYS order, mean sync report, chance report) of per-clip records and their media
    ``(frames, waveform, fps, sample_rate_hz)``."""
    sync = {key: _finite_mean(r[key] for r in records) for key in REPORT_KEYS}
    if len(media) >= 2:
        chance = jsonable(chance_baseline(media))
    else:  # one clip cannot be mismatched
        chance = {key: None for key in REPORT_KEYS} | {"num_pairs": 0}
    chance_f1 = chance["event_f1"]
    summary = {key: sync[key] for key in SYNC_KEYS}
    for key in QUALITY_KEYS:
        summary[key] = _finite_mean(r[key] for r in records)
    summary["chance_event_f1"] = chance_f1
    summary["event_f1_margin"] = (sync["event_f1"] - chance_f1) if chance_f1 is not None else None
    summary["clips"] = len(records)
    summary["num_audio_onsets"] = _finite_mean(r["num_audio_onsets"] for r in records)
    summary["num_visual_events"] = _finite_mean(r["num_visual_events"] for r in records)
    summary["num_true_impacts"] = _finite_mean(r["num_true_impacts"] for r in records)
    summary["clips_with_blobs"] = sum(1 for r in records if r["balls_tracked"] > 0)
    summary["chance_pairs"] = int(chance["num_pairs"])
    return summary, sync, chance


def jsonable(value):
    """numpy -> Python, tuples -> lists, NaN / inf -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


def batch_sync_report(frames, waveform, fps: float, sample_rate_hz: float, tolerance_s: float | None = None, *,
                      mode: str = "auto") -> dict:
    """``sync_report`` of a batch of clips laid end to end, as ComfyUI passes them.

    frames ``[B * F, H, W, 3]`` in 0..1 (clip after clip), waveform ``[B, C, T]`` (one track per clip), their
    rates; tolerance_s None = one frame. One clip: exactly ``sync_report``'s dict. Several: the mean of each key
    over clips (NaN left out) + ``num_clips`` + ``per_clip`` (each clip's report). Undefined numbers are None.
    """
    video = as_frames(frames, "frames")
    if not hasattr(waveform, "shape") or len(waveform.shape) != 3:
        raise ValueError(f"waveform: expected [B, C, T] (clips, channels, samples), got shape "
                         f"{tuple(getattr(waveform, 'shape', ())) or type(waveform).__name__}")
    batch = int(waveform.shape[0])
    if batch < 1 or video.shape[0] % batch:
        raise ValueError(f"frames / waveform: {video.shape[0]} frames do not split into {batch} clips (one audio "
                         "track per clip, every clip the same number of frames)")
    per = video.shape[0] // batch
    reports = [sync_report(video[i * per:(i + 1) * per], waveform[i], fps, sample_rate_hz, tolerance_s, mode=mode)
               for i in range(batch)]
    if batch == 1:
        return jsonable(reports[0])
    mean = {key: _finite_mean(jsonable(r[key]) for r in reports) for key in REPORT_KEYS}
    return jsonable({**mean, "num_clips": batch, "per_clip": reports})


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
    of every sync_report key), chance (the full chance report); real (when asked: the same summary for the real
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


# ------------------------------------------------------------------------------------------------ output

_TABLE_COLUMNS = (
    ("F1", "event_f1", "{:.3f}"), ("chance", "chance_event_f1", "{:.3f}"), ("margin", "event_f1_margin", "{:+.3f}"),
    ("|off| ms", "median_offset_ms", "{:.1f}"), ("AV-Align", "av_align", "{:.3f}"),
    ("xcorr ms", "xcorr_offset_ms", "{:+.1f}"), ("count ok", "video_blob_count_ok", "{:.2f}"),
    ("colour err", "video_colour_error", "{:.3f}"), ("radius x", "video_radius_ratio", "{:.2f}"),
    ("spec dB", "audio_spectral_distance_db", "{:.1f}"), ("pitch Hz", "audio_pitch_error_hz", "{:.1f}"),
)


def format_table(result: dict) -> str:
    """A short text table of an ``evaluate_bouncebench`` result: the generated row, and the real row if present."""
    guidance = result.get("guidance") or {}
    label = (f"text {guidance.get('text_scale_video', '?')}, sync {guidance.get('sync_scale_video', '?')}"
             if guidance else "generated")
    rows = [(f"generated ({label})", result)]
    if result.get("real"):
        rows.append(("real clips", result["real"]))
    name_width = max(len(name) for name, _ in rows)
    cells = [[fmt.format(row[key]) if row.get(key) is not None else "-" for _, key, fmt in _TABLE_COLUMNS]
             for _, row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(_TABLE_COLUMNS)]
    lines = ["  ".join([" " * name_width] + [t.rjust(w) for (t, _, _), w in zip(_TABLE_COLUMNS, widths)])]
    for (name, _), row_cells in zip(rows, cells):
        lines.append("  ".join([name.ljust(name_width)] + [c.rjust(w) for c, w in zip(row_cells, widths)]))
    lines.append(f"{result['clips']} clips of BounceBench {result['split']} ({result['variant']}) from seed "
                 f"offset {result['seed']}, {result['steps']} {result['solver']} steps, {result['elapsed_s']:.1f} s; "
                 "rank sync by margin = F1 - chance")
    return "\n".join(lines)


def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented strict JSON (NaN refused) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    if path.parent and not path.parent.is_dir():
        raise ValueError(f"json path: folder {str(path.parent)!r} does not exist")
    write_text_atomic(path, text)
    return path
