"""Normalisations computed in float32 whatever the compute dtype.

Wan/Ovi normalise in float32 and round back (the bf16 reference: layer norms and RMSNorm's pow/rsqrt run in
fp32 under autocast). The weights are cast to the input's device on use, so the modules also work when a
memory manager keeps them elsewhere. They are plain modules, not taken from the ``operations`` namespace:
their parameters are tiny and must stay in full precision even when the matmul weights are fp8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm32(nn.Module):
    """LayerNorm over the last dim, computed in fp32, returned in the input dtype. Keys: weight, bias (if affine)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__()
        self.dim, self.eps = dim, eps
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.device, torch.float32)
        bias = None if self.bias is None else self.bias.to(x.device, torch.float32)
        return F.layer_norm(x.float(), (self.dim,), weight, bias, self.eps).to(x.dtype)


class RMSNorm32(nn.Module):
    """RMSNorm over the last dim: the normalisation in fp32, rounded to the input dtype, then the gain in that
    dtype (the order of Wan's WanRMSNorm, which matters for bf16 parity). Key: weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = (x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
        return normed * self.weight.to(x.device, x.dtype)
