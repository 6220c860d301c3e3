"""BounceBench sound: every impact's decaying tone at its exact, sub-sample time, over faint background noise."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .config import BallClass, BounceBenchConfig
from .exact_math import damped_phasor, exact_cos_sin, exact_exp, uniforms
from .scene import Ball

__all__ = ["background_noise", "soundtrack"]


@lru_cache(maxsize=64)
def _tone_tables(kind: BallClass, sample_rate_hz: int, length: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Per harmonic h: (re, im) [length] of exp(-k / (fs decay_h)) * exp(i 2 pi f_h k / fs), k = 0 .. length-1."""
    tables = []
    for h, frequency in enumerate(kind.partial_hz, start=1):
        decay_per_sample = h / (kind.decay_s * sample_rate_hz)
        radians_per_sample = 2.0 * math.pi * frequency / sample_rate_hz
        re, im = damped_phasor(decay_per_sample, radians_per_sample, length)
        re.flags.writeable = im.flags.writeable = False
        tables.append((re, im))
    return tuple(tables)


def _impact_amplitude(speed_px_per_s: float, config: BounceBenchConfig) -> float:
    relative = speed_px_per_s / (config.loud_speed_px_per_s * config.speed_scale)
    return config.tone_peak * min(max(math.sqrt(relative), config.quietest_fraction), 1.0)


def _add_tone(waveform: np.ndarray, kind: BallClass, time_s: float, amplitude: float,
              config: BounceBenchConfig) -> None:
    """Add one impact's tone to ``waveform`` [T] float64 in place, starting exactly at ``time_s``.

    Every partial starts at phase 0 at the impact (no click of a step), so sample n >= time_s * fs holds
    ``sum_h a_h exp(-(n/fs - t0) / decay_h) sin(2 pi f_h (n/fs - t0))``: the table value at k = n - n0 times the
    complex factor for the sub-sample offset n0 - t0 fs.
    """
    fs = config.sample_rate_hz
    position = time_s * fs
    first = math.ceil(position)
    if first >= waveform.shape[0]:
        return
    offset = first - position                                  # samples in [0, 1)
    length = min(round(config.tone_seconds * fs), waveform.shape[0] - first)
    total_gain = sum(kind.harmonic_gains)
    tone = np.zeros(length)
    for h, ((re, im), gain) in enumerate(zip(_tone_tables(kind, fs, round(config.tone_seconds * fs)),
                                             kind.harmonic_gains), start=1):
        envelope = exact_exp(-offset * h / (kind.decay_s * fs))
        cos_phase, sin_phase = exact_cos_sin(offset * 2.0 * math.pi * kind.fundamental_hz * h / fs)
        scale = amplitude * (gain / total_gain) * envelope
        # Im((c_re + i c_im)(re + i im)) = c_re im + c_im re
        tone = np.add(tone, np.add(np.multiply(im[:length], scale * cos_phase),
                                   np.multiply(re[:length], scale * sin_phase)))
    waveform[first:first + length] = np.add(waveform[first:first + length], tone)


def background_noise(generator: np.random.Generator, config: BounceBenchConfig) -> np.ndarray:
    """[T] float64 noise of RMS ``noise_rms``: uniform white noise through the binomial low-pass [1 4 6 4 1] / 16
    (-12 dB at 2 kHz for 8 kHz audio), so most of it is in the band the embedded codec keeps."""
    t = config.num_samples
    white = np.subtract(np.multiply(uniforms(generator, t + 4), 2.0), 1.0)     # variance 1/3
    filtered = np.add(np.add(white[:t], white[4:]), np.multiply(np.add(white[1:t + 1], white[3:t + 3]), 4.0))
    filtered = np.add(filtered, np.multiply(white[2:t + 2], 6.0))
    # Variance after the filter: (1 + 16 + 36 + 16 + 1) / 256 / 3 = 70 / 768 (times 16^2 before dividing by 16).
    return np.multiply(filtered, config.noise_rms / (16.0 * math.sqrt(70.0 / 768.0)))


def soundtrack(balls: list[Ball], noise: np.ndarray, config: BounceBenchConfig) -> np.ndarray:
    """Waveform [T] float64: every impact's tone, in time order, over the background noise, never past +-0.98."""
    waveform = noise.copy()
    events = sorted((impact["time_s"], k, impact["speed_px_per_s"])
                    for k, ball in enumerate(balls) for impact in ball.path.impacts)
    for time_s, k, speed in events:
        _add_tone(waveform, balls[k].kind, time_s, _impact_amplitude(speed, config), config)
    # A tone peaks at tone_peak (0.5 by default) at most, so only a pile-up of several loud impacts of several balls
    # within a few ms can come near full scale; then the whole clip is turned down, never clipped.
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    if peak > 0.98:
        waveform = np.multiply(waveform, 0.98 / peak)
    return waveform
