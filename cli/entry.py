"""Command line: ``python -m comfyui_syncav generate --prompt TEXT --seconds S --out clip.mp4``; also ``bouncebench``,
``train-default``, ``train-dpo`` (a sync LoRA on your clips), ``eval`` (sync and quality on BounceBench, a JSON report), ``convert`` (a published .pth
checkpoint to safetensors) and ``run`` (a workflow on a ComfyUI server, headless). The parser and the exit codes
live here; each command in its module."""

from __future__ import annotations

import argparse
import logging
import sys

from ..guidance.sync_cfg import DEFAULT_ANCHORS, SyncAnchors
from .common import OVI_VARIANT_KEYS, add_compile_arg, add_lora_args, add_stream_sync_args, block_list_arg, \
    interval_arg
from .generate import generate_command
from .train import train_codec_command, train_default_command
from .train_dpo import add_train_dpo_arguments, train_dpo_command
from .evaluate import bouncebench_command, eval_command
from .tools import convert_command, run_command


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
    gen.add_argument("--text-scale", type=float, default=None,
                     help="text guidance, both streams (1 = off; default 2 for the embedded model, 4 for Ovi)")
    gen.add_argument("--sync-scale", type=float, default=2.0, help="SyncCFG sync guidance, both streams (1 = off)")
    add_stream_sync_args(gen)
    gen.add_argument("--sync-interval", type=interval_arg, default=(0.0, 1.0), metavar="START,END",
                     help="fraction range of the steps where sync guidance is on")
    gen.add_argument("--slg-blocks", type=block_list_arg, default=(), metavar="I,J",
                     help="blocks skipped in the text-negative pass (skip-layer guidance)")
    gen.add_argument("--sync-anchors", choices=[a.value for a in SyncAnchors], default=DEFAULT_ANCHORS.value,
                     help="what sync guidance pushes each stream away from (harmony: muted audio / static video, 4 "
                          "passes a step; audio_alone and cross_modal_cut: 3)")
    gen.add_argument("--device", default="cpu")
    add_lora_args(gen)
    add_compile_arg(gen)

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
    tr.add_argument("--warmup-steps", type=int, default=None,
                    help="steps of linear learning-rate warm-up before the cosine (default: the recipe's 200)")
    tr.add_argument("--data-start-step", type=int, default=0,
                    help="first data step: a run continued with --init passes the steps already trained, so it "
                         "sees new clips")
    tr.add_argument("--noise-shift", type=float, default=None,
                    help="timestep shift of the training noise levels (default: the recipe's 1; 3 trains the "
                         "high-noise steps where the sampler decides the motion, docs/training.md)")
    tr.add_argument("--cross-modal-window", type=float, default=None, metavar="FRAMES",
                    help="Harmony's local + global interaction: each token attends the other stream within this "
                         "many video latent frames (default: Ovi's global fusion; docs/training.md)")

    tr.add_argument("--blocks", type=int, default=None, metavar="N",
                    help="fusion blocks of the network (default: the --init network's, else the tiny preset's 4); an "
                         "--init network with fewer is deepened, each new block a copy whose outputs start at zero, "
                         "so training starts from what it computed (docs/training.md)")

    tc = commands.add_parser("train-codec", help="train the embedded video codec's decoder on BounceBench "
                                                 "(resumable)")
    tc.add_argument("--out", required=True, help="run folder: resumable state and embedded_video_decoder.safetensors")
    tc.add_argument("--steps", type=int, default=None,
                    help="optimizer steps of the first stage, the block network (default: the recipe's)")
    tc.add_argument("--refine-steps", type=int, default=None,
                    help="optimizer steps of the second stage, the full-resolution refinement (default: the "
                         "recipe's)")
    tc.add_argument("--first-stage", default=None, metavar="FILE",
                    help="a decoder without refinement to use as the (frozen) first stage instead of training one, "
                         "e.g. an earlier run's embedded_video_decoder.safetensors")
    tc.add_argument("--no-resume", action="store_true", help="ignore a training state already in --out")

    add_train_dpo_arguments(commands)

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
    ev.add_argument("--sync-interval", type=interval_arg, default=None, metavar="START,END",
                    help="fraction range of the steps where sync guidance is on (synccfg only; default 0,1)")
    add_stream_sync_args(ev)
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    ev.add_argument("--shift", type=float, default=3.0)
    ev.add_argument("--real", action="store_true", help="also score the real clips of those seeds (the ceiling)")
    add_lora_args(ev)
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    peer_lost = ()       # nothing to catch, and no torch import, outside train-dpo
    if args.command == "train-dpo":
        from ..train.distributed import PeerLost as peer_lost
    try:
        if args.command == "generate":
            return generate_command(args)
        if args.command == "bouncebench":
            return bouncebench_command(args)
        if args.command == "train-default":
            return train_default_command(args)
        if args.command == "train-codec":
            return train_codec_command(args)
        if args.command == "train-dpo":
            return train_dpo_command(args)
        if args.command == "eval":
            return eval_command(args)
        if args.command == "convert":
            return convert_command(args)
        if args.command == "run":
            return run_command(args)
    except peer_lost as error:   # one process of a torchrun run stopped: the others stop with this line
        print(f"error: {error}; resume from the last checkpoint with the same command", file=sys.stderr)
        return 1
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
