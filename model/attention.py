"""Attention through torch's scaled_dot_product_attention (flash / memory-efficient kernels where available)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None = None,
              visible: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, Lq, heads, d], k/v [B, Lk, heads, d] -> [B, Lq, heads * d].

    ``key_lengths`` [B]: keys at positions >= length are masked out (None: attend to all keys).
    ``visible`` [Lq, Lk] bool: which keys each query may attend, the same for every row (each query needs one).
    """
    mask = None if visible is None else visible.to(q.device)
    if key_lengths is not None:
        if mask is not None:
            raise ValueError("attention: key_lengths and visible cannot be combined")
        positions = torch.arange(k.shape[1], device=k.device)
        mask = (positions[None, :] < key_lengths.to(k.device)[:, None])[:, None, None, :]  # [B, 1, 1, Lk]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)
