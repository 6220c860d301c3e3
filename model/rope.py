"""Rotary position embedding shared by the two towers, on one time axis.

Each attention head of width d has c = d/2 rotation pairs, interleaved (x[2k], x[2k+1]). The video tower splits
them over (time, height, width) as [c - 2(c//3), c//3, c//3]; the audio tower rotates only the first
c - 2(c//3) pairs (the temporal slice, so audio and video time share frequencies) with its positions scaled by
``rope_scale`` (= video latent rate / audio latent rate) and leaves the other pairs unrotated. Cross-modal
attention rotates queries with their own tower's angles and keys with the other tower's, so attention between
a video token and an audio token depends on their distance in seconds.

Angles are computed in float64 (positions times frequencies reach ~1e3 rad) and applied in float32.
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0


def pair_split(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to (time, height, width) for a head of width ``head_dim``."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _inverse_frequencies(num_pairs: int) -> torch.Tensor:
    """[num_pairs] float64: theta^(-2k / n) with n = 2 * num_pairs, the dims of this slice."""
    n = 2 * num_pairs
    return ROPE_THETA ** (-torch.arange(0, n, 2, dtype=torch.float64) / n)


def video_angles(grid: tuple[int, int, int], head_dim: int, device=None) -> torch.Tensor:
    """Angles [F*H*W, head_dim/2] (float64) for video tokens flattened (f, h, w) row-major."""
    f, h, w = grid
    pairs_t, pairs_h, pairs_w = pair_split(head_dim)
    ang_t = torch.outer(torch.arange(f, dtype=torch.float64), _inverse_frequencies(pairs_t))
    ang_h = torch.outer(torch.arange(h, dtype=torch.float64), _inverse_frequencies(pairs_h))
    ang_w = torch.outer(torch.arange(w, dtype=torch.float64), _inverse_frequencies(pairs_w))
    angles = torch.cat([
        ang_t[:, None, None, :].expand(f, h, w, pairs_t),
        ang_h[None, :, None, :].expand(f, h, w, pairs_h),
        ang_w[None, None, :, :].expand(f, h, w, pairs_w),
    ], dim=-1)
    return angles.reshape(f * h * w, head_dim // 2).to(device)


def audio_angles(length: int, head_dim: int, rope_scale: float, device=None) -> torch.Tensor:
    """Angles [length, head_dim/2] (float64): temporal pairs at scaled positions, the rest zero (unrotated)."""
    pairs_t = pair_split(head_dim)[0]
    positions = torch.arange(length, dtype=torch.float64)
    ang_t = torch.outer(positions, rope_scale * _inverse_frequencies(pairs_t))
    rest = torch.zeros(length, head_dim // 2 - pairs_t, dtype=torch.float64)
    return torch.cat([ang_t, rest], dim=-1).to(device)


class Rotation:
    """cos/sin of a token sequence's angles, ready to apply to [B, L, heads, head_dim] tensors."""

    def __init__(self, angles: torch.Tensor):
        # [L, 1, c] so it broadcasts over heads; fp32 is enough once the angle itself is exact.
        self.cos = torch.cos(angles).to(torch.float32)[:, None, :]
        self.sin = torch.sin(angles).to(torch.float32)[:, None, :]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, heads, head_dim] -> rotated, same shape and dtype."""
        pairs = x.float().unflatten(-1, (-1, 2))
        real, imag = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([real * self.cos - imag * self.sin, real * self.sin + imag * self.cos], dim=-1)
        return rotated.flatten(-2).to(x.dtype)
