"""Benchmark: one Ovi-sized Linear in bf16 against fp8 compute (runtime/fp8_matmul.py), side by side.

For each layer of an Ovi fusion block at its real size (15,004 video tokens of a 5 s 720x720 clip, width 3072, FFN
14336): x [T, K] bf16 @ W [N, K]^T + bias, with W random (std 1/sqrt(K)) rounded to float8_e4m3fn without a scale,
as Ovi's fp8 file stores it. Measured in one run, per layer:

    bf16_ms      F.linear with the weight in bf16 (the bf16 model)
    upcast_ms    the fp8 weight cast to bf16 per call, then F.linear (fp8 storage without fp8 compute)
    fp8_ms       fp8_linear: activations quantized per row, torch._scaled_mm (where the device supports it; else
                 its fallback, the upcast)
    rel_err      ||y - y_fp32|| / ||y_fp32|| against fp32 with the same (fp8-rounded) weight: the error fp8 compute
                 adds; bf16_rel_err the same for the upcast path

On a device that multiplies in fp8 it also times the quantization alone and _scaled_mm without fast accumulation
(how FAST_ACCUM was chosen). Each time is the median of --repeats runs (each --inner calls) after a warm-up, the
device synchronised around each. The last line is machine-readable (times summed over the layers, errors the worst):

    RESULT bf16_ms=... fp8_ms=... fp8_speedup=... rel_err=... upcast_ms=... bf16_rel_err=... fp8_path=0|1

    python bench/fp8_matmul.py            # CUDA (fp8 compute needs compute capability >= 8.9)
    python bench/fp8_matmul.py --tiny     # small shapes on the CPU: the fallback path, checks the script runs
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from comfyui_syncav.runtime.fp8 import quantize_to_fp8
from comfyui_syncav.runtime.fp8_matmul import fp8_linear, fp8_matmul_applies, quantize_rows, scaled_fp8_linear, \
    upcast_linear

OVI_TOKENS, OVI_DIM, OVI_FFN = 15004, 3072, 14336
LAYERS = {"attention": (OVI_DIM, OVI_DIM), "ffn_up": (OVI_DIM, OVI_FFN), "ffn_down": (OVI_FFN, OVI_DIM)}   # (K, N)
TINY_TOKENS, TINY_LAYERS = 40, {"attention": (64, 64), "ffn_up": (64, 128), "ffn_down": (128, 64)}


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn, device, repeats: int, inner: int) -> float:
    fn()  # warm-up: allocator, kernel selection, lazy inits
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / inner * 1e3)
    return statistics.median(times)


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y.float() - reference).norm() / reference.norm()).item()


def bench_layer(tokens: int, k: int, n: int, device, repeats: int, inner: int) -> dict:
    g = torch.Generator().manual_seed(k * 7 + n)
    x = torch.randn(tokens, k, generator=g).to(device, torch.bfloat16)
    weight = (torch.randn(n, k, generator=g) * k ** -0.5).to(device)
    bias = (torch.randn(n, generator=g) * 0.1).to(device, torch.bfloat16)
    weight_bf16, weight_fp8 = weight.to(torch.bfloat16), quantize_to_fp8(weight)
    del weight
    with torch.no_grad():
        reference = F.linear(x.float(), weight_fp8.float(), bias.float())
        row = {"fp8_path": float(fp8_matmul_applies(x, weight_fp8)),
               "rel_err": relative_error(fp8_linear(x, weight_fp8, bias), reference),
               "bf16_rel_err": relative_error(upcast_linear(x, weight_fp8, bias), reference)}
        row["bf16_ms"] = timed_ms(lambda: F.linear(x, weight_bf16, bias), device, repeats, inner)
        row["upcast_ms"] = timed_ms(lambda: upcast_linear(x, weight_fp8, bias), device, repeats, inner)
        row["fp8_ms"] = timed_ms(lambda: fp8_linear(x, weight_fp8, bias), device, repeats, inner)
        if row["fp8_path"]:
            row["quantize_ms"] = timed_ms(lambda: quantize_rows(x), device, repeats, inner)
            exact = lambda: scaled_fp8_linear(x, weight_fp8, bias, use_fast_accum=False)  # noqa: E731
            row["slow_accum_ms"] = timed_ms(exact, device, repeats, inner)
            row["slow_accum_rel_err"] = relative_error(exact(), reference)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes (CPU check of the script)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--repeats", type=int, default=15, help="measured runs per figure (median), default 15")
    parser.add_argument("--inner", type=int, default=5, help="calls per measured run, default 5")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.repeats < 1 or args.inner < 1:
        parser.error("--repeats and --inner must be >= 1")
    if device.type == "cpu" and not args.tiny:
        parser.error("the real size needs a GPU; on a CPU run --tiny")
    tokens, layers = (TINY_TOKENS, TINY_LAYERS) if args.tiny else (OVI_TOKENS, LAYERS)
    name = f" ({torch.cuda.get_device_name(device)}, capability " \
           f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))})" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, {device}{name}; {tokens} tokens, {args.repeats} x {args.inner} calls")

    rows = {}
    for layer, (k, n) in layers.items():
        row = rows[layer] = bench_layer(tokens, k, n, device, args.repeats, args.inner)
        extra = (f", quantize {row['quantize_ms']:.3f} ms, without fast accumulation {row['slow_accum_ms']:.3f} ms "
                 f"(rel err {row['slow_accum_rel_err']:.4f})" if row["fp8_path"] else ", fp8 path not taken (fallback)")
        print(f"{layer} [{tokens}, {k}] @ [{k}, {n}]: bf16 {row['bf16_ms']:.3f} ms, upcast {row['upcast_ms']:.3f} ms, "
              f"fp8 {row['fp8_ms']:.3f} ms (x{row['bf16_ms'] / row['fp8_ms']:.2f}); rel err vs fp32: fp8 "
              f"{row['rel_err']:.4f}, bf16 {row['bf16_rel_err']:.4f}{extra}")

    total = {key: sum(r[key] for r in rows.values()) for key in ("bf16_ms", "fp8_ms", "upcast_ms")}
    result = {"bf16_ms": total["bf16_ms"], "fp8_ms": total["fp8_ms"], "fp8_speedup": total["bf16_ms"] / total["fp8_ms"],
              "rel_err": max(r["rel_err"] for r in rows.values()), "upcast_ms": total["upcast_ms"],
              "bf16_rel_err": max(r["bf16_rel_err"] for r in rows.values()),
              "fp8_path": min(r["fp8_path"] for r in rows.values())}
    print("RESULT " + " ".join(f"{k}={v:.0f}" if k == "fp8_path" else f"{k}={v:.4f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
