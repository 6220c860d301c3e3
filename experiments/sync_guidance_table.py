"""Plain text CFG vs SyncCFG on the BounceBench val split, same prompts and noise in every row.

Runs ``evaluate_bouncebench`` once per guidance setting on the embedded default (or --weights) and prints a
markdown table (the one in docs/results.md), then writes every row's full JSON to --json-dir if given.
Last line: ``RESULT <row>_f1=... <row>_margin=... ...``.

    python experiments/sync_guidance_table.py --clips 64 --steps 25
"""

from __future__ import annotations

import argparse
from pathlib import Path

from comfyui_syncav.guidance.sync_cfg import SyncCFGGuidance
from comfyui_syncav.bouncebench.evaluation import evaluate_bouncebench
from comfyui_syncav.files.atomic import write_json_atomic

ROWS = {  # name -> (text scale, sync scale, sync interval)
    "no_guidance": (1.0, 1.0, (0.0, 1.0)),
    "plain": (4.0, 1.0, (0.0, 1.0)),
    "sync1.5": (4.0, 1.5, (0.0, 1.0)),
    "sync2": (4.0, 2.0, (0.0, 1.0)),
    "sync3": (4.0, 3.0, (0.0, 1.0)),
    "sync2_first_half": (4.0, 2.0, (0.0, 0.5)),
}
COLUMNS = ("event_f1", "chance_event_f1", "event_f1_margin", "median_offset_ms", "av_align", "xcorr_offset_ms",
           "video_blob_count_ok", "video_colour_error", "audio_pitch_error_hz", "audio_spectral_distance_db")


def fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0, help="first val clip")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    parser.add_argument("--weights", default=None, help="joint-model weights (default: the embedded default)")
    parser.add_argument("--json-dir", default=None)
    args = parser.parse_args()

    from comfyui_syncav.model.checkpoint import load_joint_model
    from comfyui_syncav.generation.pipeline import build_embedded_default

    pipeline = build_embedded_default()
    if args.weights:
        pipeline.model = load_joint_model(args.weights)
    if args.json_dir:
        Path(args.json_dir).mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.rows.split(","):
        text, sync, interval = ROWS[name]
        guidance = SyncCFGGuidance(text_scale_video=text, text_scale_audio=text, sync_scale_video=sync,
                                   sync_scale_audio=sync, sync_interval=interval)
        results[name] = evaluate_bouncebench(pipeline, split="val", seed=args.seed, clips=args.clips,
                                             guidance=guidance, steps=args.steps, include_real=(name == "plain"),
                                             progress=False)
        print(f"{name}: F1 {results[name]['event_f1']:.3f} (chance {results[name]['chance_event_f1']:.3f}) in "
              f"{results[name]['elapsed_s']:.0f} s", flush=True)
        if args.json_dir:
            write_json_atomic(Path(args.json_dir) / f"{name}.json", results[name])

    print()
    print("| row | text | sync | interval | " + " | ".join(COLUMNS) + " |")
    print("|---" * (4 + len(COLUMNS)) + "|")
    for name, result in results.items():
        text, sync, interval = ROWS[name]
        print(f"| {name} | {text:g} | {sync:g} | {interval[0]:g}–{interval[1]:g} | "
              + " | ".join(fmt(result.get(k)) for k in COLUMNS) + " |")
    real = next((r["real"] for r in results.values() if r.get("real")), None)
    if real:
        print("| real clips | | | | " + " | ".join(fmt(real.get(k)) for k in COLUMNS) + " |")
    print()
    print("RESULT " + " ".join(f"{name}_f1={r['event_f1']:.4f} {name}_margin={r['event_f1_margin']:.4f}"
                               for name, r in results.items()))


if __name__ == "__main__":
    main()
