"""A BounceBench scene: which balls a clip holds (count, colours, sizes, launches) from its seed's uniforms, and the
caption that names them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .config import BALL_CLASSES, BallClass, BounceBenchConfig
from .physics import BallPath, simulate_ball

__all__ = ["Ball", "SCENE_UNIFORMS", "sample_balls", "caption_for"]


@dataclass(frozen=True)
class Ball:
    """One ball of a scene: its class (colour and sound), size, bounciness and exact path."""

    kind: BallClass
    radius_px: float
    restitution: float
    path: BallPath


_UNIFORMS_PER_BALL = 8
_SHUFFLE_UNIFORMS = 8                                # enough for any palette (at most len(BALL_CLASSES) colours)
SCENE_UNIFORMS = 1 + _SHUFFLE_UNIFORMS + 3 * _UNIFORMS_PER_BALL   # count, colour shuffle, 3 ball slots


def sample_balls(uniforms: np.ndarray, config: BounceBenchConfig) -> list[Ball]:
    """The balls of one clip from ``SCENE_UNIFORMS`` uniforms in a fixed layout: every ball slot always draws
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
        balls.append(Ball(BALL_CLASSES[palette[k]], radius, restitution, path))
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
