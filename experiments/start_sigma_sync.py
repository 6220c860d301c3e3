"""At which noise levels is sync lost? Denoise real BounceBench clips from a partly noised start and score them.

Each val clip is encoded, noised to a start level sigma0 (``(1 - sigma0) * x0 + sigma0 * noise``, both streams, the
noise seeded by the clip's seed), and denoised to 0 by the model with Euler steps on the sampler's shifted grid
(the part of it below sigma0), with text guidance. sigma0 = 1 is plain generation; a small sigma0 keeps most of
the real clip. Where event F1 collapses as sigma0 rises is the range where the model decides the motion and the
timing, and where training has to be good (docs/results.md, "Where the sync is lost").

    python experiments/start_sigma_sync.py --clips 24 --start-sigmas 0.5,0.7,0.85,0.95,1

Last line: ``RESULT f1_at_<sigma0>=... visual_events_at_<sigma0>=... ...``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from comfyui_syncav.guidance.schedules import shift_sigmas
from comfyui_syncav.guidance.sync_cfg import SyncCFGConditioning, SyncCFGGuidance, guided_velocity
from comfyui_syncav.bouncebench.clips import make_clips
from comfyui_syncav.bouncebench.config import VARIANTS, split_seeds
from comfyui_syncav.bouncebench.evaluation import score_clip


def start_grid(start_sigma: float, steps: int, shift: float) -> np.ndarray:
    """Noise levels ``[K + 1]`` from ``start_sigma`` down to 0: the full sampler grid's levels below the start."""
    full = shift_sigmas(np.linspace(1.0, 0.0, steps + 1), shift)
    below = full[full < start_sigma - 1e-9]
    return np.concatenate([[start_sigma], below])


def denoise_from(pipeline, clip, start_sigma: float, *, steps: int, shift: float, text_scale: float) -> dict:
    """Score of ``clip`` re-made from ``start_sigma`` (a ``score_clip`` record)."""
    model = pipeline.model
    video_x0 = pipeline.video_codec.encode(clip.frames[None])      # [1, Cv, F, H, W]
    audio_x0 = pipeline.audio_codec.encode(clip.waveform[None])    # [1, La, Ca]
    texts = pipeline.encode_prompts([clip.caption, clip.caption, "", ""])
    pick = lambda i: type(texts)(texts.embeddings[i:i + 1], texts.lengths[i:i + 1])  # noqa: E731
    guidance = SyncCFGGuidance(text_scale_video=text_scale, text_scale_audio=text_scale)
    cond = SyncCFGConditioning.prepare(1, (pick(0), pick(1)), negative=(pick(2), pick(3)), static_video=None,
                                       silence=None, slg_blocks=guidance.slg_blocks, device="cpu",
                                       dtype=torch.float32)
    generator = torch.Generator().manual_seed(int(clip.seed))
    video = (1 - start_sigma) * video_x0 + start_sigma * torch.randn(video_x0.shape, generator=generator)
    audio = (1 - start_sigma) * audio_x0 + start_sigma * torch.randn(audio_x0.shape, generator=generator)
    grid = start_grid(start_sigma, steps, shift)
    with torch.no_grad():
        for i in range(len(grid) - 1):
            sigma = torch.full((1,), float(grid[i]))
            velocity_video, velocity_audio = guided_velocity(model, video, audio, sigma, sigma, cond,
                                                             guidance.scales_at(0, steps))
            video = video + float(grid[i + 1] - grid[i]) * velocity_video
            audio = audio + float(grid[i + 1] - grid[i]) * velocity_audio
        frames, waveform = pipeline.decode(video, audio)
    samples = int(clip.waveform.shape[-1])
    return score_clip(frames[0], waveform[0][..., :samples], pipeline.video_codec.fps,
                      pipeline.audio_codec.sample_rate, clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--start-sigmas", default="0.5,0.7,0.85,0.95,1")
    parser.add_argument("--steps", type=int, default=25, help="steps of the full grid (fewer run below sigma0)")
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--text-scale", type=float, default=4.0)
    parser.add_argument("--weights", default=None, help="joint-model weights (default: the embedded default)")
    args = parser.parse_args()

    from comfyui_syncav.model.checkpoint import load_joint_model
    from comfyui_syncav.generation.pipeline import build_embedded_default

    pipeline = build_embedded_default()
    if args.weights:
        pipeline.model = load_joint_model(args.weights)
    clips = make_clips(split_seeds("val", args.clips), VARIANTS["standard"])
    summary = {}
    print("| start sigma | event F1 | visual events per clip | audio onsets per clip |")
    print("|---|---|---|---|")
    for start_sigma in (float(s) for s in args.start_sigmas.split(",")):
        records = [denoise_from(pipeline, clip, start_sigma, steps=args.steps, shift=args.shift,
                                text_scale=args.text_scale) for clip in clips]
        f1 = float(np.mean([r["event_f1"] for r in records]))
        visual = float(np.mean([r["num_visual_events"] for r in records]))
        onsets = float(np.mean([r["num_audio_onsets"] for r in records]))
        summary[start_sigma] = (f1, visual)
        print(f"| {start_sigma:g} | {f1:.3f} | {visual:.2f} | {onsets:.2f} |", flush=True)
    print(f"(the real clips: {np.mean([len(c.impacts) for c in clips]):.2f} impacts per clip)")
    print("RESULT " + " ".join(f"f1_at_{s:g}={f1:.4f} visual_events_at_{s:g}={v:.2f}"
                               for s, (f1, v) in summary.items()))


if __name__ == "__main__":
    main()
