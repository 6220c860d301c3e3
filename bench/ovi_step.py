"""Benchmark: Ovi's joint model at its real size on one GPU: forward and guidance-step time, peak memory with the
whole model loaded, with block swap and with fp8 weights.

Builds the ``ovi-720-5s`` preset (11.66 B parameters) with random bf16 weights directly on the device, and Ovi's
5 s clip at 720x720 area: video latent [1, 48, 31, 44, 44] (121 frames of 704x704 px: 15,004 video tokens), audio
latent [1, 157, 20], prompts of 512 x 4096. Measured in one run, in this order:

    forward_s            one joint forward, batch 1, weights all on the GPU (bf16)
    plain_step_s         one plain text-CFG step: J + U in one batched forward (2 rows)
    synccfg_step_s       one SyncCFG step: J + U + D_v + D_a in one batched forward (4 rows)
    peak_full_gib        peak GPU memory of the SyncCFG step (weights included)
    peak_forward_full_gib  peak GPU memory of the batch-1 forward
    fp8_forward_s / peak_fp8_gib     the batch-1 forward with float8_e4m3fn matrices (cast to bf16 per layer)
    swap_forward_s / peak_swap_gib   the batch-1 forward with block swap (--blocks-on-gpu of the 30 fusion blocks
                                     resident, the rest copied in from pinned CPU memory per block)

Each time is the median of --repeats runs after one warm-up, with the GPU synchronised around each. The last line
is machine-readable:

    RESULT forward_s=... plain_step_s=... synccfg_step_s=... synccfg_over_plain=... peak_full_gib=...
           peak_forward_full_gib=... fp8_forward_s=... peak_fp8_gib=... swap_forward_s=... peak_swap_gib=...

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
from comfyui_syncav.runtime.fp8 import FP8_OPS, layer_weight_keys, quantize_to_fp8
from comfyui_syncav.model.joint import JointModel
from comfyui_syncav.ovi.sizes import latent_lengths, snap_size_to_area
from comfyui_syncav.guidance.sync_cfg import StepScales, SyncCFGConditioning, guided_velocity
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


def fp8_copy(model: JointModel, device) -> JointModel:
    """The same network with its Linear / Conv weights rounded to float8_e4m3fn (fp8 layers), on ``device``."""
    with torch.device("meta"):
        fp8 = JointModel(model.config, FP8_OPS)
    keys = layer_weight_keys(fp8)
    state = {k: (quantize_to_fp8(v.to(device)) if k in keys else v.to(device))
             for k, v in model.state_dict().items()}
    fp8.load_state_dict(state, assign=True)
    fp8.compute_dtype = torch.bfloat16
    return fp8.eval().requires_grad_(False)


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
    plain, sync = StepScales(4.0, 3.0, 1.0, 1.0), StepScales(4.0, 3.0, 2.0, 2.0)

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

    result = {}
    with torch.inference_mode():
        result["forward_s"] = timed(forward(model), device, args.repeats)
        result["plain_step_s"] = timed(step(model, plain), device, args.repeats)
        result["synccfg_step_s"] = timed(step(model, sync), device, args.repeats)
        result["synccfg_over_plain"] = result["synccfg_step_s"] / result["plain_step_s"]
        result["peak_full_gib"] = peak_gib(step(model, sync), device)
        result["peak_forward_full_gib"] = peak_gib(forward(model), device)
        print(f"full load: forward {result['forward_s']:.3f} s, plain CFG step {result['plain_step_s']:.3f} s, "
              f"SyncCFG step {result['synccfg_step_s']:.3f} s, peak {result['peak_full_gib']:.2f} GiB (SyncCFG), "
              f"{result['peak_forward_full_gib']:.2f} GiB (forward)")

        model = model.to("cpu")       # the bf16 master for fp8 and block swap; frees the GPU
        release(device)

        fp8 = fp8_copy(model, device)
        result["fp8_forward_s"] = timed(forward(fp8), device, args.repeats)
        result["peak_fp8_gib"] = peak_gib(forward(fp8), device)
        print(f"fp8 weights: forward {result['fp8_forward_s']:.3f} s, peak {result['peak_fp8_gib']:.2f} GiB")
        del fp8
        release(device)

        swap = enable_block_swap(model, blocks_on_gpu, device)
        result["swap_forward_s"] = timed(forward(model), device, args.repeats)
        result["peak_swap_gib"] = peak_gib(forward(model), device)
        print(f"block swap ({blocks_on_gpu} of {config.num_blocks} blocks resident): forward "
              f"{result['swap_forward_s']:.3f} s, peak {result['peak_swap_gib']:.2f} GiB, "
              f"{swap.moves_in} block copies")
        swap.remove()

    print("RESULT " + " ".join(f"{k}={v:.4f}" if k.endswith("_s") or k.endswith("_plain") else f"{k}={v:.2f}"
                               for k, v in result.items()))


if __name__ == "__main__":
    main()
