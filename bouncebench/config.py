"""What a BounceBench clip is made of: the ball classes (colour and sound), every knob of the generator, the named
out-of-distribution variants, and the disjoint seed splits. bouncebench/clips.py makes the clips.

Conventions: x to the right and y downward in pixels, pixel (row i, column j) centred at (j + 0.5, i + 0.5), so
the floor is the line y = size_px; frame k shows the scene at time k / fps exactly; sample n is time
n / sample_rate_hz.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["BallClass", "MAX_PARTIAL_HZ", "BALL_CLASSES", "BounceBenchConfig", "STANDARD", "VARIANTS", "SPLITS",
           "split_seeds", "clip_seed", "clip_seeds"]


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


def clip_seed(split: str, index: int) -> int:
    """The seed of clip ``index`` of ``split`` (index 0 is the split's first seed); errors name ``index``."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, received {split!r}")
    size = SPLITS[split][1] - SPLITS[split][0]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"index: expected 0..{size - 1} for the {split} split, received {index!r}")
    return split_seeds(split, 1, start=index)[0]


def clip_seeds(split: str, index: int, count: int) -> list[int]:
    """The seeds of clips ``index .. index + count - 1`` of ``split``; errors name ``index`` and ``count``."""
    first = clip_seed(split, index)
    size = SPLITS[split][1] - SPLITS[split][0]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= size - index:
        raise ValueError(f"count: expected 1..{size - index} clips from index {index} of the {split} split, "
                         f"received {count!r}")
    return list(range(first, first + count))
