"""BounceBench: seeded synthetic audio-video clips of bouncing balls whose every sound event has a known, exact time.

A clip is ``seconds`` of a plain dark square (``size_px`` x ``size_px``, ``fps`` frames per second) in which 1-3
coloured balls fall under gravity and bounce off the floor, the walls and the ceiling, plus a mono soundtrack
(``sample_rate_hz``) in which every impact emits a short decaying tone at its exact, sub-frame and sub-sample time.
A ball's colour fixes its sound (pitch, harmonics, decay), its impact speed the loudness; the caption names both
("a red ball bouncing, high clicks"). The ground truth (impact times, surfaces, speeds, per-frame centres) comes
with every clip, so training can use the clips and sync metrics can be checked against them. docs/bouncebench.md
has the design and measured statistics.

Conventions: x to the right and y downward in pixels, pixel (row i, column j) centred at (j + 0.5, i + 0.5), so
the floor is the line y = size_px; frame k shows the scene at time k / fps exactly; sample n is time
n / sample_rate_hz.

Determinism: the same seed and config give bit-identical clips on every machine. Random numbers are PCG64's raw
64-bit stream (fixed by its algorithm, unlike the distributions built on it), and the generator uses only IEEE
arithmetic that is exactly rounded everywhere (+, -, *, /, sqrt, comparisons) on float64, one NumPy ufunc at a time
(so no compiler can fuse a multiply-add): the few exponentials, sines and cosines it needs are Taylor series in
Python floats, and tone tables are built from them by repeated complex multiplication. NumPy's own ``exp``/``sin``
are not used because their SIMD variants differ in the last bit between CPUs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch

from ..files.atomic import write_text_atomic

__all__ = [
    "BallClass", "BALL_CLASSES", "BounceBenchConfig", "STANDARD", "VARIANTS", "SPLITS", "split_seeds",
    "BallPath", "simulate_ball", "BounceClip", "make_clip", "make_clips", "make_batch", "caption_for",
    "BounceClipFiles", "write_dataset",
]


# ------------------------------------------------------------------------------------------ ball classes

@dataclass(frozen=True)
class BallClass:
    """One kind of ball: its colour and the sound its impacts make.

    The tone of an impact is ``sum_h gain_h * exp(-t / (decay_s / h)) * sin(2 pi h fundamental_hz t)`` over the
    harmonics h = 1, 2, ... of ``harmonic_gains`` (gains normalised to sum 1, so a tone never exceeds its
    amplitude); higher harmonics die faster, as in struck objects.
    """

    colour_name: str
    rgb: tuple[float, float, float]
    sound_words: str
    fundamental_hz: float
    harmonic_gains: tuple[float, ...]
    decay_s: float

    @property
    def partial_hz(self) -> tuple[float, ...]:
        return tuple(self.fundamental_hz * (h + 1) for h in range(len(self.harmonic_gains)))


# Highest partial any class may use: the embedded audio codec keeps 0-2 kHz only (docs/codec.md), and a decaying
# tone's spectrum spreads about 1 / (2 pi decay) around its frequency, so stay a little below the band edge.
MAX_PARTIAL_HZ = 1800.0

# Pitch rises about 1.4x from class to class (200 -> 1250 Hz), three or more 62.5 Hz codec bins apart, and the sound
# word follows the pitch, so caption, colour and sound all carry the same class. Low balls get more harmonics and a
# longer ring (a thud), high ones a single short partial (a click).
BALL_CLASSES: dict[str, BallClass] = {c.colour_name: c for c in (
    BallClass("red", (0.90, 0.16, 0.12), "high clicks", 1250.0, (1.0,), 0.005),
    BallClass("orange", (0.95, 0.55, 0.10), "bright pings", 900.0, (1.0,), 0.012),
    BallClass("yellow", (0.92, 0.88, 0.18), "metal taps", 650.0, (1.0, 0.5), 0.008),
    BallClass("green", (0.20, 0.78, 0.26), "wooden knocks", 480.0, (1.0, 0.6, 0.3), 0.007),
    BallClass("purple", (0.62, 0.26, 0.90), "hollow knocks", 330.0, (1.0, 0.7, 0.4, 0.2), 0.009),
    BallClass("blue", (0.18, 0.38, 0.95), "low thuds", 200.0, (1.0, 0.8, 0.5, 0.3), 0.010),
)}


# ------------------------------------------------------------------------------------------------ config

@dataclass(frozen=True)
class BounceBenchConfig:
    """Every knob of the generator. Lengths in pixels, times in seconds; ``(low, high)`` pairs are sampled
    uniformly per ball (``num_balls`` uniformly per clip, inclusive)."""

    name: str = "standard"
    size_px: int = 32
    fps: float = 16.0
    seconds: float = 2.0
    sample_rate_hz: int = 8000
    num_balls: tuple[int, int] = (1, 1)
    radius_px: tuple[float, float] = (2.5, 4.0)
    # Gravity and launch: a ball's apex (highest point of its flight) is this fraction of the room it can move in
    # vertically (size_px - 2 radius); above 1 it hits the ceiling. Horizontal speed sets the wall impacts.
    gravity_px_per_s2: float = 220.0
    apex_fraction: tuple[float, float] = (0.55, 1.1)
    horizontal_speed_px_per_s: tuple[float, float] = (8.0, 30.0)
    # Multiplies every speed by s and gravity by s^2: the same paths, run s times faster.
    speed_scale: float = 1.0
    restitution: tuple[float, float] = (0.85, 0.95)
    # Below this rebound speed a ball stops bouncing and rolls along the floor (no endless ever-faster bounces).
    rest_speed_px_per_s: float = 3.0
    background_rgb: tuple[float, float, float] = (0.06, 0.06, 0.08)
    palette: tuple[str, ...] = ("red", "orange", "yellow", "green", "purple", "blue")
    # Loudness: a tone's peak is tone_peak * sqrt(normal impact speed / (loud_speed_px_per_s * speed_scale)),
    # the root clipped to [quietest_fraction, 1] (loudness grows slower than speed, and grazing wall touches
    # stay audible).
    tone_peak: float = 0.5
    loud_speed_px_per_s: float = 100.0
    quietest_fraction: float = 0.25
    tone_seconds: float = 0.1
    noise_rms: float = 0.003                    # faint low-passed background noise (about -50 dBFS)

    def __post_init__(self):
        def fail(knob, expected, got):
            raise ValueError(f"BounceBenchConfig.{knob}: expected {expected}, got {got!r}")

        if self.size_px < 8:
            fail("size_px", "an integer >= 8", self.size_px)
        if not (self.fps > 0 and self.seconds > 0):
            fail("fps/seconds", "positive numbers", (self.fps, self.seconds))
        if abs(self.seconds * self.fps - round(self.seconds * self.fps)) > 1e-9:
            fail("seconds", f"a whole number of frames at {self.fps} fps", self.seconds)
        if abs(self.seconds * self.sample_rate_hz - round(self.seconds * self.sample_rate_hz)) > 1e-9:
            fail("seconds", f"a whole number of samples at {self.sample_rate_hz} Hz", self.seconds)
        if self.sample_rate_hz < 2 * MAX_PARTIAL_HZ + 400:
            fail("sample_rate_hz", f">= {2 * MAX_PARTIAL_HZ + 400:.0f} (the tones reach {MAX_PARTIAL_HZ:.0f} Hz)",
                 self.sample_rate_hz)
        low, high = self.num_balls
        if not 1 <= low <= high <= 3:
            fail("num_balls", "(min, max) with 1 <= min <= max <= 3", self.num_balls)
        if not 1.0 <= self.radius_px[0] <= self.radius_px[1] <= self.size_px / 4:
            fail("radius_px", f"(low, high) with 1 <= low <= high <= size_px / 4 = {self.size_px / 4}",
                 self.radius_px)
        if not 0 < self.restitution[0] <= self.restitution[1] <= 1:
            fail("restitution", "(low, high) within (0, 1]", self.restitution)
        if not (self.gravity_px_per_s2 > 0 and self.speed_scale > 0 and 0 < self.apex_fraction[0]
                <= self.apex_fraction[1] and 0 <= self.horizontal_speed_px_per_s[0]
                <= self.horizontal_speed_px_per_s[1]):
            fail("gravity/apex/speeds", "positive gravity and scale, ordered non-negative ranges",
                 (self.gravity_px_per_s2, self.speed_scale, self.apex_fraction, self.horizontal_speed_px_per_s))
        unknown = [c for c in self.palette if c not in BALL_CLASSES]
        if unknown or len(set(self.palette)) != len(self.palette) or len(self.palette) < high:
            fail("palette", f"at least {high} distinct names from {sorted(BALL_CLASSES)}", self.palette)
        for name in self.palette:
            if max(BALL_CLASSES[name].partial_hz) > MAX_PARTIAL_HZ:
                fail("palette", f"classes whose partials stay below {MAX_PARTIAL_HZ} Hz", name)
        if not (0 < self.tone_peak <= 0.5 and 0 < self.quietest_fraction <= 1
                and self.tone_seconds > 0 and self.noise_rms >= 0):
            fail("tone_peak/quietest_fraction/tone_seconds/noise_rms",
                 "0 < tone_peak <= 0.5, 0 < quietest_fraction <= 1, positive tone_seconds, "
                 "noise_rms >= 0", (self.tone_peak, self.quietest_fraction, self.tone_seconds, self.noise_rms))

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate_hz)


STANDARD = BounceBenchConfig()

# Out-of-distribution variants of the standard clip: one knob changed each, for generalisation tests.
VARIANTS: dict[str, BounceBenchConfig] = {
    "standard": STANDARD,
    "two_balls": dataclasses.replace(STANDARD, name="two_balls", num_balls=(2, 2)),
    "three_balls": dataclasses.replace(STANDARD, name="three_balls", num_balls=(3, 3)),
    "fast": dataclasses.replace(STANDARD, name="fast", speed_scale=1.5),
    "small": dataclasses.replace(STANDARD, name="small", radius_px=(1.5, 2.5)),
    "large": dataclasses.replace(STANDARD, name="large", radius_px=(5.0, 7.0)),
    "noisy": dataclasses.replace(STANDARD, name="noisy", noise_rms=0.02),
}


# ------------------------------------------------------------------------------------------------ splits

# Disjoint seed ranges [start, stop). Train is so large that a training run never repeats a clip.
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 10**9),
    "val": (10**9, 10**9 + 10**6),
    "test": (10**9 + 10**6, 10**9 + 2 * 10**6),
}


def split_seeds(split: str, count: int, start: int = 0) -> list[int]:
    """Seeds ``start .. start + count - 1`` of ``split`` (offsets within the split's range)."""
    if split not in SPLITS:
        raise ValueError(f"split_seeds split: expected one of {sorted(SPLITS)}, got {split!r}")
    low, high = SPLITS[split]
    if count < 0 or start < 0 or low + start + count > high:
        raise ValueError(f"split_seeds: start {start} + count {count} must fit in the {split} split's "
                         f"{high - low} seeds")
    return list(range(low + start, low + start + count))


# ------------------------------------------------------------------------ exactly reproducible arithmetic

def _uniforms(generator: np.random.Generator, count: int) -> np.ndarray:
    """[count] float64 in [0, 1): the top 53 bits of PCG64's raw outputs (stable by the algorithm's definition)."""
    raw = generator.bit_generator.random_raw(count)
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _exp(x: float) -> float:
    """e**x for |x| <= 1: Taylor series in Python floats (every operation exactly rounded, so identical anywhere)."""
    if not -1.0 <= x <= 1.0:
        raise ValueError(f"_exp: argument {x} outside [-1, 1]")
    term = total = 1.0
    for n in range(1, 30):
        term = term * x / n
        total = total + term
        if abs(term) < 1e-20:          # below half an ulp of the result (which is >= 1/e)
            break
    return total


def _cos_sin(x: float) -> tuple[float, float]:
    """(cos x, sin x) for |x| <= 4: Taylor series in Python floats, identical on every machine."""
    if not -4.0 <= x <= 4.0:
        raise ValueError(f"_cos_sin: argument {x} outside [-4, 4]")
    cos_total, sin_total, term = 1.0, 0.0, 1.0
    for n in range(1, 48):
        term = term * x / n
        if n % 4 == 1:
            sin_total = sin_total + term
        elif n % 4 == 2:
            cos_total = cos_total - term
        elif n % 4 == 3:
            sin_total = sin_total - term
        else:
            cos_total = cos_total + term
        if abs(term) < 1e-20:          # the remaining terms cannot change a result of size > 1e-4 any more
            break
    return cos_total, sin_total


def _damped_phasor(decay_per_sample: float, radians_per_sample: float, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts [length] of z**k, z = exp(-decay + i radians), k = 0 .. length - 1, float64.

    Built by doubling (the second half of a table is the first half times z**n), each complex product as separate
    ufuncs, so the table is the same on every machine.
    """
    step_re, step_im = _cos_sin(radians_per_sample)
    rho = _exp(-decay_per_sample)
    power_re, power_im = rho * step_re, rho * step_im              # z**n for n = current table length
    re, im = np.ones(1), np.zeros(1)
    while re.shape[0] < length:
        new_re = np.subtract(np.multiply(re, power_re), np.multiply(im, power_im))
        new_im = np.add(np.multiply(re, power_im), np.multiply(im, power_re))
        re, im = np.concatenate([re, new_re]), np.concatenate([im, new_im])
        power_re, power_im = power_re * power_re - power_im * power_im, 2.0 * power_re * power_im
    return re[:length], im[:length]


# --------------------------------------------------------------------------------------------- physics

SURFACES = ("floor", "wall", "ceiling")
_MAX_EVENTS_PER_BALL = 10_000


@dataclass(frozen=True)
class BallPath:
    """The exact trajectory of one ball: free flight between impacts, one segment per flight.

    Segment s starts at ``segment_start_s[s]`` at ``segment_start_xy_px[s]`` with velocity
    ``segment_velocity_px_per_s[s]`` (x right, y down) and, if ``segment_falling[s]``, accelerates downward by
    ``gravity_px_per_s2`` (a ball that has come to rest on the floor rolls, no longer falling).
    ``impacts`` is this ball's impacts in time order, each ``{"time_s", "surface", "speed_px_per_s"}`` where the
    speed is the normal component just before the impact.
    """

    radius_px: float
    size_px: int
    gravity_px_per_s2: float
    segment_start_s: np.ndarray           # [S] float64, segment_start_s[0] = 0
    segment_start_xy_px: np.ndarray       # [S, 2] float64
    segment_velocity_px_per_s: np.ndarray  # [S, 2] float64
    segment_falling: np.ndarray           # [S] bool
    impacts: tuple[dict, ...]

    def state_at(self, time_s) -> tuple[np.ndarray, np.ndarray]:
        """Centres [N, 2] and velocities [N, 2] (px, px/s) at the times [N] (s). At an impact time exactly, the
        velocity is the one after the impact."""
        times = np.atleast_1d(np.asarray(time_s, dtype=np.float64))
        index = np.searchsorted(self.segment_start_s, times, side="right") - 1
        index = np.clip(index, 0, None)
        dt = times - self.segment_start_s[index]
        start, velocity = self.segment_start_xy_px[index], self.segment_velocity_px_per_s[index]
        gravity = np.where(self.segment_falling[index], self.gravity_px_per_s2, 0.0)
        x = start[:, 0] + velocity[:, 0] * dt
        y = start[:, 1] + velocity[:, 1] * dt + 0.5 * gravity * dt * dt
        centres = np.stack([x, y], axis=1)
        velocities = np.stack([velocity[:, 0], velocity[:, 1] + gravity * dt], axis=1)
        return centres, velocities


def simulate_ball(start_xy_px: tuple[float, float], velocity_px_per_s: tuple[float, float], radius_px: float,
                  restitution: float, gravity_px_per_s2: float, size_px: int, seconds: float,
                  rest_speed_px_per_s: float = 3.0) -> BallPath:
    """Event-driven flight of one ball in the box [0, size_px]^2 from t = 0 to ``seconds``.

    Between impacts the motion is solved in closed form, so each impact time is the exact root of the flight
    equation (no time step, no frame quantisation): walls by a linear equation, floor and ceiling by the quadratic
    ``y0 + vy t + g t^2 / 2 = surface``, in the cancellation-free form of its root. At an impact the normal velocity
    is reversed and scaled by ``restitution``; the tangential one is kept. Balls do not collide with each other.
    """
    x, y = float(start_xy_px[0]), float(start_xy_px[1])
    vx, vy = float(velocity_px_per_s[0]), float(velocity_px_per_s[1])
    g, r = float(gravity_px_per_s2), float(radius_px)
    left, right, ceiling, floor = r, size_px - r, r, size_px - r
    if not (left <= x <= right and ceiling <= y <= floor):
        raise ValueError(f"simulate_ball start_xy_px: the centre {start_xy_px} must lie in the box "
                         f"[{left}, {right}] x [{ceiling}, {floor}] for radius {r}")
    falling = True
    t = 0.0
    segments = [(t, x, y, vx, vy, falling)]
    impacts = []
    for _ in range(_MAX_EVENTS_PER_BALL):
        if vx > 0:
            dt_wall = max((right - x) / vx, 0.0)
        elif vx < 0:
            dt_wall = max((left - x) / vx, 0.0)
        else:
            dt_wall = math.inf
        dt_floor = dt_ceiling = math.inf
        if falling:
            drop = max(floor - y, 0.0)
            if vy < 0:        # rising: the larger root, no cancellation in -vy + sqrt(...)
                dt_floor = (-vy + math.sqrt(vy * vy + 2.0 * g * drop)) / g
            elif vy > 0 or drop > 0:
                dt_floor = 2.0 * drop / (vy + math.sqrt(vy * vy + 2.0 * g * drop))
            else:
                dt_floor = 0.0
            room = max(y - ceiling, 0.0)
            if vy < 0 and vy * vy >= 2.0 * g * room:
                dt_ceiling = 2.0 * room / (-vy + math.sqrt(vy * vy - 2.0 * g * room))
        dt, surface = min((dt_floor, "floor"), (dt_wall, "wall"), (dt_ceiling, "ceiling"))
        if t + dt >= seconds:
            break
        x = x + vx * dt
        if falling:
            y = y + vy * dt + 0.5 * g * dt * dt
            vy = vy + g * dt
        t = t + dt
        if surface == "wall":
            x = right if vx > 0 else left
            speed = abs(vx)
            vx = -restitution * vx
        elif surface == "floor":
            y, speed = floor, vy
            vy = -restitution * vy
            if -vy < rest_speed_px_per_s:
                vy, falling = 0.0, False
        else:
            y, speed = ceiling, -vy
            vy = -restitution * vy
        impacts.append({"time_s": t, "surface": surface, "speed_px_per_s": speed})
        segments.append((t, x, y, vx, vy, falling))
    else:
        raise RuntimeError(f"simulate_ball: more than {_MAX_EVENTS_PER_BALL} impacts in {seconds} s")
    table = np.array([s[:5] for s in segments], dtype=np.float64)
    return BallPath(radius_px=r, size_px=size_px, gravity_px_per_s2=g, segment_start_s=table[:, 0],
                    segment_start_xy_px=table[:, 1:3], segment_velocity_px_per_s=table[:, 3:5],
                    segment_falling=np.array([s[5] for s in segments]), impacts=tuple(impacts))


# ------------------------------------------------------------------------------------------------ scene

@dataclass(frozen=True)
class _Ball:
    kind: BallClass
    radius_px: float
    restitution: float
    path: BallPath


_UNIFORMS_PER_BALL = 8
_SHUFFLE_UNIFORMS = 8                                # enough for any palette (at most len(BALL_CLASSES) colours)
_SCENE_UNIFORMS = 1 + _SHUFFLE_UNIFORMS + 3 * _UNIFORMS_PER_BALL   # count, colour shuffle, 3 ball slots


def _sample_balls(uniforms: np.ndarray, config: BounceBenchConfig) -> list[_Ball]:
    """The balls of one clip from ``_SCENE_UNIFORMS`` uniforms in a fixed layout: every ball slot always draws
    its numbers, so ball k of a seed is the same ball whatever the number of balls."""
    def between(u, bounds):
        return bounds[0] + float(u) * (bounds[1] - bounds[0])

    low, high = config.num_balls
    count = low + min(int(uniforms[0] * (high - low + 1)), high - low)
    palette = list(config.palette)
    for i in range(len(palette) - 1):       # Fisher-Yates: distinct colours, so each ball has its own sound
        j = i + min(int(uniforms[1 + i] * (len(palette) - i)), len(palette) - i - 1)
        palette[i], palette[j] = palette[j], palette[i]
    s = config.speed_scale
    gravity = config.gravity_px_per_s2 * s * s
    balls = []
    for k in range(count):
        first = 1 + _SHUFFLE_UNIFORMS + k * _UNIFORMS_PER_BALL
        u = uniforms[first:first + _UNIFORMS_PER_BALL]
        radius = between(u[0], config.radius_px)
        room = config.size_px - 2.0 * radius
        apex = between(u[1], config.apex_fraction) * room              # height above the floor, px
        height = float(u[2]) * min(apex, room)                         # starting height above the floor
        rising = u[3] < 0.5
        vy = math.sqrt(2.0 * gravity * (apex - height)) * (-1.0 if rising else 1.0)
        vx = between(u[4], config.horizontal_speed_px_per_s) * s * (-1.0 if u[5] < 0.5 else 1.0)
        x = radius + float(u[6]) * room
        restitution = between(u[7], config.restitution)
        path = simulate_ball((x, config.size_px - radius - height), (vx, vy), radius, restitution, gravity,
                             config.size_px, config.seconds, config.rest_speed_px_per_s * s)
        balls.append(_Ball(BALL_CLASSES[palette[k]], radius, restitution, path))
    return balls


def caption_for(kinds: Iterable[BallClass]) -> str:
    """'a red ball bouncing, high clicks'; 'an orange ball and a blue ball bouncing, bright pings and low thuds';
    'a red ball, a green ball and a blue ball bouncing, high clicks, wooden knocks and low thuds' (balls and
    sounds in the same order)."""
    kinds = list(kinds)

    def listing(words):
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

    def article(word):
        return "an" if word[0] in "aeiou" else "a"

    return (f"{listing([f'{article(k.colour_name)} {k.colour_name} ball' for k in kinds])} bouncing, "
            f"{listing([k.sound_words for k in kinds])}")


# --------------------------------------------------------------------------------------------- rendering

def _render(ball_lists: list[list[_Ball]], config: BounceBenchConfig) -> np.ndarray:
    """Frames [B, F, H, W, 3] float32 in 0..1 for B clips, all clips at once (one vectorised pass per ball slot).

    Each ball is a disc with a one-pixel linear edge ramp (coverage = clip(radius + 0.5 - distance, 0, 1) at the
    pixel centre, the area-coverage of a disc to first order), painted over the background in ball order.
    Absent balls of a slot get zero coverage, which leaves the pixels bit-for-bit unchanged, so a clip renders
    the same alone or in any batch.
    """
    b, f, size = len(ball_lists), config.num_frames, config.size_px
    frame_times = np.arange(f, dtype=np.float64) / config.fps
    pixel_centres = np.arange(size, dtype=np.float64) + 0.5
    # Channels first while painting (3 planes of [B, F, H, W]): blending along a last axis of 3 is twice as slow.
    planes = np.empty((3, b, f, size, size), dtype=np.float32)
    for channel in range(3):
        planes[channel] = np.float32(config.background_rgb[channel])
    for slot in range(max(len(balls) for balls in ball_lists)):
        centres = np.zeros((b, f, 2))
        radius = np.full((b, 1, 1, 1), -1.0, dtype=np.float32)        # coverage 0 everywhere
        rgb = np.zeros((3, b, 1, 1, 1), dtype=np.float32)
        for i, balls in enumerate(ball_lists):
            if slot < len(balls):
                centres[i] = balls[slot].path.state_at(frame_times)[0]
                radius[i] = balls[slot].radius_px + 0.5
                rgb[:, i] = np.asarray(balls[slot].kind.rgb, dtype=np.float32)[:, None, None, None]
        dx = (pixel_centres[None, None, :] - centres[:, :, 0, None]).astype(np.float32)     # [B, F, W]
        dy = (pixel_centres[None, None, :] - centres[:, :, 1, None]).astype(np.float32)     # [B, F, H]
        distance = np.square(dy)[:, :, :, None] + np.square(dx)[:, :, None, :]             # [B, F, H, W]
        np.sqrt(distance, out=distance)
        coverage = np.subtract(radius, distance, out=distance)
        np.clip(coverage, 0.0, 1.0, out=coverage)
        for channel in range(3):                     # plane += coverage * (colour - plane)
            step = np.subtract(rgb[channel], planes[channel])
            step *= coverage
            planes[channel] += step
    return np.ascontiguousarray(planes.transpose(1, 2, 3, 4, 0))


# ----------------------------------------------------------------------------------------------- sound

@lru_cache(maxsize=64)
def _tone_tables(kind: BallClass, sample_rate_hz: int, length: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Per harmonic h: (re, im) [length] of exp(-k / (fs decay_h)) * exp(i 2 pi f_h k / fs), k = 0 .. length-1."""
    tables = []
    for h, frequency in enumerate(kind.partial_hz, start=1):
        decay_per_sample = h / (kind.decay_s * sample_rate_hz)
        radians_per_sample = 2.0 * math.pi * frequency / sample_rate_hz
        re, im = _damped_phasor(decay_per_sample, radians_per_sample, length)
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
        envelope = _exp(-offset * h / (kind.decay_s * fs))
        cos_phase, sin_phase = _cos_sin(offset * 2.0 * math.pi * kind.fundamental_hz * h / fs)
        scale = amplitude * (gain / total_gain) * envelope
        # Im((c_re + i c_im)(re + i im)) = c_re im + c_im re
        tone = np.add(tone, np.add(np.multiply(im[:length], scale * cos_phase),
                                   np.multiply(re[:length], scale * sin_phase)))
    waveform[first:first + length] = np.add(waveform[first:first + length], tone)


def _background_noise(generator: np.random.Generator, config: BounceBenchConfig) -> np.ndarray:
    """[T] float64 noise of RMS ``noise_rms``: uniform white noise through the binomial low-pass [1 4 6 4 1] / 16
    (-12 dB at 2 kHz for 8 kHz audio), so most of it is in the band the embedded codec keeps."""
    t = config.num_samples
    white = np.subtract(np.multiply(_uniforms(generator, t + 4), 2.0), 1.0)     # variance 1/3
    filtered = np.add(np.add(white[:t], white[4:]), np.multiply(np.add(white[1:t + 1], white[3:t + 3]), 4.0))
    filtered = np.add(filtered, np.multiply(white[2:t + 2], 6.0))
    # Variance after the filter: (1 + 16 + 36 + 16 + 1) / 256 / 3 = 70 / 768 (times 16^2 before dividing by 16).
    return np.multiply(filtered, config.noise_rms / (16.0 * math.sqrt(70.0 / 768.0)))


def _soundtrack(balls: list[_Ball], noise: np.ndarray, config: BounceBenchConfig) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------------ clips

@dataclass
class BounceClip:
    """One clip and its ground truth.

    frames [F, H, W, 3] float32 in 0..1 (frame k at time k / fps); waveform [1, T] float32 in -1..1 (sample n at
    n / sample_rate_hz). ``impacts``: all balls' impacts in time order, each ``{"time_s", "ball", "surface"
    ("floor" | "wall" | "ceiling"), "speed_px_per_s"}`` (normal speed before the impact). ``centres_px``
    [num_balls, F, 2]: each ball's centre (x, y) in px at each frame. ``balls``: per ball its colour, rgb,
    radius_px, restitution, sound_words, fundamental_hz. ``paths``: the exact trajectories (``BallPath``).
    """

    seed: int
    config_name: str
    frames: torch.Tensor
    waveform: torch.Tensor
    fps: float
    sample_rate_hz: int
    seconds: float
    caption: str
    impacts: list[dict]
    balls: list[dict]
    centres_px: np.ndarray
    paths: tuple[BallPath, ...] = field(repr=False)

    @property
    def impact_times_s(self) -> list[float]:
        return [impact["time_s"] for impact in self.impacts]

    def ground_truth(self) -> dict:
        """Everything but the media, JSON-ready (floats as exact decimal reprs)."""
        return {
            "seed": self.seed, "config": self.config_name, "caption": self.caption, "seconds": self.seconds,
            "fps": self.fps, "sample_rate_hz": self.sample_rate_hz, "num_frames": int(self.frames.shape[0]),
            "num_samples": int(self.waveform.shape[-1]), "size_px": int(self.frames.shape[1]),
            "impacts": self.impacts, "balls": self.balls,
            "centres_px": [[[float(v) for v in xy] for xy in ball] for ball in self.centres_px],
        }


def _scene(seed: int, config: BounceBenchConfig) -> tuple[list[_Ball], np.ndarray]:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"BounceBench seed: expected a non-negative integer, got {seed!r}")
    generator = np.random.Generator(np.random.PCG64(int(seed)))
    balls = _sample_balls(_uniforms(generator, _SCENE_UNIFORMS), config)
    return balls, _soundtrack(balls, _background_noise(generator, config), config)


def make_clips(seeds: Iterable[int], config: BounceBenchConfig = STANDARD) -> list[BounceClip]:
    """One ``BounceClip`` per seed, rendered in one batched pass; identical to ``make_clip`` seed by seed."""
    seeds = [int(s) for s in seeds]
    scenes = [_scene(seed, config) for seed in seeds]
    frames = _render([balls for balls, _ in scenes], config)
    frame_times = np.arange(config.num_frames, dtype=np.float64) / config.fps
    clips = []
    for i, (seed, (balls, waveform)) in enumerate(zip(seeds, scenes)):
        impacts = sorted(({"time_s": impact["time_s"], "ball": k, "surface": impact["surface"],
                           "speed_px_per_s": impact["speed_px_per_s"]}
                          for k, ball in enumerate(balls) for impact in ball.path.impacts),
                         key=lambda impact: (impact["time_s"], impact["ball"]))
        clips.append(BounceClip(
            seed=seed, config_name=config.name, frames=torch.from_numpy(frames[i]),
            waveform=torch.from_numpy(waveform.astype(np.float32)[None]), fps=config.fps,
            sample_rate_hz=config.sample_rate_hz, seconds=config.seconds,
            caption=caption_for(ball.kind for ball in balls), impacts=impacts,
            balls=[{"colour": b.kind.colour_name, "rgb": list(b.kind.rgb), "radius_px": b.radius_px,
                    "restitution": b.restitution, "sound_words": b.kind.sound_words,
                    "fundamental_hz": b.kind.fundamental_hz} for b in balls],
            centres_px=np.stack([b.path.state_at(frame_times)[0] for b in balls]),
            paths=tuple(b.path for b in balls)))
    return clips


def make_clip(seed: int, config: BounceBenchConfig = STANDARD) -> BounceClip:
    """The clip of ``seed`` under ``config``: bit-identical on every machine."""
    return make_clips([seed], config)[0]


def make_batch(seeds: Iterable[int], config: BounceBenchConfig = STANDARD
               ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The training path: frames [B, F, H, W, 3] float32 in 0..1, waveform [B, 1, T] float32, captions [B].

    Equal to stacking ``make_clip`` seed by seed. About 17 ms for 32 standard clips on one CPU core
    (docs/bouncebench.md).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("make_batch seeds: expected at least one seed, got none")
    scenes = [_scene(seed, config) for seed in seeds]
    frames = _render([balls for balls, _ in scenes], config)
    waveform = np.stack([w for _, w in scenes]).astype(np.float32)[:, None]
    captions = [caption_for(ball.kind for ball in balls) for balls, _ in scenes]
    return torch.from_numpy(frames), torch.from_numpy(waveform), captions


# --------------------------------------------------------------------------------------------- dataset

class BounceClipFiles(NamedTuple):
    """The three files written for one clip (same stem)."""

    video_path: Path            # .mp4, h264 + aac
    caption_path: Path          # .txt, the caption alone (no trailing newline)
    ground_truth_path: Path     # .json, BounceClip.ground_truth()



def write_dataset(out_dir: str | os.PathLike, split: str, count: int, config: BounceBenchConfig = STANDARD,
                  start: int = 0, progress: bool = True) -> list[BounceClipFiles]:
    """Write clips ``start .. start + count - 1`` of ``split`` to ``out_dir`` as ``{config}_{split}_{seed}.mp4``
    (h264 + aac), ``.txt`` (caption) and ``.json`` (ground truth), each written atomically; a tqdm bar shows
    progress. Returns the files in seed order."""
    from tqdm.auto import tqdm

    from ..files.media_io import write_mp4

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in tqdm(split_seeds(split, count, start), desc=f"BounceBench {config.name} {split}", unit="clip",
                     disable=not progress):
        clip = make_clip(seed, config)
        stem = out_dir / f"{config.name}_{split}_{seed:010d}"
        files = BounceClipFiles(stem.with_suffix(".mp4"), stem.with_suffix(".txt"), stem.with_suffix(".json"))
        write_mp4(files.video_path, clip.frames, clip.fps, clip.waveform, clip.sample_rate_hz)
        write_text_atomic(files.caption_path, clip.caption)
        write_text_atomic(files.ground_truth_path, json.dumps(clip.ground_truth(), indent=1))
        written.append(files)
    return written
