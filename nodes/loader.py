"""SyncAV Loader: the joint model (as a ComfyUI MODEL), its codecs and its text encoder."""

from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

from ..model.checkpoint import load_joint_model
from ..codecs.embedded import TinyAudioCodec, TinyVideoCodec
from ..model.config import TINY_TEXT_DIM
from ..model.joint import JointModel
from ..ovi.pipeline import OviPipeline, OviTextEncoder, build_ovi_pipeline, umt5_loader
from ..ovi.variants import PRESET_LABELS, TEXT_ENCODER, VARIANTS_BY_LABEL, OviVariant, find_file, \
    find_text_encoder_files, find_variant_files, recognise_variant, uses_ovi_codecs
from ..generation.pipeline import (AVPipeline, build_embedded_default, build_embedded_sync_tuned,
                              embedded_text_encoder)
from ..files.safetensors_io import CheckpointError, read_header
from . import comfy_bridge, comfy_types

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "embedded default"
EMBEDDED_SYNC_TUNED = "embedded default + sync LoRA"
OVI_PRESETS = PRESET_LABELS   # "Ovi 720x720 5s", "Ovi 960x960 5s", "Ovi 960x960 10s", "Ovi 720x720 5s fp8"
# Ovi runs in bf16 (its reference autocasts to bf16); where ComfyUI must cast (fp8 weights) prefer it over fp16.
OVI_COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

def _check_embedded_codecs(path: str, name: str) -> None:
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


def ovi_text_encoder(variant: OviVariant) -> OviTextEncoder:
    """UMT5-XXL from models/text_encoders, loaded at its first encode only: when a CLIP connected to SyncAV Text
    Encode encodes instead, nothing is loaded. Inside ComfyUI it loads through ComfyUI's own CLIP loader (type wan,
    the weights file alone, as Load CLIP takes it; ComfyUI manages its memory); outside through transformers, which
    also needs the config and tokenizer folder beside it. A missing file fails then, naming it and its folder."""
    def load():
        if comfy_bridge.comfy_available():
            weights = find_file(TEXT_ENCODER, comfy_bridge.find_model_file, "Ovi text encoder",
                                comfy_bridge.model_folder_paths)
            return comfy_bridge.load_umt5_xxl_clip(weights, encoder.dim, encoder.max_length)
        weights, config_dir = find_text_encoder_files(comfy_bridge.find_model_file, comfy_bridge.model_folder_paths)
        # The width the joint model was fitted to: a UMT5 of another width is refused from its config.json,
        # before its (up to 11 GB of) weights are read.
        return umt5_loader(weights, config_dir, device="cpu", expected_dim=encoder.dim)()

    encoder = OviTextEncoder(load, variant.prompt_style)
    return encoder


def load_ovi_pipeline(variant: OviVariant, weight_dtype, device, ops, model_path: str | None = None,
                      name: str | None = None) -> OviPipeline:
    """An Ovi preset (model_path None: the variant's own file) or an Ovi-codec file chosen from the list."""
    files = find_variant_files(variant, comfy_bridge.find_model_file, model_path=model_path,
                               describe=comfy_bridge.model_folder_paths)
    return build_ovi_pipeline(variant, files, device=device, dtype=weight_dtype, operations=ops,
                              codec_device=comfy_bridge.load_device(), text_encoder=ovi_text_encoder(variant),
                              name=name)


def load_pipeline(checkpoint: str, dtype: str) -> AVPipeline:
    """Build the pipeline a Loader node outputs (outside inference mode, so weights stay trainable)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, received {dtype!r}")
    weight_dtype = DTYPES[dtype]
    device = comfy_bridge.offload_device()
    ops = comfy_bridge.operations()
    # ComfyUI runs nodes under torch.inference_mode(): tensors made there are inference tensors forever and can
    # never be trained (a later LoRA/DPO node). Build and load with it off.
    with torch.inference_mode(False), torch.no_grad():
        if checkpoint == EMBEDDED_DEFAULT:
            pipeline = build_embedded_default(device=device, dtype=weight_dtype or torch.float32, operations=ops)
        elif checkpoint == EMBEDDED_SYNC_TUNED:
            pipeline = build_embedded_sync_tuned(device=device, dtype=weight_dtype or torch.float32, operations=ops)
        elif checkpoint in VARIANTS_BY_LABEL:
            pipeline = load_ovi_pipeline(VARIANTS_BY_LABEL[checkpoint], weight_dtype, device, ops)
        else:
            path = comfy_bridge.diffusion_model_path(checkpoint)
            if path is None:
                folders = comfy_bridge.diffusion_model_folders()
                where = f" ({', '.join(folders)})" if folders else ""
                raise FileNotFoundError(f"checkpoint: {checkpoint!r} not found in models/diffusion_models{where}; "
                                        f"put the .safetensors file there or choose {EMBEDDED_DEFAULT!r}")
            header, _ = read_header(path)
            name = os.path.splitext(os.path.basename(checkpoint))[0]
            if uses_ovi_codecs(header):
                variant, reason = recognise_variant(checkpoint, header)
                log.info("SyncAV Loader: %s is an Ovi model, taken as %s (%s)", checkpoint, variant.label, reason)
                pipeline = load_ovi_pipeline(variant, weight_dtype, device, ops, model_path=path, name=name)
            else:
                _check_embedded_codecs(path, checkpoint)
                model = load_joint_model(path, device=device, dtype=weight_dtype, operations=ops)
                pipeline = AVPipeline(model=model, video_codec=TinyVideoCodec(), audio_codec=TinyAudioCodec(),
                                      text_encoder=embedded_text_encoder(device="cpu"), name=name)
    model = pipeline.model
    if not isinstance(model, JointModel):
        raise TypeError(f"checkpoint: expected a JointModel, the loader built a {type(model).__name__}")
    weights = next(model.parameters()).dtype
    if isinstance(pipeline, OviPipeline):
        # None where the device computes in the weights' dtype; fp8 weights keep the bf16 the loader chose.
        model.compute_dtype = comfy_bridge.compute_dtype(weights, OVI_COMPUTE_DTYPES) or model.compute_dtype
    else:
        model.compute_dtype = comfy_bridge.compute_dtype(weights)
    return pipeline


class SyncAVLoader(io.ComfyNode):
    """Loads the joint audio-video model, the codecs it was trained with and its text encoder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = [EMBEDDED_DEFAULT, EMBEDDED_SYNC_TUNED] + list(OVI_PRESETS) + comfy_bridge.diffusion_model_names()
        return io.Schema(
            node_id="SyncAVLoader", display_name="SyncAV Loader", category=comfy_types.CATEGORY,
            description="Loads a SyncAV joint audio-video model with its codecs and text encoder. The embedded "
                        "default needs no files; the Ovi presets load Ovi's joint model with the Wan2.2 VAE, the "
                        "MMAudio 16 kHz VAE and its BigVGAN vocoder, and UMT5-XXL at the first prompt.",
            inputs=[
                io.Combo.Input("checkpoint", options=choices, default=EMBEDDED_DEFAULT, tooltip=(
                    f"{EMBEDDED_DEFAULT!r}: the small model that ships with the package (no download, runs on a "
                    f"CPU). {EMBEDDED_SYNC_TUNED!r}: the same with its shipped sync LoRA (DPO on temporal "
                    "negatives) merged. 'Ovi ...': Ovi's published models; they need the joint model in "
                    "models/diffusion_models (Ovi's model.safetensors, model_960x960.safetensors, "
                    "model_960x960_10s.safetensors, model_fp8_e4m3fn.safetensors), wan2.2_vae.safetensors, "
                    "mmaudio_vae_16k_fp32.safetensors and mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors in "
                    "models/vae, and umt5_xxl_fp16.safetensors in models/text_encoders (loaded at the first "
                    "prompt, not at all when a CLIP is connected to SyncAV Text Encode). Otherwise a "
                    ".safetensors joint model from models/diffusion_models (Ovi files are recognised).")),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto", tooltip=(
                    "Weight dtype in memory. auto: as stored in the file (fp32 for the embedded default; an fp8 "
                    "file stays fp8 and computes in bf16). Where the device cannot compute in it, ComfyUI "
                    "computes in a wider dtype.")),
            ],
            outputs=[
                comfy_types.output(io.Model, "model", "The joint audio-video diffusion model (for SyncAV samplers "
                                                       "and trainers)."),
                comfy_types.output(comfy_types.CODECS, "codecs", "The video and audio codecs: latent sizes, "
                                                                   "SyncCFG anchors, decoding."),
                comfy_types.output(comfy_types.TEXT_ENCODER, "text_encoder", "The text encoder the model was "
                                                                               "trained with."),
            ])

    @classmethod
    def execute(cls, checkpoint: str, dtype: str) -> io.NodeOutput:
        pipeline = load_pipeline(checkpoint, dtype)
        patcher = comfy_bridge.wrap_model(pipeline.model)
        return io.NodeOutput(patcher, comfy_types.SyncAVCodecs(pipeline), pipeline.text_encoder)
