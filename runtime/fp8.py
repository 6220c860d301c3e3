"""Layers that store their weights in fp8 and compute in the input's dtype (outside ComfyUI).

An ``operations`` namespace for ``JointModel(config, operations)``: Linear / Conv1d / Conv3d whose weight (and
bias) stay in whatever dtype they were loaded in, float8_e4m3fn for an fp8 checkpoint, and are cast to the input's
dtype and device on every call. Memory holds one byte per weight; the matmuls run in bf16 (or whatever the input
is), as Ovi's own fp8 mode does. Inside ComfyUI, ``comfy.ops.manual_cast`` does the same and more.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)   # 448: larger values have no e4m3fn code (they become NaN)


def _cast(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.to(device=like.device, dtype=like.dtype, non_blocking=True)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))


class Conv1d(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


FP8_OPS = SimpleNamespace(Linear=Linear, Conv1d=Conv1d, Conv3d=Conv3d)

# Layers whose weights an fp8 checkpoint stores in fp8 (torch's and every operations namespace's subclass of them).
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv3d)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def layer_weight_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the Linear / Conv weights of ``model`` (the tensors fp8 files store in fp8; norms,
    biases and modulation tables stay in full precision)."""
    return {f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if isinstance(module, LAYER_TYPES)}


def quantize_to_fp8(tensor: torch.Tensor) -> torch.Tensor:
    """Round to float8_e4m3fn without a scale (the public Ovi conversion's format), saturating at +-448."""
    return tensor.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
