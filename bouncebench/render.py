"""BounceBench pictures: the balls of a batch of scenes painted over the background, frame by frame."""

from __future__ import annotations

import numpy as np

from .config import BounceBenchConfig
from .scene import Ball

__all__ = ["render_frames"]


def render_frames(ball_lists: list[list[Ball]], config: BounceBenchConfig) -> np.ndarray:
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
