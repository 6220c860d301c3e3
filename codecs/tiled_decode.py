"""Decoding a latent in overlapping spatial tiles, so a decoder's peak memory is one tile's instead of the whole
frame's (``WanVideoCodec(tiled=True)``): where the tiles start, and the weights that cross-fade neighbours in the
strips they share. Generic over the decoder: any map from a latent tile ``[B, C, Fv, h, w]`` to pixels
``[B, 3, F, h * scale, w * scale]``."""

from __future__ import annotations

from collections.abc import Callable

import torch


def decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], raw: torch.Tensor, tile: int, overlap: int,
                 scale: int) -> torch.Tensor:
    """raw latent [B, Cv, Fv, Hv, Wv] -> pixels [B, 3, F, scale Hv, scale Wv], one spatial tile at a time.

    ``decode`` maps one latent tile to its pixels; ``tile`` is the tile side and ``overlap`` the strip neighbours
    share, both in latent positions; ``scale`` is the decoder's spatial stride (pixels per latent position).
    Tiles overlap; in each shared strip the outer quarter of either tile (decoded next to its border) is dropped
    and the middle half cross-fades, so a pixel only takes values decoded with at least a quarter strip of real
    context around it.
    """
    s = scale
    b, _, fv, hv, wv = raw.shape
    rows, cols = _tile_starts(hv, tile, overlap), _tile_starts(wv, tile, overlap)
    tile_h, tile_w = min(tile, hv), min(tile, wv)
    out = None
    weight_sum = torch.zeros(hv * s, wv * s, device=raw.device)
    for i, y in enumerate(rows):
        weight_y = _tile_weights(rows, i, tile_h, s, raw.device)
        for j, x in enumerate(cols):
            weight_x = _tile_weights(cols, j, tile_w, s, raw.device)
            pixels = decode(raw[..., y:y + tile_h, x:x + tile_w])
            if out is None:
                out = torch.zeros(b, pixels.shape[1], pixels.shape[2], hv * s, wv * s, device=raw.device)
            weights = weight_y[:, None] * weight_x[None, :]             # [tile_h * s, tile_w * s]
            py, px = slice(y * s, (y + tile_h) * s), slice(x * s, (x + tile_w) * s)
            out[..., py, px] += pixels * weights
            weight_sum[py, px] += weights
    return out / weight_sum


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start indices of the fewest tiles of ``tile`` positions that cover ``[0, length)`` with neighbours sharing at
    least ``overlap`` positions; spread evenly, the first starting at 0 and the last ending at ``length``."""
    if length <= tile:
        return [0]
    count = 1 + -(-(length - tile) // (tile - overlap))
    return [round(k * (length - tile) / (count - 1)) for k in range(count)]


def _edge_ramp(overlap_px: int, device) -> torch.Tensor:
    """Weights [overlap_px] of the tile that enters a shared strip, from the strip's outer edge inwards.

    The outer quarter is 0: those pixels were decoded next to the tile's border, where the decoder saw zero padding
    instead of the neighbour's content. The middle half rises linearly, the last quarter is 1. The leaving tile
    gets the mirror image, so the two weights sum to 1 across the strip.
    """
    margin = overlap_px // 4
    ramp = torch.zeros(overlap_px, device=device)
    rising = overlap_px - 2 * margin
    ramp[margin:margin + rising] = (torch.arange(rising, device=device) + 0.5) / rising
    ramp[margin + rising:] = 1.0
    return ramp


def _tile_weights(starts: list[int], index: int, tile: int, scale: int, device) -> torch.Tensor:
    """Blending weights [tile * scale] (pixels) of tile ``index`` along one axis."""
    weights = torch.ones(tile * scale, device=device)
    if index > 0:
        shared = (starts[index - 1] + tile - starts[index]) * scale
        weights[:shared] = _edge_ramp(shared, device)
    if index + 1 < len(starts):
        shared = (starts[index] + tile - starts[index + 1]) * scale
        weights[tile * scale - shared:] = _edge_ramp(shared, device).flip(0)
    return weights
