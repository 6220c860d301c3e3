"""Plain text CFG vs SyncCFG (and its cheaper anchors) on the BounceBench val split, same prompts and noise per row.

Runs ``evaluate_bouncebench`` once per guidance row on the embedded default (or --weights) and prints two markdown
tables (the ones in docs/results.md): the means per row with each row's cost, and each row's difference against
the "plain" row paired clip by clip, with its standard error. Every row's full JSON goes to --json-dir if given
(``--reuse`` loads a row from there instead of running it again, when its settings match).

Rows (``--rows``): the names of ``ROWS``, or ``sync<S>[_first_half][_<anchors>]`` with anchors ``harmony`` (the
default), ``audio_alone`` or ``cut`` (``cross_modal_cut``), e.g. ``sync1.5_cut``: sync scale S; every row but
no_guidance (text 1) has text scale ``--text-scale`` (default 4).

Cost: model passes per step in units of one full joint pass (J, U and the full anchor passes count 1; the
audio-alone pass counts the audio tower's share of a pass, its FLOPs on this clip size counted with
``torch.utils.flop_counter``), and seconds per clip. The seconds of the evaluation share the CPU with whatever else
runs; ``--timing-clips N`` instead times N clips of every row side by side (the rows alternate clip by clip, so load
changes hit all rows alike), writes timing.json to --json-dir, and the tables read it from there for their
"cost vs plain" column (a row's fastest clip over plain's fastest: ``cost_ratios``).

Last line: ``RESULT <row>_f1=... <row>_margin=... <row>_dmargin=... <row>_dmargin_se=... <row>_passes=... ...``.

    python experiments/sync_guidance_table.py --clips 64 --steps 25
    python experiments/sync_guidance_table.py --rows plain,sync2,sync2_audio_alone,sync2_cut --timing-clips 8 \\
        --json-dir runs/anchors
    python experiments/sync_guidance_table.py --rows no_guidance,plain,sync2,sync2_audio_alone,sync2_cut \\
        --clips 192 --json-dir runs/anchors --reuse
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import torch

from comfyui_syncav.bouncebench.evaluation import evaluate_bouncebench
from comfyui_syncav.bouncebench.report import PairedDifference, jsonable, paired_difference
from comfyui_syncav.files.atomic import write_json_atomic
from comfyui_syncav.guidance.passes import Pass, SyncCFGConditioning, evaluate_passes
from comfyui_syncav.guidance.sync_cfg import SyncAnchors, SyncCFGGuidance, plan_passes
from comfyui_syncav.text.interface import EncodedText


class Row(NamedTuple):
    """One guidance setting of the table (text None: the table's ``--text-scale``)."""

    text: float | None
    sync: float
    interval: tuple[float, float] = (0.0, 1.0)
    anchors: SyncAnchors = SyncAnchors.HARMONY


ROWS = {
    "no_guidance": Row(1.0, 1.0),
    "plain": Row(None, 1.0),
    "sync1.5": Row(None, 1.5),
    "sync2": Row(None, 2.0),
    "sync3": Row(None, 3.0),
    "sync2_first_half": Row(None, 2.0, (0.0, 0.5)),
    "sync2_audio_alone": Row(None, 2.0, anchors=SyncAnchors.AUDIO_ALONE),
    "sync2_cut": Row(None, 2.0, anchors=SyncAnchors.CROSS_MODAL_CUT),
}
# Row-name suffix -> anchors (``sync<S>[_first_half][_<suffix>]``).
ANCHOR_SUFFIXES = {"harmony": SyncAnchors.HARMONY, "audio_alone": SyncAnchors.AUDIO_ALONE,
                   "cut": SyncAnchors.CROSS_MODAL_CUT, "cross_modal_cut": SyncAnchors.CROSS_MODAL_CUT}
_ROW_PATTERN = re.compile(r"sync(\d+(?:\.\d+)?)(_first_half)?(?:_(" + "|".join(ANCHOR_SUFFIXES) + r"))?")
BASE_ROW = "plain"
DEFAULT_TEXT_SCALE = 4.0
COLUMNS = ("event_f1", "chance_event_f1", "event_f1_margin", "median_offset_ms", "av_align", "xcorr_offset_ms",
           "video_blob_count_ok", "video_colour_error", "audio_pitch_error_hz", "audio_spectral_distance_db")
# Per-clip numbers whose difference against the base row is paired clip by clip (xcorr offset left out: it is
# ambiguous by a bounce period on these clips, docs/results.md).
DIFF_KEYS = ("event_f1", "event_f1_margin", "median_offset_ms", "av_align", "video_blob_count_ok",
             "video_colour_error", "video_radius_ratio", "audio_pitch_error_hz", "audio_spectral_distance_db")
TIMING_FILE = "timing.json"


def parse_row(name: str, text_scale: float = DEFAULT_TEXT_SCALE) -> Row:
    """The guidance setting a row name asks for (``ROWS``, or ``sync<S>[_first_half][_<anchors>]``), its text scale
    ``text_scale`` unless the row fixes it (no_guidance: 1)."""
    if name in ROWS:
        row = ROWS[name]
        return row if row.text is not None else row._replace(text=float(text_scale))
    match = _ROW_PATTERN.fullmatch(name)
    if not match:
        raise ValueError(f"row {name!r}: expected one of {', '.join(ROWS)}, or sync<scale>[_first_half][_<anchors>] "
                         f"with anchors one of {', '.join(ANCHOR_SUFFIXES)} (e.g. sync1.5_cut)")
    scale, first_half, suffix = match.groups()
    return Row(float(text_scale), float(scale), (0.0, 0.5) if first_half else (0.0, 1.0),
               ANCHOR_SUFFIXES[suffix] if suffix else SyncAnchors.HARMONY)


def guidance_of(row: Row) -> SyncCFGGuidance:
    return SyncCFGGuidance(text_scale_video=row.text, text_scale_audio=row.text, sync_scale_video=row.sync,
                           sync_scale_audio=row.sync, sync_interval=row.interval, anchors=row.anchors)


def passes_per_step(guidance: SyncCFGGuidance, steps: int) -> tuple[float, float]:
    """(full passes, audio-alone passes) per sampling step, averaged over the ``steps`` of a run."""
    plans = [plan_passes(guidance.scales_at(i, steps)) for i in range(steps)]
    alone = sum(p.count(Pass.AUDIO_ALONE) for p in plans) / steps
    return sum(len(p) for p in plans) / steps - alone, alone


def audio_alone_share(model, video_shape, audio_shape) -> float:
    """FLOPs of one audio-alone pass over those of one full joint pass, for latents of these shapes (batch 1).

    video_shape ``[1, Cv, F, H, W]``, audio_shape ``[1, La, Ca]``. Counted with ``torch.utils.flop_counter`` on the
    model itself (matmuls and attention), so it holds for any size the model is built at.
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = model.config
    text = [EncodedText(torch.zeros(1, tower.text_len, tower.text_dim), torch.tensor([tower.text_len]))
            for tower in (config.video, config.audio)]
    cond = SyncCFGConditioning.prepare(1, tuple(text))
    video, audio = torch.zeros(video_shape), torch.zeros(audio_shape)
    sigma = torch.full((1,), 0.5)

    def flops(passes) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            evaluate_passes(model, passes, video, audio, sigma, sigma, cond)
        return counter.get_total_flops()

    joint = flops((Pass.JOINT,))
    return (flops((Pass.JOINT, Pass.AUDIO_ALONE)) - joint) / joint


def per_clip_values(result: dict, key: str) -> dict:
    """Clip seed -> the clip's number for ``key`` (None where undefined). ``event_f1_margin`` is the clip's F1 minus
    its chance F1 (its video against the next clip's audio, ``result["chance"]["per_clip_event_f1"]``); a result
    without per-clip chance numbers gives {}."""
    records = result["per_clip"]
    if key != "event_f1_margin":
        return {r["seed"]: r.get(key) for r in records}
    chance = (result.get("chance") or {}).get("per_clip_event_f1")
    if not chance or len(chance) != len(records):
        return {}
    return {r["seed"]: (None if c is None else r["event_f1"] - c) for r, c in zip(records, chance)}


def differences(result: dict, base: dict) -> dict[str, PairedDifference | None]:
    """Each ``DIFF_KEYS`` number of ``result`` minus ``base``'s, paired by clip seed (``paired_difference``)."""
    return {key: paired_difference(per_clip_values(base, key), per_clip_values(result, key)) for key in DIFF_KEYS}


def cost_ratios(timing: dict, base: str = BASE_ROW) -> dict[str, float]:
    """Row -> (the row's fastest clip) / (``base``'s fastest clip), in wall-clock seconds.

    timing: ``{"seconds": {row: [seconds per clip, ...]}}``. Every clip of a row does the same work (same latent
    shapes, same passes), so its spread is other load on the machine, and the fastest clip is the least disturbed.
    """
    seconds = timing["seconds"]
    if base not in seconds:
        return {}
    return {row: min(values) / min(seconds[base]) for row, values in seconds.items()}


def time_rows(pipeline, names: list[str], clips: int, steps: int, seed: int,
              text_scale: float = DEFAULT_TEXT_SCALE) -> dict:
    """Seconds of ``generate_clip`` per clip for every row, the rows alternating clip by clip (their order rotates
    each clip) after one warm-up clip per row. Returns ``{"clips", "steps", "seconds": {row: [...]}}``."""
    from comfyui_syncav.bouncebench.clips import make_clips
    from comfyui_syncav.bouncebench.config import STANDARD, split_seeds
    from comfyui_syncav.generation.generate import generate_clip

    guidances = {name: guidance_of(parse_row(name, text_scale)) for name in names}
    reals = make_clips(split_seeds("val", clips, start=seed), STANDARD)
    seconds = {name: [] for name in names}

    def one(real, name) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            generate_clip(pipeline, real.caption, real.caption, seconds=STANDARD.seconds, height_px=STANDARD.size_px,
                          width_px=STANDARD.size_px, seed=int(real.seed), steps=steps, guidance=guidances[name])
        return time.perf_counter() - started

    for name in names:  # warm-up: first-call allocations and caches
        one(reals[0], name)
    for i, real in enumerate(reals):
        for name in names[i % len(names):] + names[:i % len(names)]:
            seconds[name].append(one(real, name))
    return {"clips": clips, "steps": steps, "seconds": seconds}


def fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def fmt_difference(d: PairedDifference | None) -> str:
    if d is None:
        return "–"
    return f"{d.mean:+.3f}" + ("" if d.se is None else f" ± {d.se:.3f}")


def print_differences(results: dict, base_name: str, units: dict) -> dict:
    """Print every other row's ``differences`` against ``base_name`` as a markdown table, with the margin gained per
    extra pass (units: row -> passes per step); return them (row -> key -> ``PairedDifference``)."""
    base = results[base_name]
    print(f"\nDifference against {base_name}, paired by clip (mean ± standard error):\n")
    print("| row | " + " | ".join(DIFF_KEYS) + " | margin gain per extra pass |")
    print("|---" * (2 + len(DIFF_KEYS)) + "|")
    diffs = {}
    for name, result in results.items():
        if name == base_name:
            continue
        diffs[name] = differences(result, base)
        margin, extra = diffs[name]["event_f1_margin"], units[name] - units[base_name]
        per_pass = f"{margin.mean / extra:+.4f}" if margin is not None and extra > 0 else "–"
        print(f"| {name} | " + " | ".join(fmt_difference(diffs[name][k]) for k in DIFF_KEYS) + f" | {per_pass} |")
    return diffs


def _matches(result: dict, guidance: SyncCFGGuidance, args) -> bool:
    return (result.get("clips") == args.clips and result.get("seed") == args.seed and result.get("steps") == args.steps
            and result.get("variant", "standard") == args.variant
            and result.get("video_decoder", "learned") == ("linear" if args.linear_decoder else "learned")
            and result.get("sync_lora", False) == args.sync_lora
            and result.get("guidance") == jsonable(dataclasses.asdict(guidance)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0, help="first val clip")
    parser.add_argument("--text-scale", type=float, default=DEFAULT_TEXT_SCALE,
                        help="text guidance of every row but no_guidance (both streams)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="comma-separated; names of " + ", ".join(ROWS) + ", or sync<S>[_first_half][_<anchors>]")
    parser.add_argument("--weights", default=None, help="joint-model weights (default: the embedded default)")
    parser.add_argument("--variant", default="standard", help="BounceBench variant (two_balls, fast, noisy, ...)")
    parser.add_argument("--sync-lora", action="store_true",
                        help="merge the shipped sync LoRA (weights/embedded_sync_lora.safetensors) into the model")
    parser.add_argument("--linear-decoder", action="store_true",
                        help="decode video with the DCT codec's linear decoder instead of the learned one")
    parser.add_argument("--json-dir", default=None)
    parser.add_argument("--reuse", action="store_true", help="load rows already in --json-dir with these settings")
    parser.add_argument("--versus", default="", help="comma-separated rows to pair the others against too "
                        "(besides plain), e.g. sync2")
    parser.add_argument("--timing-clips", type=int, default=0,
                        help="only time N clips per row side by side (writes timing.json to --json-dir)")
    args = parser.parse_args()
    names = [n for n in args.rows.split(",") if n]
    try:
        rows = {name: parse_row(name, args.text_scale) for name in names}
    except ValueError as error:
        parser.error(f"--rows: {error}")

    from comfyui_syncav.generation.pipeline import build_embedded_default, embedded_sync_lora_path
    from comfyui_syncav.bouncebench.config import VARIANTS
    from comfyui_syncav.codecs.embedded import TinyVideoCodec

    pipeline = build_embedded_default(weights=args.weights)
    if args.sync_lora:
        from comfyui_syncav.runtime.lora import apply_lora, load_lora

        lora_path = embedded_sync_lora_path()
        apply_lora(pipeline.model, load_lora(lora_path)[0], where=lora_path.name)
    if args.linear_decoder:
        pipeline.video_codec = TinyVideoCodec()       # same latents, the linear decoder
    json_dir = Path(args.json_dir) if args.json_dir else None
    if json_dir:
        json_dir.mkdir(parents=True, exist_ok=True)

    if args.timing_clips:
        timing = time_rows(pipeline, names, args.timing_clips, args.steps, args.seed, args.text_scale)
        ratios = cost_ratios(timing)
        if json_dir:
            write_json_atomic(json_dir / TIMING_FILE, timing)
        print("| row | fastest s per clip | median s per clip | cost vs plain |")
        print("|---|---|---|---|")
        for name, values in timing["seconds"].items():
            print(f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | {fmt(ratios.get(name))} |")
        print("RESULT " + " ".join(f"{name}_s_per_clip={min(v):.3f}"
                                   + (f" {name}_cost={ratios[name]:.3f}" if name in ratios else "")
                                   for name, v in timing["seconds"].items()))
        return

    results = {}
    for name, row in rows.items():
        guidance = guidance_of(row)
        path = json_dir / f"{name}.json" if json_dir else None
        if args.reuse and path is not None and path.exists():
            loaded = json.loads(path.read_text())
            if _matches(loaded, guidance, args):
                results[name] = loaded
                print(f"{name}: loaded from {path}", flush=True)
                continue
        results[name] = evaluate_bouncebench(pipeline, split="val", seed=args.seed, clips=args.clips,
                                             variant=args.variant, guidance=guidance, steps=args.steps,
                                             include_real=(name == BASE_ROW), progress=False)
        results[name]["video_decoder"] = "linear" if args.linear_decoder else "learned"
        results[name]["sync_lora"] = bool(args.sync_lora)
        print(f"{name}: F1 {results[name]['event_f1']:.3f} (chance {results[name]['chance_event_f1']:.3f}) in "
              f"{results[name]['elapsed_s']:.0f} s", flush=True)
        if path is not None:
            write_json_atomic(path, results[name])

    bench = VARIANTS[args.variant]
    video_shape, audio_shape = pipeline.latent_shapes(bench.seconds, bench.size_px, bench.size_px)
    share = audio_alone_share(pipeline.model, video_shape, audio_shape)
    passes = {name: passes_per_step(guidance_of(row), args.steps) for name, row in rows.items()}
    units = {name: full + share * alone for name, (full, alone) in passes.items()}
    timing_path = json_dir / TIMING_FILE if json_dir else None
    ratios = cost_ratios(json.loads(timing_path.read_text())) if timing_path and timing_path.exists() else {}

    print()
    print("| row | text | sync | interval | anchors | " + " | ".join(COLUMNS)
          + " | passes per step | cost vs plain | s per clip (shared CPU) |")
    print("|---" * (8 + len(COLUMNS)) + "|")
    for name, result in results.items():
        row = rows[name]
        full, alone = passes[name]
        passes_text = f"{full:g}" + (f" + {alone:g} audio-alone = {units[name]:.2f}" if alone else "")
        print(f"| {name} | {row.text:g} | {row.sync:g} | {row.interval[0]:g}–{row.interval[1]:g} | "
              f"{row.anchors.value if row.sync != 1 else '–'} | "
              + " | ".join(fmt(result.get(k)) for k in COLUMNS)
              + f" | {passes_text} | {fmt(ratios.get(name))} | {result['elapsed_s'] / result['clips']:.2f} |")
    real = next((r["real"] for r in results.values() if r.get("real")), None)
    if real:
        print("| real clips | | | | | " + " | ".join(fmt(real.get(k)) for k in COLUMNS) + " | | | |")
    print(f"\n(an audio-alone pass costs {share:.3f} of a full pass in FLOPs at this clip size)")

    diffs = print_differences(results, BASE_ROW, units) if BASE_ROW in results else {}
    for other in args.versus.split(","):
        if other and other != BASE_ROW and other in results:
            print_differences(results, other, units)

    fields = []
    for name, result in results.items():
        fields += [f"{name}_f1={result['event_f1']:.4f}", f"{name}_margin={result['event_f1_margin']:.4f}"]
        margin = diffs.get(name, {}).get("event_f1_margin")
        if margin is not None:
            fields += [f"{name}_dmargin={margin.mean:.4f}", f"{name}_dmargin_se={margin.se or 0.0:.4f}"]
        fields.append(f"{name}_passes={units[name]:.3f}")
        if name in ratios:
            fields.append(f"{name}_cost={ratios[name]:.3f}")
    print()
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
