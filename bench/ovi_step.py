"""Benchmark: Ovi's joint model at its real size on one GPU: forward and guidance-step time, peak memory with the
whole model loaded, with block swap and with fp8 weights.

Builds the ``ovi-720-5s`` preset (11.66 B parameters) with random bf16 weights directly on the device, and Ovi's
5 s clip at 720x720 area: video latent [1, 48, 31, 44, 44] (121 frames of 704x704 px: 15,004 video tokens), audio
latent [1, 157, 20], prompts of 512 x 4096. Measured in one run, in this order:

    forward_s            one joint forward, batch 1, weights all on the GPU (bf16)
    plain_step_s         one plain text-CFG step: J + U in one batched forward (2 rows)
    synccfg_step_s       one SyncCFG step with Harmony's anchors: J + U + D_v + D_a in one batched forward (4 rows)
    audio_alone_step_s   the same with the audio anchor from the audio tower alone (3 video rows + 4 audio rows)
    cut_step_s           the same with one cross-modal-cut pass as both anchors (3 rows)
    peak_full_gib        peak GPU memory of the SyncCFG step (weights included)
    peak_forward_full_gib  peak GPU memory of the batch-1 forward
    compile_s / compiled_forward_s / compiled_over_eager / compiled_step_s
                         regional compilation (runtime/compile.py): seconds spent compiling (all variants the
                         forward and the step needed), the compiled forward, eager/compiled, the compiled SyncCFG
                         step with the default anchors
    fp8_forward_s / peak_fp8_gib     the batch-1 forward with float8_e4m3fn matrices cast to bf16 per layer
    fp8_compute_forward_s / fp8_compute_rel_err / fp8_compute_over_bf16
                         the forward with per-channel-scaled fp8 weights multiplied in fp8 where the GPU can
                         (runtime/fp8_matmul.py), its relative error against the bf16 forward, bf16/fp8 time
    swap_forward_s / peak_swap_gib   the batch-1 forward with block swap (--blocks-on-gpu of the 30 fusion blocks
                                     resident, the rest copied in from pinned CPU memory per block)
    gen_step_s / peak_gen_gib        a SyncCFG step (default anchors) with Ovi's fp8 file layout (unscaled fp8,
                                     fp8 compute) and block swap: the DiT part of generation's memory
    est_50_steps_s       50 x the fastest SyncCFG step measured with the default anchors (DiT only)

Each time is the median of --repeats runs after one warm-up, with the GPU synchronised around each. The last line
is machine-readable:

    RESULT forward_s=... plain_step_s=... synccfg_step_s=... synccfg_over_plain=... audio_alone_step_s=...
           audio_alone_over_plain=... cut_step_s=... cut_over_plain=... peak_full_gib=... peak_forward_full_gib=...
           compile_s=... compiled_forward_s=... compiled_over_eager=... compiled_step_s=... fp8_forward_s=...
           peak_fp8_gib=... fp8_compute_forward_s=... fp8_compute_rel_err=... fp8_compute_over_bf16=...
           swap_forward_s=... peak_swap_gib=... gen_step_s=... peak_gen_gib=... est_50_steps_s=...

    python bench/ovi_step.py                  # CUDA, the real size (needs ~60 GB of GPU memory for the full load)
    python bench/ovi_step.py --tiny           # a 4-block, 64-wide model on the CPU: checks the script runs

On a CPU there is no peak-memory counter: the peaks print as nan.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import time

import torch

from comfyui_syncav.runtime.block_swap import enable_block_swap
from comfyui_syncav.model.config import get_preset
from comfyui_syncav.runtime.compile import compile_fusion_blocks
from comfyui_syncav.runtime.fp8 import FP8_OPS, FP8_UPCAST_OPS, layer_weight_keys, quantize_linear_layers, quantize_to_fp8
from comfyui_syncav.model.joint import JointModel
from comfyui_syncav.ovi.sizes import latent_lengths, snap_size_to_area
from comfyui_syncav.guidance.sync_cfg import (DEFAULT_ANCHORS, StepScales, SyncAnchors, SyncCFGConditioning,
                                              guided_velocity)
from comfyui_syncav.text.interface import EncodedText

GIB = 2 ** 30
SECONDS, AREA_PX = 5.0, 720 * 720        # the ovi-720-5s clip


def build_config(tiny: bool):
    config = get_preset("ovi-720-5s")
    if not tiny:
        return config
    small = dict(dim=64, ffn_dim=128, num_heads=4, num_layers=4)
    return config.replace(video=dataclasses.replace(config.video, **small),
                          audio=dataclasses.replace(config.audio, **small))


def clip_shapes(config, tiny: bool):
    """(video [1, 48, Fv, H, W], audio [1, La, 20]) latent shapes of the benchmarked clip."""
    if tiny:
        return (1, config.video.in_channels, 3, 4, 4), (1, 16, config.audio.in_channels)
    _, video_latents, audio_latents = latent_lengths(SECONDS)
    height, width = snap_size_to_area(720, 720, AREA_PX)
    return ((1, config.video.in_channels, video_latents, height // 16, width // 16),
            (1, audio_latents, config.audio.in_channels))


def build_model(config, device, dtype=torch.bfloat16) -> JointModel:
    """Random weights made in ``dtype`` on ``device`` (no fp32 copy anywhere: 23 GB in bf16 at the real size)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = JointModel(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval().requires_grad_(False)


def fp8_copy(model: JointModel, device, ops=FP8_UPCAST_OPS, per_channel: bool = False) -> JointModel:
    """The same network with its Linear / Conv weights rounded to float8_e4m3fn, on ``device``: unscaled (Ovi's fp8
    file) or, with ``per_channel``, the Linear weights with per-output-channel scales (fp8 compute's best)."""
    with torch.device("meta"):
        fp8 = JointModel(model.config, ops)
    keys = layer_weight_keys(fp8)
    if per_channel:
        fp8.load_state_dict({k: v.to(device) for k, v in model.state_dict().items()}, assign=True)
        quantize_linear_layers(fp8)
        state = {k: (quantize_to_fp8(v) if k in keys and v.dtype != torch.float8_e4m3fn else v)
                 for k, v in fp8.state_dict().items()}
    else:
        state = {k: (quantize_to_fp8(v.to(device)) if k in keys else v.to(device))
                 for k, v in model.state_dict().items()}
    fp8.load_state_dict(state, assign=True)
    fp8.compute_dtype = torch.bfloat16
    return fp8.eval().requires_grad_(False)


def relative_error(outputs, reference) -> float:
    """max over the two streams of |a - b| / |b| (Frobenius norms, float32)."""
    return max(float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(outputs, reference))


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels' autotuning, lazy inits
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gib(fn, device) -> float:
    if torch.device(device).type != "cuda":
        return math.nan
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / GIB


def release(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 64-wide, 4-block model and a tiny clip (CPU check)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per figure (median), default 3")
    parser.add_argument("--compile-backend", default=None,
                        help="regional compilation backend (default: inductor on CUDA, aot_eager on a CPU)")
    parser.add_argument("--blocks-on-gpu", type=int, default=None,
                        help="resident fusion blocks with block swap (default: a third of them, 10 for Ovi)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if device.type == "cpu" and not args.tiny:
        parser.error("the real size needs a GPU; on a CPU run --tiny")

    config = build_config(args.tiny)
    blocks_on_gpu = args.blocks_on_gpu if args.blocks_on_gpu is not None else config.num_blocks // 3
    video_shape, audio_shape = clip_shapes(config, args.tiny)
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    video, audio = rand(*video_shape), rand(*audio_shape)
    text_rows = 8 if args.tiny else config.video.text_len

    def text():
        return EncodedText(rand(1, text_rows, config.video.text_dim, scale=0.1), torch.tensor([text_rows]))

    positive, negative = (text(), text()), (text(), text())
    cond = SyncCFGConditioning.prepare(1, positive, negative, static_video=rand(*video_shape, scale=0.5),
                                       silence=rand(*audio_shape, scale=0.5), device=device, dtype=dtype)
    sigma = torch.full((1,), 0.7, device=device)
    plain = StepScales(4.0, 3.0, 1.0, 1.0)
    sync, default_sync = (StepScales(4.0, 3.0, 2.0, 2.0, anchors) for anchors in (SyncAnchors.HARMONY,
                                                                                  DEFAULT_ANCHORS))

    started = time.perf_counter()
    model = build_model(config, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
          f"{config.name}{' (tiny)' if args.tiny else ''}: {params / 1e9:.3f} B parameters, "
          f"{config.num_blocks} fusion blocks, built in {time.perf_counter() - started:.1f} s")
    print(f"video latent {list(video_shape)}, audio latent {list(audio_shape)}, {args.repeats} repeats")

    def forward(m):
        def run():
            with torch.no_grad():
                m(video, audio, sigma, sigma, positive[0].embeddings, positive[1].embeddings)
        return run

    def step(m, scales):
        def run():
            with torch.no_grad():
                guided_velocity(m, video, audio, sigma, sigma, cond, scales)
        return run

    def run(m, *args, **kwargs):
        with torch.no_grad():
            return m(*args, **kwargs)

    result = {}
    with torch.inference_mode():
        result["forward_s"] = timed(forward(model), device, args.repeats)
        result["plain_step_s"] = timed(step(model, plain), device, args.repeats)
        result["synccfg_step_s"] = timed(step(model, sync), device, args.repeats)
        result["synccfg_over_plain"] = result["synccfg_step_s"] / result["plain_step_s"]
        for name, anchors in (("audio_alone", SyncAnchors.AUDIO_ALONE), ("cut", SyncAnchors.CROSS_MODAL_CUT)):
            result[f"{name}_step_s"] = timed(step(model, sync._replace(anchors=anchors)), device, args.repeats)
            result[f"{name}_over_plain"] = result[f"{name}_step_s"] / result["plain_step_s"]
        result["peak_full_gib"] = peak_gib(step(model, sync), device)
        result["peak_forward_full_gib"] = peak_gib(forward(model), device)
        print(f"full load: forward {result['forward_s']:.3f} s, plain CFG step {result['plain_step_s']:.3f} s, "
              f"SyncCFG step {result['synccfg_step_s']:.3f} s (harmony), {result['audio_alone_step_s']:.3f} s "
              f"(audio_alone), {result['cut_step_s']:.3f} s (cross_modal_cut), peak {result['peak_full_gib']:.2f} "
              f"GiB (SyncCFG), {result['peak_forward_full_gib']:.2f} GiB (forward)", flush=True)
        eager_default = result[f"{ {SyncAnchors.HARMONY: 'synccfg', SyncAnchors.AUDIO_ALONE: 'audio_alone'}.get(DEFAULT_ANCHORS, 'cut')}_step_s"]

        reference = run(model, video, audio, sigma, sigma, positive[0].embeddings, positive[1].embeddings)
        backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
        handle = compile_fusion_blocks(model, backend=backend)
        result["compiled_forward_s"] = timed(forward(model), device, args.repeats)
        result["compiled_step_s"] = timed(step(model, default_sync), device, args.repeats)
        result["compile_s"] = handle.compile_seconds
        result["compiled_over_eager"] = result["forward_s"] / result["compiled_forward_s"]
        compiled_out = run(model, video, audio, sigma, sigma, positive[0].embeddings, positive[1].embeddings)
        compile_err = relative_error(compiled_out, reference)
        print(f"regional compile ({backend}): {result['compile_s']:.1f} s compiling "
              f"({handle.compiled_variants} variants), forward {result['compiled_forward_s']:.3f} s "
              f"({result['compiled_over_eager']:.2f}x eager), SyncCFG step {result['compiled_step_s']:.3f} s, "
              f"relative difference to eager {compile_err:.2e}", flush=True)
        handle.remove()

        model = model.to("cpu")       # the bf16 master for fp8 and block swap; frees the GPU
        release(device)

        fp8 = fp8_copy(model, device)
        result["fp8_forward_s"] = timed(forward(fp8), device, args.repeats)
        result["peak_fp8_gib"] = peak_gib(forward(fp8), device)
        fp8_err = relative_error(run(fp8, video, audio, sigma, sigma, positive[0].embeddings,
                                     positive[1].embeddings), reference)
        print(f"fp8 weights (upcast): forward {result['fp8_forward_s']:.3f} s, peak {result['peak_fp8_gib']:.2f} "
              f"GiB, relative error {fp8_err:.2e}", flush=True)
        del fp8
        release(device)

        fp8c = fp8_copy(model, device, ops=FP8_OPS, per_channel=True)
        result["fp8_compute_forward_s"] = timed(forward(fp8c), device, args.repeats)
        result["fp8_compute_rel_err"] = relative_error(run(fp8c, video, audio, sigma, sigma, positive[0].embeddings,
                                                           positive[1].embeddings), reference)
        result["fp8_compute_over_bf16"] = result["forward_s"] / result["fp8_compute_forward_s"]
        print(f"fp8 compute (per-channel scales): forward {result['fp8_compute_forward_s']:.3f} s "
              f"({result['fp8_compute_over_bf16']:.2f}x bf16), relative error {result['fp8_compute_rel_err']:.2e}",
              flush=True)
        del fp8c
        release(device)

        swap = enable_block_swap(model, blocks_on_gpu, device)
        result["swap_forward_s"] = timed(forward(model), device, args.repeats)
        result["peak_swap_gib"] = peak_gib(forward(model), device)
        print(f"block swap ({blocks_on_gpu} of {config.num_blocks} blocks resident): forward "
              f"{result['swap_forward_s']:.3f} s, peak {result['peak_swap_gib']:.2f} GiB, "
              f"{swap.moves_in} block copies", flush=True)
        swap.remove()
        release(device)

        gen = fp8_copy(model.to(device), device, ops=FP8_OPS).to("cpu")
        model = model.to("cpu")
        release(device)
        gen_swap = enable_block_swap(gen, blocks_on_gpu, device)
        result["gen_step_s"] = timed(step(gen, default_sync), device, args.repeats)
        result["peak_gen_gib"] = peak_gib(step(gen, default_sync), device)
        gen_swap.remove()
        result["est_50_steps_s"] = 50 * min(eager_default, result["compiled_step_s"])
        print(f"generation step (fp8 file, fp8 compute, block swap {blocks_on_gpu}/{config.num_blocks}, "
              f"{DEFAULT_ANCHORS.value} anchors): {result['gen_step_s']:.3f} s, peak {result['peak_gen_gib']:.2f} GiB; "
              f"50 steps of the fastest default-anchor step: {result['est_50_steps_s']:.1f} s", flush=True)

    order = ["forward_s", "plain_step_s", "synccfg_step_s", "synccfg_over_plain", "audio_alone_step_s",
             "audio_alone_over_plain", "cut_step_s", "cut_over_plain", "peak_full_gib", "peak_forward_full_gib",
             "compile_s", "compiled_forward_s", "compiled_over_eager", "compiled_step_s", "fp8_forward_s",
             "peak_fp8_gib", "fp8_compute_forward_s", "fp8_compute_rel_err", "fp8_compute_over_bf16",
             "swap_forward_s", "peak_swap_gib", "gen_step_s", "peak_gen_gib", "est_50_steps_s"]
    print("RESULT " + " ".join(f"{k}={result[k]:.2e}" if k.endswith("_err") else f"{k}={result[k]:.4f}"
                               if k.endswith(("_s", "_plain", "_eager", "_bf16")) else f"{k}={result[k]:.2f}"
                               for k in order))


if __name__ == "__main__":
    main()
