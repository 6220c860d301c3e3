"""Scaled fp8 matmuls: Linear layers whose weights are float8_e4m3fn multiply in fp8 where the GPU can.

On a GPU with fp8 tensor cores (CUDA compute capability >= 8.9: Ada, Hopper and later) ``fp8_linear`` quantizes the
activations to e4m3 on the fly, one power-of-two scale per row (per token; one fused Triton kernel,
runtime/fp8_triton.py), and multiplies them with the fp8 weight as stored (per-tensor scale 1, Ovi's fp8 file) or
with per-output-channel scales (``quantize_weight_per_channel``) through ``torch._scaled_mm``: bf16 out, bias added
in the matmul's epilogue.

Everywhere else it takes the upcast path, the weight cast to the input's dtype and ``F.linear``, bit for bit what
runtime/fp8.py's layers did before: on a CPU (torch 2.13 runs ``_scaled_mm`` there, but 4-5x slower than a bf16
matmul), on older GPUs or without Triton, for a weight that is not e4m3fn or whose sides are not multiples of 16
(``_scaled_mm`` refuses those), for a non-float input, and when autograd needs gradients (``_scaled_mm`` has no
backward).

Measured (bench/fp8_matmul.py, H200, torch 2.11, 15,004 tokens of bf16): Ovi's attention projection 3072 -> 3072
0.258 ms against 0.373 in bf16 (x1.45), FFN 3072 -> 14336 1.048 / 1.930 (x1.84), FFN 14336 -> 3072 1.161 / 1.651
(x1.42); a whole Ovi 720x720 5 s forward 625 ms against 707 (attention over 15k tokens is untouched). Error:
quantizing the activations adds 2.66 % relative error to a layer's output against fp32 with the same weights
(e4m3 keeps 3 mantissa bits; bf16 compute adds 0.17 %), about 5-6 % at the end of Ovi's 30 blocks (random weights).

torch._scaled_mm(mat1 [M, K] fp8 row-major, mat2 [K, N] fp8 column-major, scale_a, scale_b, bias, scale_result,
out_dtype, use_fast_accum), as run here on torch 2.11 (CUDA) and 2.13 (CPU; 2.11's CPU kernel takes per-tensor scales
only); torch 2.4 and older returned (out, amax). Row-wise scaling takes scale_a [M, 1] and scale_b [1, N] float32,
contiguous, and on CUDA K and N multiples of 16 (M is free: 15,004 tokens run). Bias: bf16 with a bf16 output.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)   # 448: larger values have no e4m3fn code (they become NaN)
FP8_CAPABILITY = (8, 9)                    # CUDA compute capability of the first GPUs with fp8 tensor cores (Ada)
SCALED_MM_MULTIPLE = 16                    # _scaled_mm's K and N must be multiples of this
COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
OUT_DTYPE = torch.bfloat16                 # the one output dtype every torch version's row-wise kernel takes
# Hopper's fast fp8 accumulation (no periodic promotion to fp32). Chosen by bench/fp8_matmul.py on an H200: same
# error to 4 digits (0.0266) as without it, and 0.04 to 0.25 ms faster per layer.
FAST_ACCUM = True
# A row whose largest |value| is below this (all zeros, say) is scaled as if it reached it: its scale stays a
# positive normal float and its inverse stays finite in fp32.
_AMAX_FLOOR = 2.0 ** -60


_UPCAST_ONLY = [0]     # depth of ``upcast_only`` contexts: > 0 keeps every fp8 layer on the upcast path


@contextlib.contextmanager
def upcast_only():
    """Within it fp8 layers upcast their weights even where fp8 matmuls would apply. Training needs one function:
    a DPO reference pass (no grad: fp8 matmuls) and its policy pass (grad: upcast) must differ only by the LoRA,
    not by activation rounding (~2.7 % per layer), or the preference margin is off from the first step."""
    _UPCAST_ONLY[0] += 1
    try:
        yield
    finally:
        _UPCAST_ONLY[0] -= 1


def fp8_matmul_supported(device: torch.device | str) -> bool:
    """True where fp8 compute pays: a CUDA (not ROCm) device of compute capability >= 8.9 (fp8 tensor cores), a
    torch with ``_scaled_mm`` and Triton for the fused activation quantizer. False on CPUs (``_scaled_mm`` runs
    there in recent torch, but slower than bf16)."""
    device = torch.device(device)
    if device.type != "cuda" or (device.index is None and not torch.cuda.is_available()):
        return False
    return _cuda_fp8(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_fp8(index: int) -> bool:
    """``fp8_matmul_supported`` for CUDA device ``index``, asked once per process (layers ask on every call)."""
    if torch.version.hip is not None or not hasattr(torch, "_scaled_mm") or not torch.cuda.is_available():
        return False
    return _fused_quantizer() is not None and torch.cuda.get_device_capability(index) >= FP8_CAPABILITY


def fp8_matmul_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``fp8_linear(x, weight, ...)`` multiplies in fp8 (else it upcasts): an e4m3fn weight [N, K] with K
    and N multiples of 16, a bf16 / fp16 / fp32 input [..., K] on a device that supports fp8 matmuls, and no
    gradient needed."""
    return (weight.dtype == E4M3 and weight.dim() == 2 and x.dtype in COMPUTE_DTYPES
            and x.shape[-1] == weight.shape[1]
            and weight.shape[0] % SCALED_MM_MULTIPLE == 0 and weight.shape[1] % SCALED_MM_MULTIPLE == 0
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not _UPCAST_ONLY[0] and fp8_matmul_supported(x.device))


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (bf16 / fp16 / fp32) -> (q [M, K] float8_e4m3fn, scale [M, 1] float32) with x ~= q * scale.

    Each row's scale is the smallest power of two with max|row| / scale <= 448: dividing by it is exact, so the only
    rounding is e4m3's own, and q never overflows. A row of zeros gets a small positive scale (never 0). On CUDA
    with Triton, one fused kernel (runtime/fp8_triton.py, the same bits); elsewhere ``quantize_rows_torch``."""
    fused = _fused_quantizer() if x.is_cuda else None
    if fused is not None and x.shape[1] <= fused.MAX_ROW and x.stride(1) == 1:
        return fused.quantize_rows_triton(x, E4M3_MAX, _AMAX_FLOOR)
    return quantize_rows_torch(x)


def quantize_rows_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rows`` in PyTorch ops (any device; on CUDA several times slower than the fused kernel)."""
    amax = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).float().clamp_(min=_AMAX_FLOOR)
    # Round amax / 448 up to a power of two on its bits: adding a mantissa's worth carries into the exponent unless
    # the mantissa is already 0, and the mask keeps the exponent alone.
    bits = (amax / E4M3_MAX).view(torch.int32)
    scale = ((bits + 0x007FFFFF) & 0x7F800000).view(torch.float32)
    q = torch.empty(x.shape, dtype=E4M3, device=x.device)
    torch.mul(x, scale.reciprocal(), out=q)   # computed in fp32 (an fp16 input's inverse scale can pass 65504)
    return q, scale


@functools.lru_cache(maxsize=1)
def _fused_quantizer():
    """runtime/fp8_triton.py, or None where Triton is missing or broken (then the fp8 path is not taken on CUDA:
    without the fused quantizer it is no faster than bf16)."""
    try:
        from . import fp8_triton
    except (ImportError, RuntimeError):
        return None
    return fp8_triton


def quantize_weight_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A full-precision weight [N, K] -> (float8_e4m3fn weight [N, K], per-output-channel scale [N] float32),
    weight ~= q * scale[:, None]: each output channel's largest |value| maps to 448 (zero rows get scale 1)."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight: expected a 2-D floating-point matrix [N, K], received {weight.dtype} "
                         f"{list(weight.shape)}")
    w = weight.float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (w / scale[:, None]).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def upcast_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  weight_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The upcast path: the weight (times its per-channel scale, if any) and bias cast to the input's dtype and
    device, then ``F.linear``. Without a scale it is exactly what runtime/fp8.py's layers always did."""
    if weight_scale is None:
        w = weight.to(device=x.device, dtype=x.dtype, non_blocking=True)
    else:
        w = (weight.to(device=x.device, dtype=torch.float32, non_blocking=True)
             * weight_scale.to(device=x.device, dtype=torch.float32, non_blocking=True)[:, None]).to(x.dtype)
    b = None if bias is None else bias.to(device=x.device, dtype=x.dtype, non_blocking=True)
    return F.linear(x, w, b)


def scaled_fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      weight_scale: Optional[torch.Tensor] = None, use_fast_accum: bool = FAST_ACCUM
                      ) -> torch.Tensor:
    """The fp8 path alone, with no check of the device: x [..., K] @ weight [N, K]^T + bias -> [..., N] in x's
    dtype, through ``torch._scaled_mm`` (activations quantized per row by ``quantize_rows``; weight_scale [N] or
    None for 1). Needs an e4m3fn weight with K and N multiples of 16; runs on CUDA and, in recent torch, CPUs."""
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x: expected a last dimension of {k} (the weight is [{n}, {k}]), received "
                         f"{list(x.shape)}")
    device = x.device
    weight = weight.to(device=device, non_blocking=True)
    if not weight.is_contiguous():
        weight = weight.contiguous()   # weight.t() must be column-major
    q, scale_a = quantize_rows(x.reshape(-1, k))
    if weight_scale is None:
        scale_b = torch.ones((1, n), dtype=torch.float32, device=device)
    else:
        scale_b = weight_scale.to(device=device, dtype=torch.float32, non_blocking=True).reshape(1, n).contiguous()
    if bias is not None:
        bias = bias.to(device=device, dtype=OUT_DTYPE, non_blocking=True)
    y = torch._scaled_mm(q, weight.t(), scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=OUT_DTYPE,
                         use_fast_accum=use_fast_accum)
    if isinstance(y, tuple):   # torch < 2.5: (out, amax)
        y = y[0]
    return y.reshape(*x.shape[:-1], n).to(x.dtype)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               weight_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., K] @ weight [N, K]^T + bias [N] -> [..., N] in x's dtype: as a scaled fp8 matmul where
    ``fp8_matmul_applies`` (an fp8 weight on a GPU with fp8 tensor cores), else the upcast path.
    weight_scale [N]: per-output-channel scales of a weight from ``quantize_weight_per_channel`` (None: 1)."""
    if fp8_matmul_applies(x, weight):
        return scaled_fp8_linear(x, weight, bias, weight_scale)
    return upcast_linear(x, weight, bias, weight_scale)


@functools.lru_cache(maxsize=None)
def fp8_compute_operations(manual_cast, cast_bias_weight):
    """ComfyUI's ``manual_cast`` namespace (passed in: the library never imports ComfyUI) whose Linear runs a
    float8_e4m3fn weight through ``fp8_linear``; other layers, and Linear layers of other dtypes, are manual_cast's.

    The weight goes through ComfyUI's ``cast_bias_weight`` in its own fp8 dtype, so lowvram streaming and LoRA
    patches keep working: a full load bakes a patch into the fp8 weight, a lowvram patch (``LowVramPatch``)
    computes in fp32 and rounds back to fp8, and a patch that returns another dtype takes the upcast. Calls the fp8
    path cannot take (shapes, gradients) are manual_cast's own. ComfyUI 0.3.64 has its own ``comfy.ops.fp8_ops``
    (picked by ``pick_operations`` only under ``--fast fp8_matrix_mult`` or ``model_options["fp8_optimizations"]``,
    for ComfyUI's own model classes): it gives ``_scaled_mm`` the activations with a fixed scale of 1, clipping them
    to +-448 and losing small ones to subnormals; its ``scaled_fp8_ops`` serves files that store a ``scale_weight``
    per layer (Ovi's fp8 file stores none). This one scales each token's row, hence on by default. It relies only on
    0.3.64's ``manual_cast`` / ``cast_bias_weight(s, input, dtype, device, bias_dtype)`` (newer ComfyUI reworks
    its fp8 and quantized ops)."""

    class Linear(manual_cast.Linear):
        def forward_comfy_cast_weights(self, input):
            if not fp8_matmul_applies(input, self.weight):
                return super().forward_comfy_cast_weights(input)
            weight, bias = cast_bias_weight(self, input, dtype=self.weight.dtype, bias_dtype=input.dtype)
            return fp8_linear(input, weight, bias)

    return type("fp8_compute_ops", (manual_cast,), {"Linear": Linear})
