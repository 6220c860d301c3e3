"""BounceBench: seeded synthetic audio-video clips of bouncing balls whose every sound event has a known, exact time.

A clip is ``seconds`` of a plain dark square (``size_px`` x ``size_px``, ``fps`` frames per second) in which 1-3
coloured balls fall under gravity and bounce off the floor, the walls and the ceiling, plus a mono soundtrack
(``sample_rate_hz``) in which every impact emits a short decaying tone at its exact, sub-frame and sub-sample time.
A ball's colour fixes its sound (pitch, harmonics, decay), its impact speed the loudness; the caption names both
("a red ball bouncing, high clicks"). The ground truth (impact times, surfaces, speeds, per-frame centres) comes
with every clip, so training can use the clips and sync metrics can be checked against them. docs/bouncebench.md
has the design and measured statistics.

Conventions (pixel coordinates, frame and sample times) are bouncebench/config.py's.

Determinism: the same seed and config give bit-identical clips on every machine (bouncebench/exact_math.py says how).
The parts: config.py (ball classes, knobs, variants, seed splits), physics.py (exact flight), scene.py (the balls of
a seed, the caption), render.py (frames), sound.py (the soundtrack), export.py (clips as mp4 + caption + ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from .config import STANDARD, BounceBenchConfig
from .exact_math import uniforms
from .physics import BallPath
from .render import render_frames
from .scene import SCENE_UNIFORMS, Ball, caption_for, sample_balls
from .sound import background_noise, soundtrack

__all__ = ["BounceClip", "make_clip", "make_clips", "make_batch"]


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


def _scene(seed: int, config: BounceBenchConfig) -> tuple[list[Ball], np.ndarray]:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"BounceBench seed: expected a non-negative integer, got {seed!r}")
    generator = np.random.Generator(np.random.PCG64(int(seed)))
    balls = sample_balls(uniforms(generator, SCENE_UNIFORMS), config)
    return balls, soundtrack(balls, background_noise(generator, config), config)


def make_clips(seeds: Iterable[int], config: BounceBenchConfig = STANDARD) -> list[BounceClip]:
    """One ``BounceClip`` per seed, rendered in one batched pass; identical to ``make_clip`` seed by seed."""
    seeds = [int(s) for s in seeds]
    scenes = [_scene(seed, config) for seed in seeds]
    frames = render_frames([balls for balls, _ in scenes], config)
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
    frames = render_frames([balls for balls, _ in scenes], config)
    waveform = np.stack([w for _, w in scenes]).astype(np.float32)[:, None]
    captions = [caption_for(ball.kind for ball in balls) for balls, _ in scenes]
    return torch.from_numpy(frames), torch.from_numpy(waveform), captions
