"""What several commands share: argument types, the per-stream sync and LoRA options, the shipped files no output
may replace, and Ovi's pipeline from a models folder."""

from __future__ import annotations

import argparse
import os


def interval_arg(text: str) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,END fractions such as 0,0.5; got {text!r}") from None
    if not 0.0 <= start <= end <= 1.0:   # NaN fails too
        raise argparse.ArgumentTypeError(f"expected START,END fractions with 0 <= START <= END <= 1, such as 0,0.5; "
                                         f"got {text!r}")
    return start, end


def block_list_arg(text: str) -> tuple[int, ...]:
    from ..guidance.sync_cfg import parse_block_list

    try:
        return parse_block_list(text, what="")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# Ovi variants the generate command loads (ovi/variants.py; kept literal so --help needs no torch import).
OVI_VARIANT_KEYS = ("720x720_5s", "960x960_5s", "960x960_10s", "720x720_5s_fp8")


def add_stream_sync_args(parser) -> None:
    parser.add_argument("--sync-scale-video", type=float, default=None, metavar="X",
                        help="sync guidance of the video stream alone (against muted audio); default: --sync-scale")
    parser.add_argument("--sync-scale-audio", type=float, default=None, metavar="X",
                        help="sync guidance of the audio stream alone (against a static video); default: --sync-scale")


def stream_sync_scales(args, both: float) -> tuple[float, float]:
    """(video, audio) sync scales: the per-stream flags where given, else the one for both streams."""
    return (both if args.sync_scale_video is None else args.sync_scale_video,
            both if args.sync_scale_audio is None else args.sync_scale_audio)


# runtime/compile.py's COMPILE_CHOICES (kept literal so --help needs no torch import; a test holds them equal).
COMPILE_CHOICES = ("off", "regional")


def add_compile_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default="off",
                        help="regional: torch.compile (inductor) one fusion block's computation once for all blocks; "
                             "the first step is slower while it compiles, later ones faster on a GPU (needs Triton "
                             "on CUDA, a C++ compiler on the CPU)")


def add_lora_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", default=None, metavar="FILE",
                        help="a LoRA (.safetensors, e.g. from the DPO trainer), or 'embedded-sync': the embedded "
                             "default's shipped sync LoRA")
    parser.add_argument("--lora-strength-video", type=float, default=1.0, help="LoRA strength on the video tower")
    parser.add_argument("--lora-strength-audio", type=float, default=1.0, help="LoRA strength on the audio tower")


def lora_file(args):
    """The file --lora names (the shipped sync LoRA for 'embedded-sync'), or None without --lora."""
    if args.lora is None:
        return None
    from ..generation.pipeline import EMBEDDED_SYNC_LORA_NAME, embedded_sync_lora_path

    return embedded_sync_lora_path() if args.lora == EMBEDDED_SYNC_LORA_NAME else args.lora


def load_lora_arg(args):
    """The tensors of --lora, read before any model is built (a wrong file fails at once), or None."""
    path = lora_file(args)
    if path is None:
        return None
    from ..runtime.lora import load_lora
    from ..files.safetensors_io import CheckpointError

    try:
        tensors, _ = load_lora(path)
    except CheckpointError as error:
        raise CheckpointError(f"--lora: {error}") from None
    return tensors


def apply_lora_arg(pipeline, args, tensors) -> None:
    """Merge the --lora tensors into the pipeline's model (its own copy: the CLI builds a fresh pipeline per run)."""
    if tensors is None:
        return
    from ..runtime.lora import apply_lora

    apply_lora(pipeline.model, tensors, strength_video=args.lora_strength_video,
               strength_audio=args.lora_strength_audio, where=f"--lora {args.lora}")


def shipped_files() -> dict:
    """The embedded default's shipped files: every run reads them, so no output may replace one."""
    from ..generation.pipeline import EMBEDDED_MODEL_FILE, EMBEDDED_SYNC_LORA_FILE, EMBEDDED_TEXT_FILE

    return {"shipped weights": EMBEDDED_MODEL_FILE, "shipped text encoder": EMBEDDED_TEXT_FILE,
            "shipped sync LoRA": EMBEDDED_SYNC_LORA_FILE}


def build_ovi(args):
    """The Ovi pipeline of --model from --models-dir, with UMT5 from its text_encoders folder."""
    from ..files.model_folders import default_models_dir, folder_tree_finder
    from ..ovi.pipeline import build_ovi_pipeline
    from ..ovi.variants import find_text_encoder_files, find_variant_files, get_variant

    variant = get_variant(args.model)
    models_dir = args.models_dir or default_models_dir()
    if not os.path.isdir(models_dir):
        raise ValueError(f"--models-dir {models_dir}: no such folder (expected diffusion_models/, vae/, "
                         "text_encoders/ inside)")
    finder = folder_tree_finder(models_dir)
    files = find_variant_files(variant, finder)
    return build_ovi_pipeline(variant, files, device=args.device, codec_device=args.device,
                              text_encoder_files=find_text_encoder_files(finder), blocks_on_gpu=getattr(args, "blocks_on_gpu", None))
