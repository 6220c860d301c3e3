"""Frames cut into the codec blocks both embedded video codecs work on, and the input checks they share.

A block is ``temporal_stride`` frames x ``spatial_stride`` rows x ``spatial_stride`` columns x RGB, flattened in that
order; a clip ``[B, F, H, W, 3]`` is ``[B, F / ts, H / ss, W / ss]`` blocks, one per latent position.
"""

from __future__ import annotations

import torch


def require_float(name: str, tensor: torch.Tensor, expected: str) -> None:
    """Refuse anything but a floating-point tensor, naming ``name`` and the ``expected`` layout."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor {expected}, received {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name}: expected floating-point values {expected}, received dtype {tensor.dtype} "
                         f"with shape {list(tensor.shape)} (convert 8-bit data with x.float() / 255 first)")


def check_frames(name: str, frames: torch.Tensor, temporal_stride: int, spatial_stride: int) -> None:
    """Frames must be ``[B, F, H, W, 3]`` floats with F a multiple of the temporal and H, W of the spatial stride."""
    ts, ss = temporal_stride, spatial_stride
    expected = f"[B, F, H, W, 3] with F a multiple of {ts} and H, W multiples of {ss}"
    require_float(name, frames, expected)
    shape = list(frames.shape)
    if (frames.ndim != 5 or shape[-1] != 3 or shape[1] < ts or shape[1] % ts or shape[2] < ss or shape[2] % ss
            or shape[3] < ss or shape[3] % ss):
        hint = " (add a batch dimension with frames[None])" if frames.ndim == 4 else ""
        raise ValueError(f"{name}: expected {expected}, received {shape}{hint}")


def check_latent(name: str, latent: torch.Tensor, channels: int) -> None:
    """A video latent must be ``[B, channels, Fv, Hv, Wv]`` floats."""
    require_float(name, latent, f"[B, {channels}, Fv, Hv, Wv]")
    if latent.ndim != 5 or latent.shape[1] != channels:
        raise ValueError(f"{name}: expected [B, {channels}, Fv, Hv, Wv], received {list(latent.shape)}")


def frames_to_blocks(frames: torch.Tensor, temporal_stride: int, spatial_stride: int) -> torch.Tensor:
    """frames [B, F, H, W, 3] -> blocks [B, F/ts, H/ss, W/ss, ts * ss * ss * 3] (frame, row, column, rgb order)."""
    b, f, h, w, _ = frames.shape
    ts, ss = temporal_stride, spatial_stride
    return (frames.reshape(b, f // ts, ts, h // ss, ss, w // ss, ss, 3)
            .permute(0, 1, 3, 5, 2, 4, 6, 7)
            .reshape(b, f // ts, h // ss, w // ss, ts * ss * ss * 3))


def blocks_to_frames(blocks: torch.Tensor, temporal_stride: int, spatial_stride: int) -> torch.Tensor:
    """blocks [B, Fv, Hv, Wv, ts * ss * ss * 3] -> frames [B, ts Fv, ss Hv, ss Wv, 3]: ``frames_to_blocks`` undone."""
    b, fv, hv, wv, _ = blocks.shape
    ts, ss = temporal_stride, spatial_stride
    return (blocks.reshape(b, fv, hv, wv, ts, ss, ss, 3)
            .permute(0, 1, 4, 2, 5, 3, 6, 7)
            .reshape(b, fv * ts, hv * ss, wv * ss, 3))
