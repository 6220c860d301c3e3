"""Stand-ins for Ovi's codecs, text encoders and files, small enough for CPU tests.

The codecs have the real rates and widths (Wan2.2 VAE: 24 fps, 48 channels, causal first frame, temporal stride 4,
spatial stride 16; MMAudio 16 kHz: 20 channels, 512 samples per latent) but compute nothing worth the name.
The joint model has Ovi's latent and text widths (48 / 20 / 4096) at a width of 32 and 2 blocks.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch

from comfyui_syncav.model import JointModel, get_preset
from comfyui_syncav.model.checkpoint import CONFIG_METADATA_KEY, save_joint_model
from comfyui_syncav.codecs.interface import AudioCodec, VideoCodec
from comfyui_syncav.runtime.fp8 import layer_weight_keys, quantize_to_fp8
from comfyui_syncav.files.safetensors_io import save_tensors_atomic
from comfyui_syncav.text.interface import EncodedText, TextEncoder


class StandInWanCodec(VideoCodec):
    fps = 24.0
    latent_channels = 48
    temporal_stride = 4
    spatial_stride = 16
    causal_first_frame = True

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        b, f, h, w, _ = frames.shape
        mean = frames.mean(dim=(1, 2, 3, 4)).view(b, 1, 1, 1, 1)
        return mean.expand(b, self.latent_channels, self.latent_frames(f), h // 16, w // 16).clone()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        b, _, fv, hv, wv = latent.shape
        level = latent.mean(dim=(1, 2, 3, 4)).sigmoid().view(b, 1, 1, 1, 1)
        return level.expand(b, self.num_frames(fv), hv * 16, wv * 16, 3).clone()


class StandInMMAudioCodec(AudioCodec):
    sample_rate = 16000
    audio_channels = 1
    latent_channels = 20
    samples_per_latent = 512

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        b, _, t = waveform.shape
        return torch.zeros(b, self.latent_length(t), self.latent_channels) + waveform.mean()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        b, length, _ = latent.shape
        return latent.mean(dim=(1, 2)).tanh().view(b, 1, 1).expand(b, 1, self.num_samples(length)).clone()


class StandInUMT5(TextEncoder):
    """Words hashed to fixed random rows of width 4096, zero rows after the prompt, padded to 512."""

    dim = 4096
    max_length = 512

    def encode(self, prompts: list[str]) -> EncodedText:
        out = torch.zeros(len(prompts), self.max_length, self.dim)
        lengths = []
        for row, prompt in enumerate(prompts):
            words = prompt.split() + ["</s>"]
            for i, word in enumerate(words[:self.max_length]):
                g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                out[row, i] = torch.randn(self.dim, generator=g) * 0.1
            lengths.append(min(len(words), self.max_length))
        return EncodedText(out, torch.tensor(lengths))


class StandInClip:
    """ComfyUI's CLIP as SyncAV Text Encode uses it: tokenize, then encode_from_tokens -> {"cond": [1, 512, 4096]}
    with zero rows past the prompt (as ComfyUI's Wan UMT5 returns it)."""

    def __init__(self, width: int = 4096):
        self.encoder = StandInUMT5()
        self.width = width
        self.tokenized: list[str] = []

    def tokenize(self, text: str):
        self.tokenized.append(text)
        return {"umt5xxl": text}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        cond = self.encoder.encode([tokens["umt5xxl"]]).embeddings[..., :self.width]
        return {"cond": cond.to(torch.float16), "pooled_output": None}


def ovi_like_config(dim: int = 32, layers: int = 2):
    """The ovi-720-5s preset at a small width: Ovi's latent and text widths, its RoPE scale."""
    preset = get_preset("ovi-720-5s")
    small = dict(dim=dim, ffn_dim=2 * dim, num_heads=2, num_layers=layers)
    return preset.replace(name="ovi-like", video=dataclasses.replace(preset.video, **small),
                          audio=dataclasses.replace(preset.audio, **small))


def ovi_like_model(seed: int = 0, layers: int = 2) -> JointModel:
    torch.manual_seed(seed)
    return JointModel(ovi_like_config(layers=layers)).eval()


def save_ovi_like(path, fp8: bool = False, seed: int = 0) -> JointModel:
    """Write a small Ovi-codec model (with its config in the metadata); fp8: matrices stored as float8_e4m3fn."""
    model = ovi_like_model(seed)
    if not fp8:
        save_joint_model(model, path)
        return model
    keys = layer_weight_keys(model)
    state = {k: quantize_to_fp8(v) if k in keys else v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    save_tensors_atomic(state, path, {CONFIG_METADATA_KEY: model.config.to_json()})
    return model


def write_ovi_files(models_dir, variant, fp8: bool = False, text_encoder: bool = False) -> dict[str, str]:
    """A ComfyUI-style models folder with every file ``variant`` needs (codec files are empty placeholders: tests
    patch the codec loaders)."""
    from comfyui_syncav.ovi.variants import AUDIO_VAE, TEXT_ENCODER, VIDEO_VAE, VOCODER

    paths = {}
    model_dir = models_dir / "diffusion_models" / "Ovi"
    model_dir.mkdir(parents=True, exist_ok=True)
    paths["model"] = str(model_dir / variant.model_file.name)
    save_ovi_like(paths["model"], fp8=fp8)
    for role, spec in (("video_vae", VIDEO_VAE), ("audio_vae", AUDIO_VAE), ("vocoder", VOCODER)):
        folder = models_dir / spec.folders[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / spec.name).write_bytes(b"")
        paths[role] = str(folder / spec.name)
    if text_encoder:
        folder = models_dir / "text_encoders"
        (folder / "umt5-xxl").mkdir(parents=True, exist_ok=True)
        (folder / TEXT_ENCODER.name).write_bytes(b"")
        (folder / "umt5-xxl" / "config.json").write_text("{}")
    return paths
