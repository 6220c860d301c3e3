"""SyncAV Loader: the joint model (as a ComfyUI MODEL), its codecs and its text encoder."""

from __future__ import annotations

import logging
import math
import os

import torch

from ..model.checkpoint import load_joint_model
from ..codecs.embedded import TinyAudioCodec, TinyVideoCodec
from ..model.config import TINY_TEXT_DIM, get_preset
from ..model.joint import JointModel
from ..ovi.pipeline import OviPipeline, OviTextEncoder, build_ovi_pipeline, umt5_loader
from ..ovi.variants import PRESET_LABELS, TEXT_ENCODER, VARIANTS_BY_LABEL, OviVariant, find_file, \
    find_text_encoder_files, find_variant_files, recognise_variant, uses_ovi_codecs
from ..generation.pipeline import (AVPipeline, build_embedded_default, build_embedded_sync_tuned,
                              embedded_text_encoder)
from ..files.safetensors_io import CheckpointError, read_header
from . import comfy_bridge
from .clip_text_encoder import load_umt5_xxl_clip

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "embedded default"
EMBEDDED_SYNC_TUNED = "embedded default + sync LoRA"
OVI_PRESETS = PRESET_LABELS   # "Ovi 720x720 5s", "Ovi 960x960 5s", "Ovi 960x960 10s", "Ovi 720x720 5s fp8"
# Ovi runs in bf16 (its reference autocasts to bf16); where ComfyUI must cast (fp8 weights) prefer it over fp16.
OVI_COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Pixel sizes the embedded default takes: a multiple of the codec's spatial stride times the model's patch size.
EMBEDDED_PIXEL_MULTIPLE = TinyVideoCodec.spatial_stride * math.lcm(*get_preset("tiny").video.patch_size[1:])


class SyncAVCodecs:
    """The SYNCAV_CODECS value: the video and audio codecs of a loaded pipeline and the helpers nodes need
    (latent shapes, SyncCFG anchors, decoding). Holds the ``AVPipeline`` the loader built."""

    def __init__(self, pipeline: AVPipeline):
        self.pipeline = pipeline

    @property
    def video_codec(self):
        return self.pipeline.video_codec

    @property
    def audio_codec(self):
        return self.pipeline.audio_codec

    @property
    def fps(self) -> float:
        return float(self.pipeline.video_codec.fps)

    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.audio_codec.sample_rate)

    @property
    def pixel_multiple(self) -> int:
        """Width and height must be positive multiples of this many pixels."""
        return self.pipeline.pixel_multiple

    def latent_shapes(self, seconds: float, height: int, width: int, batch: int = 1):
        """(video [B, Cv, Fv, Hv, Wv], audio [B, La, Ca]) latent shapes of a clip."""
        return self.pipeline.latent_shapes(seconds, height, width, batch)

    def anchors(self, video_shape, audio_shape, device=None, dtype=torch.float32):
        """(static_video [1, Cv, Fv, Hv, Wv], silence [1, La, Ca]): SyncCFG's clean anchor latents."""
        return self.pipeline.anchors(video_shape, audio_shape, device=device, dtype=dtype)

    def decode(self, video_latent: torch.Tensor, audio_latent: torch.Tensor):
        """-> (frames [B, F, H, W, 3] in 0..1, waveform [B, C, T] in -1..1), float32 on the CPU."""
        return self.pipeline.decode(video_latent, audio_latent)

    def __repr__(self) -> str:
        return (f"SyncAVCodecs({self.pipeline.name}: {type(self.video_codec).__name__} {self.fps:g} fps, "
                f"{type(self.audio_codec).__name__} {self.sample_rate} Hz)")


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
            return load_umt5_xxl_clip(weights, encoder.dim, encoder.max_length)
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


class SyncAVLoader:
    """Loads the joint audio-video model, the codecs it was trained with and its text encoder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": ([EMBEDDED_DEFAULT, EMBEDDED_SYNC_TUNED] + list(OVI_PRESETS)
                           + comfy_bridge.diffusion_model_names(), {
                "default": EMBEDDED_DEFAULT,
                "tooltip": f"{EMBEDDED_DEFAULT!r}: the small model that ships with the package (no download, "
                           f"runs on a CPU). {EMBEDDED_SYNC_TUNED!r}: the same with its shipped sync LoRA (DPO "
                           "on temporal negatives) merged. 'Ovi ...': Ovi's published models; they need the joint "
                           "model in models/diffusion_models (Ovi's model.safetensors, model_960x960.safetensors, "
                           "model_960x960_10s.safetensors, model_fp8_e4m3fn.safetensors), wan2.2_vae.safetensors, "
                           "mmaudio_vae_16k_fp32.safetensors and mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors in "
                           "models/vae, and umt5_xxl_fp16.safetensors in models/text_encoders (loaded at the first "
                           "prompt, not at all when a CLIP is connected to SyncAV Text Encode). Otherwise a "
                           ".safetensors joint model from models/diffusion_models (Ovi files are recognised)."}),
            "dtype": (list(DTYPES), {
                "default": "auto",
                "tooltip": "Weight dtype in memory. auto: as stored in the file (fp32 for the embedded default; "
                           "an fp8 file stays fp8 and computes in bf16). Where the device cannot compute in it, "
                           "ComfyUI computes in a wider dtype."}),
        }}

    RETURN_TYPES = ("MODEL", "SYNCAV_CODECS", "SYNCAV_TEXT_ENCODER")
    RETURN_NAMES = ("model", "codecs", "text_encoder")
    OUTPUT_TOOLTIPS = ("The joint audio-video diffusion model (for SyncAV samplers and trainers).",
                       "The video and audio codecs: latent sizes, SyncCFG anchors, decoding.",
                       "The text encoder the model was trained with.")
    FUNCTION = "load"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Loads a SyncAV joint audio-video model with its codecs and text encoder. The embedded default "
                   "needs no files; the Ovi presets load Ovi's joint model with the Wan2.2 VAE, the MMAudio 16 kHz "
                   "VAE and its BigVGAN vocoder, and UMT5-XXL at the first prompt.")

    def load(self, checkpoint: str, dtype: str):
        pipeline = load_pipeline(checkpoint, dtype)
        patcher = comfy_bridge.wrap_model(pipeline.model)
        return (patcher, SyncAVCodecs(pipeline), pipeline.text_encoder)
