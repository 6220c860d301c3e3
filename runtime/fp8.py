"""Layers that store their weights in fp8 (outside ComfyUI).

``FP8_OPS``, an ``operations`` namespace for ``JointModel(config, operations)`` (``load_joint_model`` picks it for an
fp8 file): Linear / Conv1d / Conv3d whose weight (and bias) stay in whatever dtype they were loaded in,
float8_e4m3fn for an fp8 checkpoint. Memory holds one byte per weight. Its Linear multiplies through
``fp8_linear`` (runtime/fp8_matmul.py): a scaled fp8 matmul on GPUs with fp8 tensor cores (compute capability
>= 8.9), elsewhere the weight cast to the input's dtype per call, as Ovi's own fp8 mode does. Convolutions always
cast. It is the default, not an option, because the fallback is exact and the fp8 path is faster at a measured,
bounded error; ``FP8_UPCAST_OPS`` keeps the cast everywhere (for comparisons). Inside ComfyUI,
nodes/comfy_bridge.py's ``operations()`` gives ``comfy.ops.manual_cast`` the same fp8 Linear
(``fp8_compute_operations``).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from .fp8_matmul import E4M3_MAX, fp8_linear, quantize_weight_per_channel, upcast_linear

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def _cast(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.to(device=like.device, dtype=like.dtype, non_blocking=True)


class UpcastLinear(nn.Linear):
    """The weight and bias cast to the input's dtype and device on every call (no fp8 matmul anywhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upcast_linear(x, self.weight, self.bias)


class Linear(nn.Linear):
    """``fp8_linear``: a scaled fp8 matmul where the device and shapes allow, else exactly ``UpcastLinear``.
    ``weight_scale`` [N] float32 (a non-persistent buffer, so state dicts keep Ovi's keys): per-output-channel
    scales set by ``quantize_linear_layers``; None for weights stored without scales (Ovi's fp8 file)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.weight_scale)


class Conv1d(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


FP8_OPS = SimpleNamespace(Linear=Linear, Conv1d=Conv1d, Conv3d=Conv3d)
FP8_UPCAST_OPS = SimpleNamespace(Linear=UpcastLinear, Conv1d=Conv1d, Conv3d=Conv3d)

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


def quantize_linear_layers(model: nn.Module) -> int:
    """Round, in place, the full-precision weights of ``model``'s ``FP8_OPS`` Linear layers to float8_e4m3fn with
    per-output-channel scales (``quantize_weight_per_channel``; more accurate than Ovi's unscaled rounding), so that
    they multiply in fp8 where the device can. Layers already in fp8, other layer types and convolutions are left
    as they are. Returns how many layers were quantized."""
    count = 0
    for module in model.modules():
        if isinstance(module, Linear) and not is_fp8(module.weight.dtype):
            weight, scale = quantize_weight_per_channel(module.weight.detach())
            module.weight = nn.Parameter(weight, requires_grad=False)
            module.weight_scale = scale
            count += 1
    return count
