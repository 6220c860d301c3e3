"""Benchmark: a DPO and an SFT training step at Ovi's real size on one GPU, with the frozen base in bf16, in fp8, and
in fp8 with block swap: seconds and peak GPU memory of each, measured in one run.

Builds the ``ovi-720-5s`` preset (11.66 B parameters) with random bf16 weights directly on the device (as
bench/ovi_step.py does), adds a rank-16 LoRA (``LoraSpec()``: attention, fusion and FFN layers of both towers),
turns on gradient checkpointing, and trains on Ovi's 5 s clip at 720x720 area: video latent [1, 48, 31, 44, 44]
(15,004 video tokens), audio latent [1, 157, 20], prompts of 512 x 4096. One step is what the trainer's loop does:
the trainer's own loss (``train.dpo_training.make_loss_fn``; DPO: the reference pass without grad and the policy
pass on one pair, 2 rows each; SFT: the winner alone, 1 row), backward, gradient clipping, AdamW. Bases, in order,
each made from the one before by the trainer's own placement (``train.loop.place_frozen_base``):

    bf16       the whole base in bf16 on the GPU (~21.7 GiB of weights)
    fp8        its Linear / Conv weights stored in float8_e4m3fn (runtime/fp8.py's layers; ~10.9 GiB)
    fp8_swap   and block swap (runtime/block_swap.py): --blocks-on-gpu of the 30 fusion blocks resident, the frozen
               weights of the others copied in from pinned CPU memory per block, in the forward and again in the
               backward's recomputation; the LoRA stays on the GPU

--blocks-on-gpu defaults to 8, chosen so the fp8 DPO step fits 22 GiB: measured bf16 DPO peak 36.4 GiB less its
21.7 GiB of weights leaves ~14.7 GiB of activations, LoRA, gradients and AdamW state; fp8 keeps 0.66 GiB outside the
blocks and 0.34 GiB per fusion-block pair, and the backward holds one block's weights upcast to bf16 (0.68 GiB) and
block swap up to two copies in flight: ~0.66 + 8 x 0.34 + 14.7 + 0.68 + 0.68 = ~19.5 GiB, with room for the
estimate's error. A copy (0.37 GB) takes a fraction of a block's compute and overlaps it, so fewer resident blocks
cost little time.

Each time is the median of --repeats steps after one warm-up step, the GPU synchronised around each; each peak is
``torch.cuda.max_memory_allocated`` over those measured steps (reset after the warm-up, so AdamW's state is in it,
as it is in every step of a run). Memory is freed between configurations. The last line is machine-readable:

    RESULT dpo_bf16_s=... dpo_bf16_peak_gib=... sft_bf16_s=... sft_bf16_peak_gib=... dpo_fp8_s=... ...
           dpo_fp8_swap_s=... dpo_fp8_swap_peak_gib=... sft_fp8_swap_s=... sft_fp8_swap_peak_gib=...
           dpo_fp8_over_bf16=... dpo_fp8_swap_over_bf16=... sft_fp8_over_bf16=... sft_fp8_swap_over_bf16=...

    python bench/ovi_train_step.py                            # CUDA, the real size (~37 GiB for the bf16 DPO step)
    python bench/ovi_train_step.py --only dpo_fp8_swap,sft_fp8_swap --blocks-on-gpu 6
    python bench/ovi_train_step.py --tiny --device cpu        # a 4-block, 64-wide model on the CPU: checks the script

--only takes measurement names (``dpo_fp8_swap``), bases (``fp8_swap``) or objectives (``dpo``); skipped ones are
left out of the RESULT line (a ratio only when both of its sides ran). On a CPU there is no peak-memory counter:
the peaks print as nan.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the sibling bench script's builders
from ovi_step import GIB, build_config, build_model, clip_shapes, release, synchronize  # noqa: E402

from comfyui_syncav.model.batch import AVBatch, PreferenceBatch  # noqa: E402
from comfyui_syncav.runtime.lora import LoraSpec, add_lora  # noqa: E402
from comfyui_syncav.runtime.fp8_matmul import upcast_only  # noqa: E402
from comfyui_syncav.train.dpo_training import DPOTrainingConfig, make_loss_fn  # noqa: E402
from comfyui_syncav.train.loop import (MemoryConfig, place_frozen_base, step_generator,  # noqa: E402
                                       trainable_parameters)

BASES = ("bf16", "fp8", "fp8_swap")
OBJECTIVES = ("dpo", "sft")
MEASUREMENTS = tuple(f"{objective}_{base}" for base in BASES for objective in OBJECTIVES)
DEFAULT_BLOCKS_ON_GPU = 8          # of Ovi's 30: see the module docstring
TINY_BLOCKS_ON_GPU = 1             # of the tiny model's 4


def selection(only: str | None) -> tuple[str, ...]:
    """The measurements ``--only`` names (all by default), in the benchmark's order."""
    if only is None:
        return MEASUREMENTS
    items = [item.strip() for item in only.split(",") if item.strip()]
    unknown = [item for item in items if item not in MEASUREMENTS + BASES + OBJECTIVES]
    if unknown or not items:
        raise ValueError(f"--only: expected measurements ({', '.join(MEASUREMENTS)}), bases ({', '.join(BASES)}) or "
                         f"objectives ({', '.join(OBJECTIVES)}), comma-separated; got {only!r}")
    return tuple(m for m in MEASUREMENTS if m in items or any(m.split("_", 1)[i] in items for i in (0, 1)))


def clip_batch(config, tiny: bool, device) -> PreferenceBatch:
    """One pair: a random clip and the same clip reversed in time (the loser), with random prompts of Ovi's size."""
    video_shape, audio_shape = clip_shapes(config, tiny)
    text_rows = 8 if tiny else config.video.text_len
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    lengths = torch.tensor([text_rows], device=device)
    winner = AVBatch(rand(*video_shape), rand(*audio_shape), rand(1, text_rows, config.video.text_dim, scale=0.1),
                     rand(1, text_rows, config.audio.text_dim, scale=0.1), lengths, lengths)
    return PreferenceBatch(winner, winner._replace(video=winner.video.flip(2), audio=winner.audio.flip(1)))


def optimizer_step(model, loss_fn, batch, optimizer):
    """step(k): one step of the trainer's loop on ``batch`` (k seeds its noise): loss, backward, clipping, AdamW."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step(k: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with upcast_only():     # as the trainer's loop: fp8 weights upcast with and without grad
            loss, _ = loss_fn(model, batch, step_generator(0, k))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return step


def measure(step, device, repeats: int) -> tuple[float, float]:
    """(median seconds of ``repeats`` steps after a warm-up, peak GiB over the measured steps; nan on a CPU)."""
    cuda = torch.device(device).type == "cuda"
    step(0)            # warm-up: allocator, kernels, AdamW's state
    synchronize(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for k in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        step(k + 1)
        synchronize(device)
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / GIB if cuda else math.nan
    return statistics.median(times), peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 64-wide, 4-block model and a tiny clip (CPU check)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--repeats", type=int, default=2, help="measured steps per figure (median), default 2")
    parser.add_argument("--blocks-on-gpu", type=int, default=None,
                        help=f"resident fusion blocks of fp8_swap (default {DEFAULT_BLOCKS_ON_GPU}; tiny: "
                             f"{TINY_BLOCKS_ON_GPU})")
    parser.add_argument("--only", default=None, help="comma-separated measurements, bases or objectives to run "
                                                     "(default: all)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank), default 16")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if device.type == "cpu" and not args.tiny:
        parser.error("the real size needs a GPU; on a CPU run --tiny")
    try:
        selected = selection(args.only)
        memory = MemoryConfig(base_fp8=True, blocks_on_gpu=args.blocks_on_gpu if args.blocks_on_gpu is not None
                              else TINY_BLOCKS_ON_GPU if args.tiny else DEFAULT_BLOCKS_ON_GPU)
    except ValueError as error:
        parser.error(str(error).replace("MemoryConfig.blocks_on_gpu", "--blocks-on-gpu"))

    began = time.perf_counter()
    config = build_config(args.tiny)
    batch = clip_batch(config, args.tiny, device)
    losses = {objective: make_loss_fn(DPOTrainingConfig(objective=objective)) for objective in OBJECTIVES}
    started = time.perf_counter()
    model = build_model(config, device)
    torch.manual_seed(0)
    add_lora(model, LoraSpec(rank=args.rank, alpha=float(args.rank)))
    model.train()
    model.set_gradient_checkpointing(True)
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
          f"{config.name}{' (tiny)' if args.tiny else ''}: {params / 1e9:.3f} B parameters with a rank-{args.rank} "
          f"LoRA, {config.num_blocks} fusion blocks, built in {time.perf_counter() - started:.1f} s")
    print(f"video latent {list(batch.winner.video.shape)}, audio latent {list(batch.winner.audio.shape)}, text "
          f"{list(batch.winner.text_video.shape)}; {args.repeats} repeats; measuring {', '.join(selected)}", flush=True)

    result: dict[str, float] = {}
    swap = None
    for base in BASES:
        if base == "fp8":
            swap = place_frozen_base(model, MemoryConfig(base_fp8=True), device)
        elif base == "fp8_swap":
            swap = place_frozen_base(model, memory, device)
        release(device)
        todo = [objective for objective in OBJECTIVES if f"{objective}_{base}" in selected]
        if not todo:
            continue
        optimizer = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=1e-4, weight_decay=0.0)
        for objective in todo:
            name = f"{objective}_{base}"
            moves = swap.moves_in if swap is not None else 0
            step = optimizer_step(model, losses[objective], batch if objective == "dpo" else batch.winner, optimizer)
            seconds, peak = measure(step, device, args.repeats)
            result[f"{name}_s"], result[f"{name}_peak_gib"] = seconds, peak
            copies = "" if swap is None else (f", {(swap.moves_in - moves) // (args.repeats + 1)} block copies a step "
                                              f"({swap.blocks_on_gpu} of {config.num_blocks} blocks resident)")
            print(f"{objective} step, {base} base: {seconds:.3f} s, peak {peak:.2f} GiB{copies}", flush=True)
        del optimizer, step
        release(device)

    for objective in OBJECTIVES:
        for base in ("fp8", "fp8_swap"):
            if f"{objective}_{base}_s" in result and f"{objective}_bf16_s" in result:
                ratio = result[f"{objective}_{base}_s"] / result[f"{objective}_bf16_s"]
                result[f"{objective}_{base}_over_bf16"] = ratio
    print(f"benchmark done in {time.perf_counter() - began:.0f} s")
    print("RESULT " + " ".join(f"{k}={v:.2f}" if k.endswith("_gib") else f"{k}={v:.4f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
