"""BounceBench audio quality proxies: do a clip's impact sounds sound like the real clip's, at the caption's pitch?

Read against the real clip of the seed (bouncebench/evaluation.py); a plain library (numpy, no ComfyUI).
"""

from __future__ import annotations

import math

import numpy as np

from ..metrics.onsets import as_waveform, detect_onsets
from ..metrics.sync_metrics import MIN_EVENT_SPACING_S
from .config import MAX_PARTIAL_HZ

__all__ = ["onset_spectrum", "audio_quality"]

# Audio proxies: the window read after each onset, the spectrum's resolution for the pitch, and the band compared
# (the tones' band: every partial stays <= MAX_PARTIAL_HZ, the embedded codec keeps 0-2 kHz).
ONSET_WINDOW_S = 0.064
ONSET_LEAD_S = 0.002
PITCH_RESOLUTION_HZ = 0.5
SPECTRUM_BAND_HZ = (0.0, MAX_PARTIAL_HZ + 200.0)
SPECTRUM_BAND_WIDTH_HZ = 31.25
SPECTRUM_FLOOR_DB = -60.0
PITCH_SEARCH_HZ = (50.0, MAX_PARTIAL_HZ + 200.0)


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
