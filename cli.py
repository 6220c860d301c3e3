"""Command line: ``python -m comfyui_syncav generate --prompt TEXT --seconds S --out clip.mp4``; also ``bouncebench``,
``train-default`` and ``eval`` (sync and quality on BounceBench, a JSON report)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def _interval(text: str) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,END fractions such as 0,0.5; got {text!r}") from None
    return start, end


def _blocks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices such as 1,2; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_syncav",
                                     description="Synchronized audio-video generation (ComfyUI-SyncAV).")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate a clip with its soundtrack on the embedded default model")
    gen.add_argument("--prompt", required=True, help="what the video shows")
    gen.add_argument("--audio-prompt", default=None, help="what it sounds like (default: the prompt)")
    gen.add_argument("--negative", default="", help="negative prompt for both streams")
    gen.add_argument("--seconds", type=float, default=2.0)
    gen.add_argument("--width", type=int, default=32, help="pixels")
    gen.add_argument("--height", type=int, default=32, help="pixels")
    gen.add_argument("--out", required=True, help="output .mp4 (h264 + aac)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    gen.add_argument("--shift", type=float, default=3.0)
    gen.add_argument("--text-scale", type=float, default=4.0, help="text guidance, both streams (1 = off)")
    gen.add_argument("--sync-scale", type=float, default=2.0, help="SyncCFG sync guidance, both streams (1 = off)")
    gen.add_argument("--sync-interval", type=_interval, default=(0.0, 1.0), metavar="START,END",
                     help="fraction range of the steps where sync guidance is on")
    gen.add_argument("--slg-blocks", type=_blocks, default=(), metavar="I,J",
                     help="blocks skipped in the text-negative pass (skip-layer guidance)")
    gen.add_argument("--device", default="cpu")
    _add_lora_args(gen)

    bench = commands.add_parser("bouncebench", help="write BounceBench clips (mp4 + caption .txt + ground-truth .json)")
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--split", choices=("train", "val", "test"), default="val")
    bench.add_argument("--clips", type=int, default=64)
    bench.add_argument("--start", type=int, default=0, help="index of the first clip within the split")
    bench.add_argument("--variant", default="standard", help="standard, two_balls, three_balls, fast, small, ...")

    tr = commands.add_parser("train-default", help="train the embedded default model on BounceBench (resumable)")
    tr.add_argument("--out", required=True, help="run folder: resumable state, exported weights, loss curve")
    tr.add_argument("--steps", type=int, default=4000, help="total optimizer steps (the lr schedule spans them)")
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--init", default=None, help="start from these weights (e.g. the shipped ones) instead of seed 0")
    tr.add_argument("--no-resume", action="store_true", help="ignore a training state already in --out")

    ev = commands.add_parser("eval", help="evaluate sync and quality on a benchmark (writes a JSON report)")
    ev.add_argument("--bench", choices=("bouncebench",), default="bouncebench")
    ev.add_argument("--split", choices=("train", "val", "test"), default="val")
    ev.add_argument("--seed", type=int, default=0, help="index of the first clip within the split")
    ev.add_argument("--clips", type=int, default=64)
    ev.add_argument("--variant", default="standard", help="standard, two_balls, three_balls, fast, small, ...")
    ev.add_argument("--guidance", choices=("plain", "synccfg"), required=True,
                    help="plain: text guidance only (sync scales 1); synccfg: text + sync guidance")
    ev.add_argument("--text-scale", type=float, default=4.0, help="text guidance, both streams (1 = off)")
    ev.add_argument("--sync-scale", type=float, default=None,
                    help="sync guidance, both streams (synccfg only; default 2.0)")
    ev.add_argument("--sync-interval", type=_interval, default=None, metavar="START,END",
                    help="fraction range of the steps where sync guidance is on (synccfg only; default 0,1)")
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    ev.add_argument("--shift", type=float, default=3.0)
    ev.add_argument("--real", action="store_true", help="also score the real clips of those seeds (the ceiling)")
    _add_lora_args(ev)
    ev.add_argument("--json", required=True, metavar="OUT", help="where to write the report (JSON)")
    ev.add_argument("--device", default="cpu")
    return parser


def _add_lora_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", default=None, metavar="FILE", help="a LoRA (.safetensors, e.g. from the DPO trainer)")
    parser.add_argument("--lora-strength-video", type=float, default=1.0, help="LoRA strength on the video tower")
    parser.add_argument("--lora-strength-audio", type=float, default=1.0, help="LoRA strength on the audio tower")


def _apply_lora_arg(pipeline, args) -> None:
    """Merge --lora into the pipeline's model (its own copy: the CLI builds a fresh pipeline per run)."""
    if args.lora is None:
        return
    from .model.lora import apply_lora, check_lora_fits, load_lora

    tensors, _ = load_lora(args.lora)
    check_lora_fits(pipeline.model, tensors, where=f"--lora {args.lora}")
    apply_lora(pipeline.model, tensors, strength_video=args.lora_strength_video,
               strength_audio=args.lora_strength_audio)


def _generate(args) -> int:
    import torch

    from .model.generate import generate_clip
    from .model.media_io import write_mp4
    from .model.pipeline import build_embedded_default
    from .model.sync_cfg import SyncCFGGuidance

    started = time.perf_counter()
    pipeline = build_embedded_default(device=args.device)
    _apply_lora_arg(pipeline, args)
    guidance = SyncCFGGuidance(text_scale_video=args.text_scale, text_scale_audio=args.text_scale,
                               sync_scale_video=args.sync_scale, sync_scale_audio=args.sync_scale,
                               sync_interval=args.sync_interval, slg_blocks=args.slg_blocks)
    with torch.inference_mode():
        clip = generate_clip(pipeline, args.prompt, args.audio_prompt, seconds=args.seconds, height_px=args.height,
                             width_px=args.width, seed=args.seed, steps=args.steps, solver=args.solver,
                             shift=args.shift, guidance=guidance, video_negative=args.negative,
                             audio_negative=args.negative, progress=True)
    write_mp4(args.out, clip.frames[0], clip.fps, clip.waveform[0], clip.sample_rate_hz)
    print(f"wrote {args.out}: {clip.frames.shape[1]} frames {clip.frames.shape[3]}x{clip.frames.shape[2]} at "
          f"{clip.fps:g} fps + {clip.sample_rate_hz} Hz audio, {clip.seconds:.2f} s "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


def _bouncebench(args) -> int:
    from .train.bouncebench import VARIANTS, write_dataset

    if args.variant not in VARIANTS:
        raise ValueError(f"--variant: expected one of {', '.join(VARIANTS)}, got {args.variant!r}")
    files = write_dataset(args.out, args.split, args.clips, VARIANTS[args.variant], start=args.start)
    print(f"wrote {len(files)} clips to {args.out}")
    return 0


def _train_default(args) -> int:
    import dataclasses

    from .train.embedded_training import EmbeddedRecipe, train_embedded_default

    recipe = dataclasses.replace(EmbeddedRecipe().with_steps(args.steps), batch_size=args.batch_size)
    result = train_embedded_default(args.out, recipe, init_weights=args.init, resume=not args.no_resume)
    last = result.state.history[-1] if result.state.history else {}
    print(f"trained {result.state.step} steps in {result.state.seconds / 60:.1f} min; last loss "
          f"{last.get('loss', float('nan')):.4f}; wrote {args.out}")
    return 0


def _eval(args) -> int:
    from .model.sync_cfg import SyncCFGGuidance
    from .train.bouncebench import VARIANTS
    from .train.evaluation import evaluate_bouncebench, format_table, write_json_atomic

    if args.variant not in VARIANTS:
        raise ValueError(f"--variant: expected one of {', '.join(VARIANTS)}, got {args.variant!r}")
    if args.guidance == "plain":
        given = [flag for flag, value in (("--sync-scale", args.sync_scale), ("--sync-interval", args.sync_interval))
                 if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only apply to --guidance synccfg (plain means sync scales 1)")
        sync_scale, interval = 1.0, (0.0, 1.0)
    else:
        sync_scale = 2.0 if args.sync_scale is None else args.sync_scale
        interval = (0.0, 1.0) if args.sync_interval is None else args.sync_interval
    guidance = SyncCFGGuidance(text_scale_video=args.text_scale, text_scale_audio=args.text_scale,
                               sync_scale_video=sync_scale, sync_scale_audio=sync_scale, sync_interval=interval)
    if args.clips < 1 or args.steps < 1:
        raise ValueError(f"--clips and --steps: expected positive numbers, got {args.clips} and {args.steps}")
    folder = os.path.dirname(os.path.abspath(args.json))
    if not os.path.isdir(folder):  # fail before the evaluation, not after it
        raise ValueError(f"--json {args.json}: folder {folder!r} does not exist")

    from .model.pipeline import build_embedded_default

    pipeline = build_embedded_default(device=args.device)
    _apply_lora_arg(pipeline, args)
    result = evaluate_bouncebench(pipeline, split=args.split, seed=args.seed, clips=args.clips, variant=args.variant,
                                  guidance=guidance, steps=args.steps, solver=args.solver, shift=args.shift,
                                  include_real=args.real, progress=True)
    write_json_atomic(args.json, result)
    print(format_table(result))
    print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "bouncebench":
            return _bouncebench(args)
        if args.command == "train-default":
            return _train_default(args)
        if args.command == "eval":
            return _eval(args)
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1
