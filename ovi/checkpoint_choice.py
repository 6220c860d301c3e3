"""The pipeline a checkpoint choice loads: the embedded default (plain or with its sync LoRA), an Ovi preset, or a
joint-model file (Ovi's, recognised from its shapes, or one made for the embedded codecs).

What differs between hosts (ComfyUI, a script) comes in a ``LoadHost``: devices, the layer namespace, how model
files are found and how a dtype is computed in. The SyncAV Loader node builds one from ComfyUI; nothing here imports
ComfyUI.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..codecs.embedded import TinyAudioCodec, TinyVideoCodec
from ..files.model_folders import FileFinder, FolderDescriber
from ..files.safetensors_io import CheckpointError, read_header
from ..generation.pipeline import AVPipeline, build_embedded_default, build_embedded_sync_tuned, embedded_codec_pipeline
from ..model.config import TINY_TEXT_DIM
from ..model.joint import JointModel
from ..text.interface import TextEncoder
from .pipeline import OviPipeline, OviTextEncoder, build_ovi_pipeline, umt5_loader
from .variants import TEXT_ENCODER, VARIANTS_BY_LABEL, OviVariant, find_file, find_text_encoder_files, \
    find_variant_files, recognise_variant, uses_ovi_codecs

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "embedded default"
EMBEDDED_SYNC_TUNED = "embedded default + sync LoRA"
# Ovi runs in bf16 (its reference autocasts to bf16); where the host must cast (fp8 weights) prefer it over fp16.
OVI_COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoadHost:
    """Where and how a pipeline is built."""

    device: torch.device                 # where the joint model is built and waits between runs
    codec_device: torch.device           # where the Ovi codecs run
    find_file: FileFinder                # (folders, names) -> a model file's path, or None
    describe: FolderDescriber            # folders -> the directories searched, for messages
    resolve_listed: Callable[[str], Optional[str]]        # a joint-model name as listed -> its path, or None
    listed_folders: Callable[[], list]                    # where listed joint models live, for messages
    compute_dtype: Callable[..., Optional[torch.dtype]]   # (weight dtype[, preferred]) -> dtype to compute in
    operations: object = None            # layer namespace (None: torch.nn)
    # Asked at the first encode: the host's own UMT5-XXL loader, (weights path, width, rows) -> text encoder, or
    # None to load through transformers.
    umt5_clip_loader: Callable[[], Optional[Callable[[str, int, int], TextEncoder]]] = lambda: None


def check_embedded_codecs(path: str, name: str) -> None:
    """Refuse, before loading any weight, a file whose latent / text widths are not the embedded codecs'."""
    header, _ = read_header(path)
    widths = {
        "video latent channels": ("video_model.patch_embedding.weight", 1, TinyVideoCodec.latent_channels),
        "audio latent channels": ("audio_model.patch_embedding.0.weight", 1, TinyAudioCodec.latent_channels),
        "text embedding width": ("video_model.text_embedding.0.weight", 1, TINY_TEXT_DIM),
    }
    wrong = []
    for what, (key, axis, expected) in widths.items():
        if key not in header or len(header[key]["shape"]) <= axis:
            continue  # not a joint checkpoint at all: load_joint_model names the missing keys / wrong shapes
        got = header[key]["shape"][axis]
        if got != expected:
            wrong.append(f"{what} {got} (the embedded codecs / text encoder use {expected})")
    if wrong:
        raise CheckpointError(
            f"checkpoint: {name!r} was trained with other codecs or text encoder: {'; '.join(wrong)}. This loader "
            "takes models made for the embedded codecs and Ovi models (48 video / 20 audio latent channels, "
            "4096-wide UMT5 text); other codecs are not supported by this loader yet.")


def ovi_text_encoder(variant: OviVariant, host: LoadHost) -> OviTextEncoder:
    """UMT5-XXL from models/text_encoders, loaded at its first encode only: when another encoder (a CLIP connected
    in ComfyUI) encodes instead, nothing is loaded. Through the host's loader when it has one (ComfyUI: its own CLIP
    loader, type wan, the weights file alone); otherwise through transformers, which also needs the config and
    tokenizer folder beside it. A missing file fails then, naming it and its folder."""
    def load():
        load_clip = host.umt5_clip_loader()
        if load_clip is not None:
            weights = find_file(TEXT_ENCODER, host.find_file, "Ovi text encoder", host.describe)
            return load_clip(weights, encoder.dim, encoder.max_length)
        weights, config_dir = find_text_encoder_files(host.find_file, host.describe)
        # The width the joint model was fitted to: a UMT5 of another width is refused from its config.json,
        # before its (up to 11 GB of) weights are read.
        return umt5_loader(weights, config_dir, device="cpu", expected_dim=encoder.dim)()

    encoder = OviTextEncoder(load, variant.prompt_style)
    return encoder


def _ovi_pipeline(variant: OviVariant, weight_dtype, host: LoadHost, model_path: str | None = None,
                  name: str | None = None) -> OviPipeline:
    """An Ovi preset (model_path None: the variant's own file) or an Ovi-codec file chosen from the list."""
    files = find_variant_files(variant, host.find_file, model_path=model_path, describe=host.describe)
    return build_ovi_pipeline(variant, files, device=host.device, dtype=weight_dtype, operations=host.operations,
                              codec_device=host.codec_device, text_encoder=ovi_text_encoder(variant, host),
                              name=name)


def _file_pipeline(checkpoint: str, weight_dtype, host: LoadHost) -> AVPipeline:
    """A joint-model file from the host's list: Ovi's (recognised from its shapes and name) or an embedded-codec one."""
    path = host.resolve_listed(checkpoint)
    if path is None:
        folders = host.listed_folders()
        where = f" ({', '.join(folders)})" if folders else ""
        raise FileNotFoundError(f"checkpoint: {checkpoint!r} not found in models/diffusion_models{where}; "
                                f"put the .safetensors file there or choose {EMBEDDED_DEFAULT!r}")
    header, _ = read_header(path)
    name = os.path.splitext(os.path.basename(checkpoint))[0]
    if uses_ovi_codecs(header):
        variant, reason = recognise_variant(checkpoint, header)
        log.info("SyncAV Loader: %s is an Ovi model, taken as %s (%s)", checkpoint, variant.label, reason)
        return _ovi_pipeline(variant, weight_dtype, host, model_path=path, name=name)
    check_embedded_codecs(path, checkpoint)
    return embedded_codec_pipeline(path, device=host.device, dtype=weight_dtype, operations=host.operations, name=name)


def load_checkpoint_choice(checkpoint: str, dtype: str, host: LoadHost) -> AVPipeline:
    """The pipeline of ``checkpoint`` (``EMBEDDED_DEFAULT``, ``EMBEDDED_SYNC_TUNED``, an Ovi preset label or a listed
    file) with weights in ``dtype`` (a ``DTYPES`` key), built outside inference mode so its weights stay trainable
    (ComfyUI runs nodes under inference mode; a later LoRA or DPO node trains them)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, received {dtype!r}")
    weight_dtype = DTYPES[dtype]
    with torch.inference_mode(False), torch.no_grad():
        if checkpoint == EMBEDDED_DEFAULT:
            pipeline = build_embedded_default(device=host.device, dtype=weight_dtype or torch.float32,
                                              operations=host.operations)
        elif checkpoint == EMBEDDED_SYNC_TUNED:
            pipeline = build_embedded_sync_tuned(device=host.device, dtype=weight_dtype or torch.float32,
                                                 operations=host.operations)
        elif checkpoint in VARIANTS_BY_LABEL:
            pipeline = _ovi_pipeline(VARIANTS_BY_LABEL[checkpoint], weight_dtype, host)
        else:
            pipeline = _file_pipeline(checkpoint, weight_dtype, host)
    model = pipeline.model
    if not isinstance(model, JointModel):
        raise TypeError(f"checkpoint: expected a JointModel, the loader built a {type(model).__name__}")
    weights = next(model.parameters()).dtype
    if isinstance(pipeline, OviPipeline):
        # None where the device computes in the weights' dtype; fp8 weights keep the bf16 the loader chose.
        model.compute_dtype = host.compute_dtype(weights, OVI_COMPUTE_DTYPES) or model.compute_dtype
    else:
        model.compute_dtype = host.compute_dtype(weights)
    return pipeline
