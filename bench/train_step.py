"""Benchmark: cost of a SyncDPO step against an SFT step of the same LoRA, and of building the temporal negatives.

Builds the embedded-default joint model (``tiny`` preset fitted to the embedded codecs, random weights) on the CPU,
adds a rank-16 LoRA (attention, fusion and FFN layers of both towers, as ``LoraSpec()``), encodes one batch of B
BounceBench train clips (video latent [B, 16, 16, 8, 8], audio latent [B, 250, 32]) and measures, each with the
trainer's own loss functions (``train.dpo_training.make_loss_fn``):

    dpo_step     one optimizer step of Diffusion-DPO on B pairs: the reference pass (LoRA off, no grad, 2B rows),
                 the policy pass (2B rows) and its backward, gradient clipping, AdamW
    sft_step     one optimizer step of the SFT baseline on the B winners (B rows), same LoRA and optimizer
    negatives    ``build_negatives`` of the B losers with ``DEFAULT_CURRICULUM.sampler`` (rule sampling included),
                 at steps spread over the curriculum's stages

The three are measured in one run, interleaved (the order rotates every repeat) after a warm-up of each; the
figures are medians over repeats (negatives: over every build, several per repeat). The last line is
machine-readable:

    RESULT dpo_step_s=... sft_step_s=... negatives_s=... dpo_over_sft=... negatives_over_dpo=...

Targets: dpo_over_sft <= 2.8 (the DPO step runs 2B rows twice, once without grad, against B rows once);
negatives_over_dpo <= 0.02.

    python bench/train_step.py --batch-size 8 --repeats 5

The default batch of 8 keeps a repeat short on a CPU; the ratios are what to compare, not the seconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from comfyui_syncav.codecs.embedded import TinyAudioCodec, TinyVideoCodec
from comfyui_syncav.model.joint import JointModel
from comfyui_syncav.runtime.lora import LoraSpec, add_lora
from comfyui_syncav.generation.pipeline import embedded_config, embedded_text_encoder
from comfyui_syncav.negatives.curriculum import DEFAULT_CURRICULUM
from comfyui_syncav.train.dpo_training import DPOTrainingConfig, PreferencePairs, make_loss_fn
from comfyui_syncav.train.embedded_training import BounceBatches
from comfyui_syncav.train.loop import step_generator
from comfyui_syncav.negatives.build import build_negatives

CURRICULUM_STEPS = 100                      # a nominal run length: negatives are built at steps across its stages
NEGATIVE_BUILDS_PER_REPEAT = 9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8, kept small for speed)")
    parser.add_argument("--repeats", type=int, default=5, help="measured repeats of each (default 5)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    video_codec, audio_codec = TinyVideoCodec(), TinyAudioCodec()
    torch.manual_seed(0)
    model = JointModel(embedded_config(video_codec, audio_codec))       # random weights: cost, not quality
    add_lora(model, LoraSpec(rank=args.rank, alpha=args.rank))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    winners = BounceBatches(args.batch_size, 0.0, embedded_text_encoder(), video_codec, audio_codec)
    pairs_source = PreferencePairs(winners, video_codec, audio_codec, DEFAULT_CURRICULUM, CURRICULUM_STEPS)
    pairs = pairs_source(CURRICULUM_STEPS // 2, step_generator(0, CURRICULUM_STEPS // 2))
    winner = pairs.winner
    axes = pairs_source.axes_for(winner.video, winner.audio)
    dpo_loss = make_loss_fn(DPOTrainingConfig(objective="dpo"))
    sft_loss = make_loss_fn(DPOTrainingConfig(objective="sft"))

    def optimizer_step(loss_fn, batch, step: int) -> float:
        started = time.perf_counter()
        generator = step_generator(0, step)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, batch, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return time.perf_counter() - started

    def negatives(repeat: int) -> list[float]:
        seconds = []
        for i in range(NEGATIVE_BUILDS_PER_REPEAT):
            step = (i * CURRICULUM_STEPS) // NEGATIVE_BUILDS_PER_REPEAT    # every stage, every repeat
            generator = step_generator(repeat, step)
            started = time.perf_counter()
            build_negatives(winner.video, winner.audio, axes, DEFAULT_CURRICULUM.sampler(step, CURRICULUM_STEPS),
                            generator)
            seconds.append(time.perf_counter() - started)
        return seconds

    timings: dict[str, list[float]] = {"dpo_step": [], "sft_step": [], "negatives": []}
    measure = {"dpo_step": lambda r: [optimizer_step(dpo_loss, pairs, r)],
               "sft_step": lambda r: [optimizer_step(sft_loss, winner, r)],
               "negatives": negatives}
    names = list(measure)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, batch {args.batch_size}, LoRA rank {args.rank}, video "
          f"{list(winner.video.shape)}, audio {list(winner.audio.shape)}", flush=True)
    for name in names:                                                    # warm-up: allocator, first-call costs
        measure[name](0)
    for repeat in range(args.repeats):
        order = names[repeat % 3:] + names[:repeat % 3]
        for name in order:
            timings[name] += measure[name](repeat + 1)
        print(f"# repeat {repeat + 1}: " + ", ".join(f"{n} {timings[n][-1]:.4f} s" for n in names), flush=True)

    dpo, sft, neg = (statistics.median(timings[n]) for n in names)
    print(f"RESULT dpo_step_s={dpo:.4f} sft_step_s={sft:.4f} negatives_s={neg:.5f} dpo_over_sft={dpo / sft:.3f} "
          f"negatives_over_dpo={neg / dpo:.5f}")


if __name__ == "__main__":
    main()
