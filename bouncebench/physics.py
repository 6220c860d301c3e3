"""BounceBench physics: the exact, event-driven flight of one ball in the box (no time step, no frame quantisation).

Coordinates as in bouncebench/config.py: x to the right and y downward in pixels, the floor at y = size_px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SURFACES", "BallPath", "simulate_ball"]


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
