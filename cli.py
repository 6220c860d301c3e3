"""Command line: ``python -m comfyui_syncav generate --prompt TEXT --seconds S --out clip.mp4``; also ``bouncebench``,
``train-default``, ``eval`` (sync and quality on BounceBench, a JSON report), ``convert`` (a published .pth
checkpoint to safetensors) and ``run`` (a workflow on a ComfyUI server, headless)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

# Ovi variants the generate command loads (ovi/variants.py; kept literal so --help needs no torch import).
OVI_VARIANT_KEYS = ("720x720_5s", "960x960_5s", "960x960_10s", "720x720_5s_fp8")


def _interval(text: str) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,END fractions such as 0,0.5; got {text!r}") from None
    if not 0.0 <= start <= end <= 1.0:   # NaN fails too
        raise argparse.ArgumentTypeError(f"expected START,END fractions with 0 <= START <= END <= 1, such as 0,0.5; "
                                         f"got {text!r}")
    return start, end


def _blocks(text: str) -> tuple[int, ...]:
    from .guidance.sync_cfg import parse_block_list

    try:
        return parse_block_list(text, what="")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_syncav",
                                     description="Synchronized audio-video generation (ComfyUI-SyncAV).")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate a clip with its soundtrack (embedded default or Ovi)")
    gen.add_argument("--model", default="embedded", choices=("embedded",) + OVI_VARIANT_KEYS,
                     help="embedded: the model that ships with the package; an Ovi variant loads its files from "
                          "--models-dir")
    gen.add_argument("--models-dir", default=None,
                     help="Ovi: a ComfyUI-style models folder (diffusion_models/, vae/, text_encoders/); default "
                          "$SYNCAV_MODELS_DIR or ./models")
    gen.add_argument("--prompt", required=True, help="what the video shows")
    gen.add_argument("--audio-prompt", default=None, help="what it sounds like (default: the prompt)")
    gen.add_argument("--speech", action="append", default=None, metavar="LINE",
                     help="Ovi: a spoken line (repeat for several); becomes <S>LINE<E>")
    gen.add_argument("--sound", default="", help="Ovi: the sound description (default: --audio-prompt)")
    gen.add_argument("--negative", default=None,
                     help="negative prompt for both streams (default: none; Ovi: its video and audio defaults)")
    gen.add_argument("--seconds", type=float, default=None, help="default 2 (embedded) or the Ovi variant's length")
    gen.add_argument("--width", type=int, default=None, help="pixels (default 32, or the Ovi variant's size)")
    gen.add_argument("--height", type=int, default=None, help="pixels (default 32, or the Ovi variant's size)")
    gen.add_argument("--blocks-on-gpu", type=int, default=None, metavar="N",
                     help="block swap: keep only N fusion blocks on --device, the others in CPU memory, copied in "
                          "per block (runs a model larger than the GPU, slower)")
    gen.add_argument("--out", required=True, help="output .mp4 (h264 + aac)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    gen.add_argument("--shift", type=float, default=3.0)
    gen.add_argument("--text-scale", type=float, default=4.0, help="text guidance, both streams (1 = off)")
    gen.add_argument("--sync-scale", type=float, default=2.0, help="SyncCFG sync guidance, both streams (1 = off)")
    _add_stream_sync_args(gen)
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
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's 1e-3)")
    tr.add_argument("--data-start-step", type=int, default=0,
                    help="first data step: a run continued with --init passes the steps already trained, so it "
                         "sees new clips")
    tr.add_argument("--noise-shift", type=float, default=None,
                    help="timestep shift of the training noise levels (default: the recipe's 1; 3 trains the "
                         "high-noise steps where the sampler decides the motion, docs/training.md)")

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
    _add_stream_sync_args(ev)
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    ev.add_argument("--shift", type=float, default=3.0)
    ev.add_argument("--real", action="store_true", help="also score the real clips of those seeds (the ceiling)")
    _add_lora_args(ev)
    ev.add_argument("--json", required=True, metavar="OUT", help="where to write the report (JSON)")
    ev.add_argument("--device", default="cpu")

    conv = commands.add_parser("convert", help="convert a published .pth/.pt checkpoint (MMAudio VAE, BigVGAN, "
                                               "Wan2.2 VAE) to .safetensors, without running code from the pickle")
    conv.add_argument("input", metavar="IN.pth", help="the pickled checkpoint")
    conv.add_argument("output", metavar="OUT.safetensors", help="where to write (atomically)")
    conv.add_argument("--kind", choices=("auto", "mmaudio-vae", "bigvgan", "wan-vae"), default="auto",
                      help="what the checkpoint holds (default: recognised from its keys)")

    run = commands.add_parser("run", help="run a workflow (UI or API format JSON) on a ComfyUI server and download "
                                          "its outputs")
    run.add_argument("workflow", metavar="WORKFLOW.json")
    run.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI server URL")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="set an input before queueing; NODE is an id or a title, VALUE is JSON or a plain string "
                          "(repeatable), e.g. --set 4.seed=7")
    run.add_argument("--out", default=".", help="folder for the downloaded outputs (server subfolders are kept)")
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                     help="give up (and interrupt the prompt) after this long; default: wait as long as it takes")
    return parser


def _add_stream_sync_args(parser) -> None:
    parser.add_argument("--sync-scale-video", type=float, default=None, metavar="X",
                        help="sync guidance of the video stream alone (against muted audio); default: --sync-scale")
    parser.add_argument("--sync-scale-audio", type=float, default=None, metavar="X",
                        help="sync guidance of the audio stream alone (against a static video); default: --sync-scale")


def _stream_sync_scales(args, both: float) -> tuple[float, float]:
    """(video, audio) sync scales: the per-stream flags where given, else the one for both streams."""
    return (both if args.sync_scale_video is None else args.sync_scale_video,
            both if args.sync_scale_audio is None else args.sync_scale_audio)


def _add_lora_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", default=None, metavar="FILE",
                        help="a LoRA (.safetensors, e.g. from the DPO trainer), or 'embedded-sync': the embedded "
                             "default's shipped sync LoRA")
    parser.add_argument("--lora-strength-video", type=float, default=1.0, help="LoRA strength on the video tower")
    parser.add_argument("--lora-strength-audio", type=float, default=1.0, help="LoRA strength on the audio tower")


def _lora_file(args):
    """The file --lora names (the shipped sync LoRA for 'embedded-sync'), or None without --lora."""
    if args.lora is None:
        return None
    from .generation.pipeline import EMBEDDED_SYNC_LORA_NAME, embedded_sync_lora_path

    return embedded_sync_lora_path() if args.lora == EMBEDDED_SYNC_LORA_NAME else args.lora


def _load_lora_arg(args):
    """The tensors of --lora, read before any model is built (a wrong file fails at once), or None."""
    path = _lora_file(args)
    if path is None:
        return None
    from .runtime.lora import load_lora
    from .files.safetensors_io import CheckpointError

    try:
        tensors, _ = load_lora(path)
    except CheckpointError as error:
        raise CheckpointError(f"--lora: {error}") from None
    return tensors


def _apply_lora_arg(pipeline, args, tensors) -> None:
    """Merge the --lora tensors into the pipeline's model (its own copy: the CLI builds a fresh pipeline per run)."""
    if tensors is None:
        return
    from .runtime.lora import apply_lora

    apply_lora(pipeline.model, tensors, strength_video=args.lora_strength_video,
               strength_audio=args.lora_strength_audio, where=f"--lora {args.lora}")


def _shipped_files() -> dict:
    """The embedded default's shipped files: every run reads them, so no output may replace one."""
    from .generation.pipeline import EMBEDDED_MODEL_FILE, EMBEDDED_SYNC_LORA_FILE, EMBEDDED_TEXT_FILE

    return {"shipped weights": EMBEDDED_MODEL_FILE, "shipped text encoder": EMBEDDED_TEXT_FILE,
            "shipped sync LoRA": EMBEDDED_SYNC_LORA_FILE}


def _build_ovi(args):
    """The Ovi pipeline of --model from --models-dir, with UMT5 from its text_encoders folder."""
    from .files.model_folders import default_models_dir, folder_tree_finder
    from .ovi.pipeline import build_ovi_pipeline
    from .ovi.variants import find_text_encoder_files, find_variant_files, get_variant

    variant = get_variant(args.model)
    models_dir = args.models_dir or default_models_dir()
    if not os.path.isdir(models_dir):
        raise ValueError(f"--models-dir {models_dir}: no such folder (expected diffusion_models/, vae/, "
                         "text_encoders/ inside)")
    finder = folder_tree_finder(models_dir)
    files = find_variant_files(variant, finder)
    return build_ovi_pipeline(variant, files, device=args.device, codec_device=args.device,
                              text_encoder_files=find_text_encoder_files(finder), blocks_on_gpu=args.blocks_on_gpu)


def _generate(args) -> int:
    import torch

    from .files.atomic import check_output_path
    from .generation.generate import check_generation_args, generate_clip, resolve_device
    from .files.media_io import write_mp4
    from .generation.pipeline import build_embedded_default
    from .guidance.sync_cfg import SyncCFGGuidance
    from .ovi.prompt import compose_prompts
    from .ovi.variants import get_variant

    started = time.perf_counter()
    # Everything that can be checked without the model, before it is loaded (an Ovi load takes minutes).
    prompts = compose_prompts(args.prompt, args.audio_prompt or "", video_negative=args.negative,
                              audio_negative=args.negative, speech=args.speech, sound=args.sound or "",
                              prompt_style=None if args.model == "embedded" else get_variant(args.model).prompt_style,
                              prompt_field="prompt", speech_field="--speech")
    check_generation_args(seconds=args.seconds, height_px=args.height, width_px=args.width, steps=args.steps,
                          solver=args.solver, shift=args.shift, seed=args.seed)
    sync_video, sync_audio = _stream_sync_scales(args, args.sync_scale)
    guidance = SyncCFGGuidance(text_scale_video=args.text_scale, text_scale_audio=args.text_scale,
                               sync_scale_video=sync_video, sync_scale_audio=sync_audio,
                               sync_interval=args.sync_interval, slg_blocks=args.slg_blocks)
    resolve_device(args.device, "--device")
    lora = _load_lora_arg(args)
    check_output_path(args.out, "--out", suffixes=(".mp4",),
                      inputs={"--lora": _lora_file(args), **_shipped_files()})
    if args.model == "embedded":
        pipeline = build_embedded_default(device=args.device)
        if args.blocks_on_gpu is not None:
            from .runtime.block_swap import enable_block_swap

            enable_block_swap(pipeline.model.cpu(), args.blocks_on_gpu, args.device)
    else:
        _check_ovi_clip_memory(args)
        pipeline = _build_ovi(args)
    _apply_lora_arg(pipeline, args, lora)
    with torch.inference_mode():
        clip = generate_clip(pipeline, prompts.video_prompt, prompts.audio_prompt,
                             seconds=args.seconds, height_px=args.height, width_px=args.width, seed=args.seed,
                             steps=args.steps, solver=args.solver, shift=args.shift, guidance=guidance,
                             video_negative=prompts.video_negative, audio_negative=prompts.audio_negative,
                             progress=True)
    write_mp4(args.out, clip.frames[0], clip.fps, clip.waveform[0], clip.sample_rate_hz)
    print(f"wrote {args.out}: {clip.frames.shape[1]} frames {clip.frames.shape[3]}x{clip.frames.shape[2]} at "
          f"{clip.fps:g} fps + {clip.sample_rate_hz} Hz audio, {clip.seconds:.2f} s "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


def _check_ovi_clip_memory(args) -> None:
    """An Ovi clip's frames must fit in memory: checked from the variant's rates before its weights load."""
    from .generation.generate import check_fits_memory, clip_host_bytes
    from .ovi.variants import get_variant

    variant = get_variant(args.model)
    seconds = args.seconds if args.seconds is not None else variant.seconds
    height = args.height if args.height is not None else variant.height_px
    width = args.width if args.width is not None else variant.width_px
    check_fits_memory(clip_host_bytes(seconds, height, width, variant.fps), "--seconds / --width / --height",
                      f"the decoded frames of a {seconds:g} s clip of {width}x{height} px at {variant.fps:g} fps")


def _bouncebench(args) -> int:
    from .files.atomic import check_output_path
    from .bouncebench.config import VARIANTS, split_seeds
    from .bouncebench.export import write_dataset

    if args.variant not in VARIANTS:
        raise ValueError(f"--variant: expected one of {', '.join(VARIANTS)}, got {args.variant!r}")
    if args.clips < 1 or args.start < 0:
        raise ValueError(f"--clips / --start: expected at least 1 clip from a start >= 0, got --clips {args.clips} "
                         f"--start {args.start}")
    try:
        split_seeds(args.split, args.clips, args.start)
    except ValueError as error:
        raise ValueError(f"--clips / --start: {error}") from None
    check_output_path(args.out, "--out", folder=True)
    files = write_dataset(args.out, args.split, args.clips, VARIANTS[args.variant], start=args.start)
    print(f"wrote {len(files)} clips to {args.out}")
    return 0


def _default_recipe(args):
    """The EmbeddedRecipe that ``train-default`` runs with these command-line options; a value the recipe refuses
    is named by its flag."""
    from dataclasses import replace

    from .train.embedded_training import EmbeddedRecipe
    from .train.value_rules import named_as

    with named_as(TRAIN_DEFAULT_FLAGS):
        recipe = replace(EmbeddedRecipe().with_steps(args.steps), batch_size=args.batch_size,
                         data_start_step=args.data_start_step)
        if args.lr is not None:
            recipe = replace(recipe, train=replace(recipe.train, lr=args.lr))
        if args.noise_shift is not None:
            noise = replace(recipe.loss.noise, shift=args.noise_shift)
            recipe = replace(recipe, loss=replace(recipe.loss, noise=noise))
    return recipe


# train-default's flags, named in check_embedded_training_args's messages and in the recipe's value errors.
TRAIN_DEFAULT_FLAGS = {"out_dir": "--out", "init_weights": "--init", "batch_size": "--batch-size", "steps": "--steps",
                       "lr": "--lr", "data_start_step": "--data-start-step", "shift": "--noise-shift"}


def _train_default(args) -> int:
    from .train.embedded_training import check_embedded_training_args, train_embedded_default

    recipe = _default_recipe(args)
    check_embedded_training_args(args.out, recipe, args.init, names=TRAIN_DEFAULT_FLAGS)
    result = train_embedded_default(args.out, recipe, init_weights=args.init, resume=not args.no_resume)
    last = result.state.history[-1] if result.state.history else {}
    print(f"trained {result.state.step} steps in {result.state.seconds / 60:.1f} min; last loss "
          f"{last.get('loss', float('nan')):.4f}; wrote {args.out}")
    return 0


def _eval(args) -> int:
    from .files.atomic import check_output_path
    from .generation.generate import check_generation_args, resolve_device
    from .guidance.sync_cfg import SyncCFGGuidance
    from .bouncebench.config import VARIANTS, split_seeds
    from .bouncebench.evaluation import evaluate_bouncebench
    from .bouncebench.report import format_table
    from .files.atomic import write_json_atomic

    if args.variant not in VARIANTS:
        raise ValueError(f"--variant: expected one of {', '.join(VARIANTS)}, got {args.variant!r}")
    if args.guidance == "plain":
        given = [flag for flag, value in (("--sync-scale", args.sync_scale), ("--sync-interval", args.sync_interval),
                                          ("--sync-scale-video", args.sync_scale_video),
                                          ("--sync-scale-audio", args.sync_scale_audio)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only apply to --guidance synccfg (plain means sync scales 1)")
        sync_scale, interval = 1.0, (0.0, 1.0)
    else:
        sync_scale = 2.0 if args.sync_scale is None else args.sync_scale
        interval = (0.0, 1.0) if args.sync_interval is None else args.sync_interval
    sync_video, sync_audio = _stream_sync_scales(args, sync_scale)
    guidance = SyncCFGGuidance(text_scale_video=args.text_scale, text_scale_audio=args.text_scale,
                               sync_scale_video=sync_video, sync_scale_audio=sync_audio, sync_interval=interval)
    if args.clips < 1 or args.steps < 1:
        raise ValueError(f"--clips and --steps: expected positive numbers, got {args.clips} and {args.steps}")
    try:
        split_seeds(args.split, args.clips, start=args.seed)
    except ValueError as error:
        raise ValueError(f"--clips / --seed: {error}") from None
    check_generation_args(steps=args.steps, solver=args.solver, shift=args.shift)
    resolve_device(args.device, "--device")
    lora = _load_lora_arg(args)
    # fail before the evaluation, not after it
    check_output_path(args.json, "--json", parent_must_exist=True,
                      inputs={"--lora": _lora_file(args), **_shipped_files()})

    from .generation.pipeline import build_embedded_default

    pipeline = build_embedded_default(device=args.device)
    _apply_lora_arg(pipeline, args, lora)
    result = evaluate_bouncebench(pipeline, split=args.split, seed=args.seed, clips=args.clips, variant=args.variant,
                                  guidance=guidance, steps=args.steps, solver=args.solver, shift=args.shift,
                                  include_real=args.real, progress=True)
    write_json_atomic(args.json, result)
    print(format_table(result))
    print(f"wrote {args.json}")
    return 0


def _convert(args) -> int:
    from .files.atomic import check_output_path
    from .ovi.convert import convert_checkpoint

    check_output_path(args.output, "output", suffixes=(".safetensors",), inputs={"input": args.input})
    report = convert_checkpoint(args.input, args.output, kind=args.kind)
    notes = f" ({'; '.join(report.notes)})" if report.notes else ""
    print(f"wrote {args.output}: {report.kind}, {report.num_tensors} tensors{notes}")
    return 0


def _run(args) -> int:
    from .headless.runner import run_workflow

    return run_workflow(args.workflow, args.server, args.overrides, out_dir=args.out, timeout_seconds=args.timeout)


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
        if args.command == "convert":
            return _convert(args)
        if args.command == "run":
            return _run(args)
    except ValueError as error:  # bad input: one clear line
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:     # a file that cannot be read or written (missing, permissions, disk full ...)
        print(f"error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:   # Ctrl-C, or SIGTERM during training (train/loop.py): saved, resumable
        print(f"interrupted{f' ({stop})' if str(stop) else ''}; a training command resumes when run again",
              file=sys.stderr)
        return 130
    except MemoryError:          # past the up-front estimate (it is a lower bound): a resource limit, not bad input
        print("error: out of memory; expected a smaller request (fewer seconds, pixels, clips or a smaller batch)",
              file=sys.stderr)
        return 1
    return 1


def _os_error_line(error: OSError) -> str:
    """One line naming the file and what went wrong (an OSError's own text may lack the name)."""
    if error.filename is None or not error.strerror:
        return str(error)
    names = str(error.filename) + (f" -> {error.filename2}" if error.filename2 else "")
    return f"{names}: {error.strerror}"
