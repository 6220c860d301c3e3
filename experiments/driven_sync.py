"""How well each tower follows the other: sync of driven generation on BounceBench val clips.

Joint generation makes both streams from noise, so its sync mixes two abilities: drawing a coherent ball and
timing the sound to it. This script separates them, using the cross-task synergy tasks the model was trained on:

  video -> audio   the real clip's video latent given clean (sigma 0), the audio generated from noise;
                   scored as (real frames, generated audio)
  audio -> video   the real audio given clean, the video generated; scored as (generated frames, real audio)
  joint            both generated (what users get)

Each row also gets its chance level (the same generated stream scored against other clips' real partner) and the
margin F1 - chance. Same clips, prompts and initial noise in every row; Euler steps with text guidance on the
generated stream only.

    python experiments/driven_sync.py --clips 64 --steps 25 [--weights FILE]

Last line: ``RESULT v2a_margin=... a2v_margin=... joint_margin=...``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from comfyui_syncav.generation.generate import initial_noise
from comfyui_syncav.guidance.schedules import base_sigmas, shift_sigmas
from comfyui_syncav.bouncebench.clips import make_clips
from comfyui_syncav.bouncebench.config import STANDARD, split_seeds
from comfyui_syncav.metrics.sync_metrics import sync_report


@torch.no_grad()
def driven_sample(model, clean, noise, text, empty, driver: str, steps: int, shift: float, text_scale: float):
    """Euler flow sampling of one stream with the other given clean at sigma 0.

    clean: (video [B, Cv, F, H, W], audio [B, La, Ca]) real latents; noise: the same shapes; driver: "video"
    (the video is given, the audio generated) or "audio". text / empty: (text [B, L, D]) prompt / empty prompt.
    Returns the generated latent of the driven stream.
    """
    video_clean, audio_clean = clean
    x = noise[1].clone() if driver == "video" else noise[0].clone()
    sigmas = torch.as_tensor(np.append(shift_sigmas(base_sigmas(steps), shift), 0.0))
    batch = x.shape[0]
    zeros = torch.zeros(batch)
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        level = torch.full((batch,), s)
        if driver == "video":
            args = (video_clean.repeat(2, 1, 1, 1, 1), x.repeat(2, 1, 1), zeros.repeat(2), level.repeat(2))
        else:
            args = (x.repeat(2, 1, 1, 1, 1), audio_clean.repeat(2, 1, 1), level.repeat(2), zeros.repeat(2))
        texts = torch.cat([text, empty])
        velocity_video, velocity_audio = model(*args, texts, texts)
        velocity = velocity_audio if driver == "video" else velocity_video
        conditional, unconditional = velocity[:batch], velocity[batch:]
        guided = unconditional + text_scale * (conditional - unconditional)
        x = x + (s_next - s) * guided
    return x


def score(frames, waves, fps, sample_rate_hz) -> tuple[float, float]:
    """(mean event F1 of matched pairs, mean F1 of each clip's frames against the next clip's audio)."""
    n = len(frames)
    matched = [sync_report(frames[i], waves[i], fps, sample_rate_hz)["event_f1"] for i in range(n)]
    shifted = [sync_report(frames[i], waves[(i + 1) % n], fps, sample_rate_hz)["event_f1"] for i in range(n)]
    return float(np.nanmean(matched)), float(np.nanmean(shifted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--text-scale", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=16, help="clips per forward")
    parser.add_argument("--weights", default=None, help="joint-model weights (default: the embedded default)")
    args = parser.parse_args()

    from comfyui_syncav.model.checkpoint import load_joint_model
    from comfyui_syncav.generation.pipeline import build_embedded_default

    pipeline = build_embedded_default()
    if args.weights:
        pipeline.model = load_joint_model(args.weights)
    model, vc, ac = pipeline.model.eval(), pipeline.video_codec, pipeline.audio_codec
    fps, rate = float(vc.fps), int(ac.sample_rate)
    seeds = split_seeds("val", args.clips)
    clips = make_clips(seeds, STANDARD)
    real_frames = [c.frames for c in clips]
    real_waves = [c.waveform for c in clips]
    out = {"v2a": ([], []), "a2v": ([], [])}
    for start in range(0, len(clips), args.batch):
        part = clips[start:start + args.batch]
        frames = torch.as_tensor(np.stack([c.frames for c in part]))
        waves = torch.as_tensor(np.stack([c.waveform for c in part]))
        with torch.no_grad():
            video, audio = vc.encode(frames), ac.encode(waves)
            text = pipeline.text_encoder.encode([c.caption for c in part]).embeddings
            empty = pipeline.text_encoder.encode([""] * len(part)).embeddings
        rows = max(text.shape[1], empty.shape[1])
        text = torch.nn.functional.pad(text, (0, 0, 0, rows - text.shape[1]))
        empty = torch.nn.functional.pad(empty, (0, 0, 0, rows - empty.shape[1]))
        noise = [initial_noise((1, *video.shape[1:]), (1, *audio.shape[1:]), seed)
                 for seed in seeds[start:start + len(part)]]
        noise = (torch.cat([n[0] for n in noise]), torch.cat([n[1] for n in noise]))
        for driver, key in (("video", "v2a"), ("audio", "a2v")):
            latent = driven_sample(model, (video, audio), noise, text, empty, driver, args.steps, args.shift,
                                   args.text_scale)
            with torch.no_grad():
                decoded = ac.decode(latent) if driver == "video" else vc.decode(latent)
            out[key][0].extend(decoded.float().numpy())
        print(f"{start + len(part)}/{len(clips)} clips", flush=True)
    v2a = score(real_frames, [w[:, :real_waves[0].shape[-1]] for w in out["v2a"][0]], fps, rate)
    a2v = score(out["a2v"][0], real_waves, fps, rate)
    real = score(real_frames, real_waves, fps, rate)
    print()
    print("| generated | event F1 | chance F1 | margin |")
    print("|---|---|---|---|")
    for name, (f1, chance) in (("audio from the real video", v2a), ("video from the real audio", a2v),
                               ("nothing (real clips)", real)):
        print(f"| {name} | {f1:.3f} | {chance:.3f} | {f1 - chance:.3f} |")
    print()
    print(f"RESULT v2a_f1={v2a[0]:.4f} v2a_margin={v2a[0] - v2a[1]:.4f} a2v_f1={a2v[0]:.4f} "
          f"a2v_margin={a2v[0] - a2v[1]:.4f} real_margin={real[0] - real[1]:.4f}")


if __name__ == "__main__":
    main()
