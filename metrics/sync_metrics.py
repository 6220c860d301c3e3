"""Audio-visual synchronization metrics for any clip: frames ``[F, H, W, 3]`` in 0..1 + waveform ``[C, T]``.

A plain numpy library (no ComfyUI, no scipy). Definitions, parameters and caveats: docs/metrics.md.

- ``event_sync``: visual events matched one-to-one to audio onsets within a tolerance (default one frame) ->
  precision, recall, F1, median |offset|.
- ``av_align``: AV-Align (Yariv et al. 2024), the IoU of audio onset peaks and motion peaks within one frame.
- ``xcorr_offset``: global offset from the cross-correlation of the audio onset envelope with the visual event
  envelope (positive = audio late) and a confidence.
- ``sync_report``: all of the above for one clip; ``chance_baseline``: the same with every video scored against
  another clip's audio, the number every F1 must be read against (NOTES.md, lesson 4); ``own_and_chance_reports``:
  both per clip, so a clip's own score and its chance score can be paired.

Times are seconds from the first sample / first frame (frame ``i`` is shown at ``i / fps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .motion import as_frames, motion_energy, motion_events, visual_events
from .onsets import as_waveform, detect_onsets, onset_envelope

__all__ = [
    "REPORT_KEYS", "match_events", "event_sync", "av_align", "event_envelope", "xcorr_offset",
    "VideoAnalysis", "AudioAnalysis", "analyze_video", "analyze_audio", "score_pair", "sync_report",
    "chance_baseline", "mean_report", "own_and_chance_reports",
]

REPORT_KEYS = ("event_f1", "event_precision", "event_recall", "median_offset_ms", "av_align", "xcorr_offset_ms",
               "xcorr_confidence", "num_audio_onsets", "num_visual_events")

# Onsets closer than this are one onset, and visual events likewise, so both sides count a double hit the same way.
MIN_EVENT_SPACING_S = 0.05


# ---------------------------------------------------------------------------------------------- event matching

def match_events(visual_s, audio_s, tolerance_s: float) -> list[tuple[int, int]]:
    """One-to-one pairs ``(visual index, audio index)`` with ``|audio - visual| <= tolerance_s``.

    visual_s ``[N]``, audio_s ``[M]``: event times in seconds (any order). The matching has the most pairs possible
    and, among those, the smallest total |offset|: on a line an optimal matching never crosses, so a dynamic
    program over the two sorted lists finds it exactly (greedy-by-distance can lose a pair).
    """
    visual = np.asarray(visual_s, dtype=np.float64).reshape(-1)
    audio = np.asarray(audio_s, dtype=np.float64).reshape(-1)
    if tolerance_s < 0:
        raise ValueError(f"tolerance_s: expected a non-negative tolerance in seconds, got {tolerance_s!r}")
    v_order, a_order = np.argsort(visual, kind="stable"), np.argsort(audio, kind="stable")
    v, a = visual[v_order], audio[a_order]
    n, m = v.size, a.size
    if n == 0 or m == 0:
        return []
    tol = tolerance_s + 1e-9  # an offset of exactly one tolerance counts (float rounding of k / fps)
    # best[i, j] = (pairs, -total |offset|) using the first i visual and first j audio events.
    pairs = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost = np.zeros((n + 1, m + 1))
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 skip visual, 1 skip audio, 2 match
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best = (pairs[i - 1, j], -cost[i - 1, j], 0)
            if (pairs[i, j - 1], -cost[i, j - 1]) > best[:2]:
                best = (pairs[i, j - 1], -cost[i, j - 1], 1)
            gap = abs(a[j - 1] - v[i - 1])
            if gap <= tol and (pairs[i - 1, j - 1] + 1, -(cost[i - 1, j - 1] + gap)) > best[:2]:
                best = (pairs[i - 1, j - 1] + 1, -(cost[i - 1, j - 1] + gap), 2)
            pairs[i, j], cost[i, j], move[i, j] = best[0], -best[1], best[2]
    matched = []
    i, j = n, m
    while i > 0 and j > 0:
        if move[i, j] == 2:
            matched.append((int(v_order[i - 1]), int(a_order[j - 1])))
            i, j = i - 1, j - 1
        elif move[i, j] == 0:
            i -= 1
        else:
            j -= 1
    return matched[::-1]


def event_sync(visual_s, audio_s, tolerance_s: float) -> dict:
    """Event-level sync of visual events ``[N]`` and audio onsets ``[M]`` (seconds).

    The visual events are the reference (what is seen), the audio onsets the detections (what is heard):
    precision = matched / M (onsets that have a visible cause), recall = matched / N (events that are heard),
    F1 their harmonic mean; all 0 when either side is empty. Offsets are audio - visual of matched pairs.
    Returns a dict: precision, recall, f1, matched, num_visual, num_audio, offsets_s ``[matched]``,
    median_abs_offset_ms (NaN without a match), median_offset_ms (signed, positive = audio late).
    """
    visual = np.asarray(visual_s, dtype=np.float64).reshape(-1)
    audio = np.asarray(audio_s, dtype=np.float64).reshape(-1)
    pairs = match_events(visual, audio, tolerance_s)
    matched = len(pairs)
    precision = matched / audio.size if audio.size else 0.0
    recall = matched / visual.size if visual.size else 0.0
    f1 = 2 * precision * recall / (precision + recall) if matched else 0.0
    offsets_s = np.asarray([audio[j] - visual[i] for i, j in pairs], dtype=np.float64)
    return {
        "precision": precision, "recall": recall, "f1": f1, "matched": matched,
        "num_visual": int(visual.size), "num_audio": int(audio.size), "offsets_s": offsets_s,
        "median_abs_offset_ms": float(np.median(np.abs(offsets_s)) * 1000) if matched else math.nan,
        "median_offset_ms": float(np.median(offsets_s) * 1000) if matched else math.nan,
    }


def av_align(audio_peaks_s, video_peaks_s, fps: float) -> float:
    """AV-Align (Yariv et al. 2024): ``m / (|A| + |V| - m)``, m = peaks matched within one frame (``1 / fps``).

    audio_peaks_s ``[A]``: audio onset times; video_peaks_s ``[V]``: motion peak times. 0 when both are empty.
    Matching is one-to-one (the reference code lets two audio peaks share one video peak, which can push the score
    over 1).
    """
    audio = np.asarray(audio_peaks_s, dtype=np.float64).reshape(-1)
    video = np.asarray(video_peaks_s, dtype=np.float64).reshape(-1)
    if audio.size + video.size == 0:
        return 0.0
    m = len(match_events(video, audio, 1.0 / fps))
    return m / (audio.size + video.size - m)


# ---------------------------------------------------------------------------------------------- cross-correlation

def event_envelope(times_s, duration_s: float, rate_hz: float, sigma_s: float) -> np.ndarray:
    """``[round(duration_s * rate_hz)]`` sum of unit Gaussian bumps of width ``sigma_s`` at ``times_s``."""
    grid = np.arange(int(round(duration_s * rate_hz))) / rate_hz
    times = np.asarray(times_s, dtype=np.float64).reshape(-1)
    if times.size == 0:
        return np.zeros_like(grid)
    return np.exp(-0.5 * ((grid[:, None] - times[None]) / sigma_s) ** 2).sum(axis=1)


def _gaussian_smooth(signal: np.ndarray, sigma_samples: float) -> np.ndarray:
    if sigma_samples <= 0:
        return signal
    half = int(math.ceil(4 * sigma_samples))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_samples) ** 2)
    # "full" then slice: mode="same" returns the longer of the two, which is the kernel on a very short clip.
    return np.convolve(signal, kernel / kernel.sum(), mode="full")[half:half + signal.size]


def xcorr_offset(audio_envelope, visual_envelope, rate_hz: float, max_lag_s: float = 0.5,
                 exclude_s: float = 0.0625) -> dict:
    """Global offset between two envelopes ``[N]`` sampled at ``rate_hz`` on one time axis.

    Both are made zero-mean and unit-norm, so ``c(lag) = sum_t a(t + lag) v(t)`` is a correlation coefficient
    (exactly Pearson's at lag 0); the offset is the lag in ``±max_lag_s`` that maximises it, positive when the audio
    comes late. Returns a dict: offset_ms (NaN when either envelope is flat: silence, a frozen video), confidence
    (the correlation at that lag, clipped to 0..1), peak_ratio (the runner-up peak more than ``exclude_s`` away
    divided by the best: near 1 = ambiguous, e.g. periodic events), lags_ms ``[L]``, correlation ``[L]``.
    """
    a = np.asarray(audio_envelope, dtype=np.float64).reshape(-1)
    v = np.asarray(visual_envelope, dtype=np.float64).reshape(-1)
    if a.shape != v.shape:
        raise ValueError(f"audio_envelope and visual_envelope: expected one length, got {a.size} and {v.size}")
    scale_a, scale_v = np.linalg.norm(a), np.linalg.norm(v)
    a, v = a - a.mean(), v - v.mean()
    a_norm, v_norm = np.linalg.norm(a), np.linalg.norm(v)
    max_lag = min(int(round(max_lag_s * rate_hz)), a.size - 1)
    lags = np.arange(-max_lag, max_lag + 1)
    flat = {"offset_ms": math.nan, "confidence": 0.0, "peak_ratio": math.nan, "lags_ms": lags / rate_hz * 1000,
            "correlation": np.zeros(lags.size)}
    # Flat = nothing left after removing the mean (up to rounding): no timing to correlate.
    if a.size < 2 or a_norm <= 1e-9 * scale_a or v_norm <= 1e-9 * scale_v:
        return flat
    a, v = a / a_norm, v / v_norm
    size = 1 << int(math.ceil(math.log2(2 * a.size)))
    full = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(v, size)), size)  # full[k] = sum a(t+k) v(t)
    correlation = full[lags % size]
    best = int(np.argmax(correlation))
    peak = float(correlation[best])
    exclude = int(round(exclude_s * rate_hz))
    far = np.abs(lags - lags[best]) > exclude
    is_local_max = np.r_[False, (correlation[1:-1] >= correlation[:-2]) & (correlation[1:-1] >= correlation[2:]),
                         False]
    rivals = correlation[far & is_local_max]
    ratio = float(max(rivals.max(), 0.0) / peak) if rivals.size and peak > 0 else 0.0
    return {"offset_ms": float(lags[best] / rate_hz * 1000), "confidence": float(np.clip(peak, 0.0, 1.0)),
            "peak_ratio": ratio, "lags_ms": lags / rate_hz * 1000, "correlation": correlation}


# ------------------------------------------------------------------------------------------------ per-clip parts

@dataclass
class VideoAnalysis:
    """What the metrics need from a video: events, motion peaks and an envelope (see ``analyze_video``)."""
    fps: float
    duration_s: float          # F / fps
    event_times_s: np.ndarray  # [K] visual events (blob impacts or motion peaks)
    mode: str                  # "blobs" or "motion": the detector that produced event_times_s
    motion_peaks_s: np.ndarray  # [P] motion-energy peaks (AV-Align's video peaks)
    motion_energy: np.ndarray   # [F-1]
    motion_times_s: np.ndarray  # [F-1]


@dataclass
class AudioAnalysis:
    """What the metrics need from a waveform: onsets and the onset envelope (see ``analyze_audio``)."""
    sample_rate_hz: float
    duration_s: float           # T / sample_rate_hz
    onset_times_s: np.ndarray   # [K]
    envelope: np.ndarray        # [N] onset strength (dB rise)
    envelope_times_s: np.ndarray  # [N]


def analyze_video(frames, fps: float, *, mode: str = "auto") -> VideoAnalysis:
    """frames ``[F, H, W, 3]`` in 0..1 -> events by ``mode`` ("auto", "blobs", "motion"; see
    ``motion.visual_events``) and motion-energy peaks."""
    video = as_frames(frames)
    if not (fps > 0):
        raise ValueError(f"fps: expected a positive frame rate, got {fps!r}")
    events_s, used = visual_events(video, fps, mode=mode, min_spacing_s=MIN_EVENT_SPACING_S)
    energy, energy_times_s = motion_energy(video, fps)
    peaks_s = events_s if used == "motion" else motion_events(video, fps, min_spacing_s=MIN_EVENT_SPACING_S)
    return VideoAnalysis(float(fps), video.shape[0] / fps, events_s, used, peaks_s, energy, energy_times_s)


def analyze_audio(waveform, sample_rate_hz: float) -> AudioAnalysis:
    """waveform ``[C, T]`` or ``[T]`` -> onsets and onset envelope (metrics/onsets.py defaults)."""
    audio = as_waveform(waveform)
    if not (sample_rate_hz > 0):
        raise ValueError(f"sample_rate_hz: expected a positive rate in Hz, got {sample_rate_hz!r}")
    onsets_s = detect_onsets(audio, sample_rate_hz, min_spacing_s=MIN_EVENT_SPACING_S)
    envelope, times_s = onset_envelope(audio, sample_rate_hz)
    return AudioAnalysis(float(sample_rate_hz), audio.shape[1] / sample_rate_hz, onsets_s, envelope, times_s)


def score_pair(video: VideoAnalysis, audio: AudioAnalysis, tolerance_s: float | None = None, *,
               max_lag_s: float = 0.5, xcorr_rate_hz: float = 1000.0) -> dict:
    """The ``sync_report`` dict for an analysed video and an analysed audio track (not necessarily the same clip).

    The audio is read on the video's time span (``[0, F / fps)``): onsets past the last frame's slot are dropped and
    a shorter track counts as silent at the end.
    tolerance_s: match window for event F1; default one frame (``1 / fps``). AV-Align always uses one frame.
    """
    tolerance = 1.0 / video.fps if tolerance_s is None else float(tolerance_s)
    onsets_s = audio.onset_times_s[audio.onset_times_s < video.duration_s]
    events = event_sync(video.event_times_s, onsets_s, tolerance)

    # Both envelopes on one 1 kHz grid over the video's span, smoothed to a quarter frame: fine enough to place
    # the peak well within a frame, coarse enough that a few ms of detector jitter does not split it.
    grid_s = np.arange(int(round(video.duration_s * xcorr_rate_hz))) / xcorr_rate_hz
    sigma_s = 0.25 / video.fps
    audio_env = np.interp(grid_s, audio.envelope_times_s, audio.envelope, left=0.0, right=0.0) \
        if audio.envelope.size else np.zeros_like(grid_s)
    audio_env = _gaussian_smooth(audio_env, sigma_s * xcorr_rate_hz)
    if video.event_times_s.size:
        visual_env = event_envelope(video.event_times_s, video.duration_s, xcorr_rate_hz, sigma_s)
    else:  # no discrete events: fall back on the raw motion energy, which still carries the timing of motion
        visual_env = np.interp(grid_s, video.motion_times_s, video.motion_energy, left=0.0, right=0.0) \
            if video.motion_energy.size else np.zeros_like(grid_s)
    xcorr = xcorr_offset(audio_env, visual_env, xcorr_rate_hz, max_lag_s=max_lag_s, exclude_s=1.0 / video.fps)

    return {
        "event_f1": float(events["f1"]),
        "event_precision": float(events["precision"]),
        "event_recall": float(events["recall"]),
        "median_offset_ms": float(events["median_abs_offset_ms"]),
        "av_align": float(av_align(onsets_s, video.motion_peaks_s, video.fps)),
        "xcorr_offset_ms": float(xcorr["offset_ms"]),
        "xcorr_confidence": float(xcorr["confidence"]),
        "num_audio_onsets": int(onsets_s.size),
        "num_visual_events": int(video.event_times_s.size),
    }


def sync_report(frames, waveform, fps: float, sample_rate_hz: float, tolerance_s: float | None = None, *,
                mode: str = "auto", max_lag_s: float = 0.5) -> dict:
    """All sync metrics of one clip.

    frames ``[F, H, W, 3]`` in 0..1 (numpy or torch), waveform ``[C, T]`` or ``[T]``, their rates.
    tolerance_s: event-matching window, default one frame. mode: visual detector ("auto", "blobs", "motion").
    Returns a dict with exactly ``REPORT_KEYS``: event_f1 / event_precision / event_recall (0..1),
    median_offset_ms (median |audio - visual| of matched events, NaN without a match), av_align (0..1),
    xcorr_offset_ms (positive = audio late; NaN when silent or frozen), xcorr_confidence (0..1),
    num_audio_onsets, num_visual_events.
    """
    return score_pair(analyze_video(frames, fps, mode=mode), analyze_audio(waveform, sample_rate_hz),
                      tolerance_s, max_lag_s=max_lag_s)


# ---------------------------------------------------------------------------------------------- sets of clips

def _unpack_clip(clip, index: int) -> tuple:
    """A clip is ``(frames, waveform, fps, sample_rate_hz)`` or a mapping with those keys."""
    if isinstance(clip, Mapping):
        try:
            return clip["frames"], clip["waveform"], clip["fps"], clip["sample_rate_hz"]
        except KeyError as missing:
            raise ValueError(f"clips[{index}]: expected keys frames, waveform, fps, sample_rate_hz; "
                             f"missing {missing}") from None
    if isinstance(clip, Sequence) and len(clip) == 4:
        return tuple(clip)
    raise ValueError(f"clips[{index}]: expected (frames, waveform, fps, sample_rate_hz) or a dict with those keys, "
                     f"got {type(clip).__name__}")


def _mean_reports(reports: list[dict]) -> dict:
    out = {}
    for key in REPORT_KEYS:
        values = np.asarray([r[key] for r in reports], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else math.nan  # NaN offsets (no match) are left out
    out["num_pairs"] = len(reports)
    return out


def _analyse_all(clips, mode: str) -> tuple[list[VideoAnalysis], list[AudioAnalysis]]:
    videos, audios = [], []
    for index, clip in enumerate(clips):
        frames, waveform, fps, rate = _unpack_clip(clip, index)
        videos.append(analyze_video(frames, fps, mode=mode))
        audios.append(analyze_audio(waveform, rate))
    return videos, audios


def _rotated_reports(videos: list[VideoAnalysis], audios: list[AudioAnalysis], tolerance_s: float | None,
                     shift: int) -> list[dict]:
    """``score_pair`` of video i with audio ``(i + shift) mod n``, for i = 0 .. n - 1 (shift 0: each clip's own)."""
    n = len(videos)
    return [score_pair(videos[i], audios[(i + shift) % n], tolerance_s) for i in range(n)]


def mean_report(clips: Iterable, tolerance_s: float | None = None, *, mode: str = "auto") -> dict:
    """``sync_report`` averaged over clips (each clip's own audio): ``REPORT_KEYS`` + num_pairs.
    NaN values (an offset with no match) are left out of their mean."""
    videos, audios = _analyse_all(clips, mode)
    if not videos:
        raise ValueError("clips: expected at least one clip, got none")
    return _mean_reports(_rotated_reports(videos, audios, tolerance_s, 0))


def chance_baseline(clips: Iterable, tolerance_s: float | None = None, *, mode: str = "auto",
                    rotations: int | None = 1) -> dict:
    """The sync metrics of mismatched pairs: each clip's video scored against another clip's audio.

    clips: at least two ``(frames [F, H, W, 3], waveform [C, T], fps, sample_rate_hz)`` tuples or dicts.
    rotations: video i is paired with the audio of clips ``i + 1, ..., i + rotations`` (mod n), each a derangement;
        ``None`` uses all n - 1 (every mismatched pair). Deterministic, and each video and each audio track is used
        equally often, so neither side's event count biases the baseline.
    Returns ``REPORT_KEYS`` averaged over pairs (NaN offsets left out) + num_pairs. Report F1 - chance F1, not F1.
    """
    videos, audios = _analyse_all(clips, mode)
    n = len(videos)
    if n < 2:
        raise ValueError(f"clips: a chance baseline needs at least 2 clips to mismatch, got {n}")
    shifts = range(1, n) if rotations is None else range(1, min(int(rotations), n - 1) + 1)
    if len(shifts) == 0:
        raise ValueError(f"rotations: expected at least 1 (or None for all), got {rotations!r}")
    return _mean_reports([r for s in shifts for r in _rotated_reports(videos, audios, tolerance_s, s)])


def own_and_chance_reports(clips: Iterable, tolerance_s: float | None = None, *, mode: str = "auto"
                           ) -> tuple[list[dict], list[dict]]:
    """Per clip, its own ``sync_report`` and its chance report, each clip analysed once.

    clips: ``(frames [F, H, W, 3], waveform [C, T], fps, sample_rate_hz)`` tuples or dicts, at least one.
    Returns (own, chance): ``own[i]`` scores clip i's video against its own audio (exactly ``sync_report``);
    ``chance[i]`` against clip ``i + 1``'s audio (mod n), the pairs ``chance_baseline`` averages with its default
    single rotation (so their mean is its report), which lets a clip's margin F1_i - chance_i be paired with the same
    clip of another run. One clip has nothing to mismatch: chance is then empty.
    """
    videos, audios = _analyse_all(clips, mode)
    if not videos:
        raise ValueError("clips: expected at least one clip, got none")
    own = _rotated_reports(videos, audios, tolerance_s, 0)
    return own, (_rotated_reports(videos, audios, tolerance_s, 1) if len(videos) >= 2 else [])
