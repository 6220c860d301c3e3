"""Micro joint models and pipelines shared by the tests (width 16, 2 blocks: milliseconds per forward)."""

import dataclasses

import torch

from comfyui_syncav.model import JointConfig, JointModel, TowerConfig
from comfyui_syncav.codecs.embedded import TinyAudioCodec, TinyVideoCodec
from comfyui_syncav.generation.pipeline import AVPipeline, embedded_config


def micro_model(prediction: str = "x0", dim: int = 16, name: str = "micro") -> JointModel:
    """Latents video [B, 4, F, H, W], audio [B, L, 3]; text [B, <=4, 8]. Weights from seed 0."""
    common = dict(dim=dim, ffn_dim=2 * dim, num_heads=2, num_layers=2, freq_dim=16, text_dim=8, text_len=4,
                  audio_embed_kernel=3)
    cfg = JointConfig(video=TowerConfig(modality="video", in_channels=4, out_channels=4, patch_size=(1, 2, 2),
                                        **common),
                      audio=TowerConfig(modality="audio", in_channels=3, out_channels=3, patch_size=(1,), **common),
                      prediction=prediction, name=name)
    torch.manual_seed(0)
    return JointModel(cfg)


def micro_pipeline(text_encoder) -> AVPipeline:
    """The embedded codecs and text encoder around a joint model of width 16 (same latent and text widths)."""
    video_codec, audio_codec = TinyVideoCodec(), TinyAudioCodec()
    config = embedded_config(video_codec, audio_codec)
    small = dict(dim=16, ffn_dim=32, num_heads=2, num_layers=2, freq_dim=16)
    config = config.replace(video=dataclasses.replace(config.video, **small),
                            audio=dataclasses.replace(config.audio, **small))
    torch.manual_seed(0)
    return AVPipeline(model=JointModel(config), video_codec=video_codec, audio_codec=audio_codec,
                      text_encoder=text_encoder, name="micro")
