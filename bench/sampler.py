"""Benchmark: cost of SyncCFG per sampling step against plain text CFG, on the tiny preset.

Builds the embedded-default joint model (``tiny`` preset, random weights) on the CPU and samples a 2 s clip
(video latent [1, 16, 16, 8, 8], audio latent [1, La, 32] with La = 2 s of the embedded codec's latents) with:

    plain               text CFG only: J + U, one batched forward of 2 rows per step
    synccfg_batched     SyncCFG: J + U + D_v + D_a, one batched forward of 4 rows per step
    synccfg_passwise    SyncCFG pass by pass: 4 forwards of 1 row per step
    synccfg_interval50  SyncCFG with sync_interval (0, 0.5): 4 rows for half the steps, 2 for the rest

The four are measured in one run, interleaved (the order rotates every repeat) after a warm-up, and each
figure is the median over repeats of (seconds for a full ``sample_av`` call) / steps. Threads are left at torch's
default. The last line is machine-readable:

    RESULT plain_s=... synccfg_batched_s=... synccfg_passwise_s=... synccfg_interval50_s=...
           batched_over_passwise=... synccfg_over_plain=... interval50_over_plain=...

Targets: batched_over_passwise < 1, synccfg_over_plain <= 1.6, interval50_over_plain <= 1.3.

    python bench/sampler.py --steps 10 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from comfyui_syncav.model.config import get_preset
from comfyui_syncav.guidance.sampling import sample_av
from comfyui_syncav.guidance.sync_cfg import SyncCFGGuidance
from comfyui_syncav.text.interface import EncodedText

CLIP_SECONDS = 2.0
VIDEO_LATENT_SHAPE = (1, 16, 16, 8, 8)      # [B, Cv, F, H, W]: 2 s at the tiny codec's 8 latent frames / s


def default_audio_latents() -> int:
    """2 s of the embedded audio codec's latents (its rate, if the codec module is there)."""
    try:
        from comfyui_syncav.codecs.embedded import TINY_AUDIO_SAMPLE_RATE_HZ, TINY_AUDIO_SAMPLES_PER_LATENT
        return round(CLIP_SECONDS * TINY_AUDIO_SAMPLE_RATE_HZ / TINY_AUDIO_SAMPLES_PER_LATENT)
    except ImportError:
        return 250


def build_model():
    from comfyui_syncav.model.joint import JointModel

    torch.manual_seed(0)
    model = JointModel(get_preset("tiny")).eval()
    return model


def random_text(config, generator) -> EncodedText:
    rows, dim = config.video.text_len, config.video.text_dim
    return EncodedText(torch.randn(1, rows, dim, generator=generator), torch.tensor([rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per measured run (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per configuration (default 5)")
    parser.add_argument("--audio-latents", type=int, default=None,
                        help="audio latent length La (default: 2 s of the embedded codec's latents)")
    parser.add_argument("--solver", default="unipc", choices=("unipc", "euler"))
    args = parser.parse_args()
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 (the 50 %% interval needs two halves) and --repeats >= 1")

    model = build_model()
    config = model.config
    audio_latents = args.audio_latents or default_audio_latents()
    g = torch.Generator().manual_seed(0)
    noise_video = torch.randn(*VIDEO_LATENT_SHAPE, generator=g)
    noise_audio = torch.randn(1, audio_latents, config.audio.in_channels, generator=g)
    positive = (random_text(config, g), random_text(config, g))
    negative = (random_text(config, g), random_text(config, g))
    anchors = (torch.randn(*VIDEO_LATENT_SHAPE, generator=g) * 0.5,
               torch.randn(1, audio_latents, config.audio.in_channels, generator=g) * 0.5)

    text_only = SyncCFGGuidance(text_scale_video=4.0, text_scale_audio=3.0)
    sync = SyncCFGGuidance(text_scale_video=4.0, text_scale_audio=3.0, sync_scale_video=2.0, sync_scale_audio=2.0)
    sync_half = SyncCFGGuidance(text_scale_video=4.0, text_scale_audio=3.0, sync_scale_video=2.0,
                                sync_scale_audio=2.0, sync_interval=(0.0, 0.5))
    configs = {
        "plain": dict(guidance=text_only, batched=True),
        "synccfg_batched": dict(guidance=sync, batched=True),
        "synccfg_passwise": dict(guidance=sync, batched=False),
        "synccfg_interval50": dict(guidance=sync_half, batched=True),
    }

    def run(name: str):
        start = time.perf_counter()
        out = sample_av(model, noise_video, noise_audio, positive, negative, anchors, steps=args.steps,
                        solver=args.solver, shift=5.0, **configs[name])
        return (time.perf_counter() - start) / args.steps, out

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"tiny preset, video latent {list(noise_video.shape)}, audio latent {list(noise_audio.shape)}, "
          f"{args.steps} {args.solver} steps, {args.repeats} repeats")

    # Warm-up (allocator, lazy inits) and a check that batched and pass-by-pass agree on this model.
    outputs = {name: run(name)[1] for name in configs}
    diff = max((outputs["synccfg_batched"][k] - outputs["synccfg_passwise"][k]).abs().max().item() for k in (0, 1))
    print(f"batched vs pass-by-pass: max |difference| of the sampled latents = {diff:.2e}")

    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]   # rotate so no config always runs first
        for name in order:
            times[name].append(run(name)[0])
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in names:
        spread = ", ".join(f"{t:.4f}" for t in times[name])
        print(f"{name:20s} median {median[name]:.4f} s/step   (runs: {spread})")

    print("RESULT "
          f"plain_s={median['plain']:.4f} synccfg_batched_s={median['synccfg_batched']:.4f} "
          f"synccfg_passwise_s={median['synccfg_passwise']:.4f} "
          f"synccfg_interval50_s={median['synccfg_interval50']:.4f} "
          f"batched_over_passwise={median['synccfg_batched'] / median['synccfg_passwise']:.3f} "
          f"synccfg_over_plain={median['synccfg_batched'] / median['plain']:.3f} "
          f"interval50_over_plain={median['synccfg_interval50'] / median['plain']:.3f}")


if __name__ == "__main__":
    main()
