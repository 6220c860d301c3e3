"""The embedded video codec's learned decoder (codecs/learned_video.py), its training, and pipelines using it.

The round-trip test scores real BounceBench val clips through the shipped codec with the benchmark's own metrics
(docs/codec.md has the measured table): the codec must keep the picture the sync metrics read.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from comfyui_syncav.bouncebench.clips import make_clips
from comfyui_syncav.bouncebench.config import VARIANTS, split_seeds
from comfyui_syncav.bouncebench.evaluation import score_clip
from comfyui_syncav.codecs.embedded import TinyAudioCodec, TinyVideoCodec
from comfyui_syncav.codecs.learned_video import (CONFIG_METADATA_KEY, LearnedDecoderVideoCodec, VideoDecoder,
                                                 VideoDecoderConfig, load_video_decoder, save_video_decoder)
from comfyui_syncav.files.safetensors_io import CheckpointError, save_tensors_atomic
from comfyui_syncav.generation import pipeline as pipeline_module
from comfyui_syncav.generation.pipeline import EMBEDDED_VIDEO_DECODER_FILE, embedded_codec_pipeline, embedded_config
from comfyui_syncav.model import JointModel
from comfyui_syncav.model.checkpoint import save_joint_model
from comfyui_syncav.train.codec_training import CodecRecipe, ball_weights, codec_batch, train_video_decoder
from comfyui_syncav.train.loop import TrainConfig


@pytest.fixture(scope="module")
def shipped() -> LearnedDecoderVideoCodec:
    return LearnedDecoderVideoCodec.from_file(EMBEDDED_VIDEO_DECODER_FILE)


def round_trip_scores(codec, variant: str, clips: int) -> dict[str, float]:
    """Mean event F1, one-ball share, colour error of val clips through ``codec`` (video) and the audio codec."""
    real = make_clips(split_seeds("val", clips), VARIANTS[variant])
    frames = torch.stack([c.frames for c in real]).float()
    waveform = torch.stack([c.waveform for c in real]).float()
    audio = TinyAudioCodec()
    with torch.no_grad():
        video_out = codec.decode(codec.encode(frames))
        audio_out = audio.decode(audio.encode(waveform))[..., :waveform.shape[-1]]
    records = [score_clip(v.numpy(), a.numpy(), c.fps, c.sample_rate_hz, c)
               for v, a, c in zip(video_out, audio_out, real)]
    mean = lambda key: float(np.nanmean([np.nan if r[key] is None else r[key] for r in records]))
    return {key: mean(key) for key in ("event_f1", "video_blob_count_ok", "video_colour_error",
                                       "audio_pitch_error_hz")}


def test_real_clips_round_trip_at_the_event_ball_count_and_colour_targets(shipped):
    scores = round_trip_scores(shipped, "standard", 24)
    # Measured on these 24 clips: F1 0.945, one ball in every frame, colour error 0.015.
    assert scores["event_f1"] >= 0.93
    assert scores["video_blob_count_ok"] >= 0.95
    assert scores["video_colour_error"] <= 0.02


def test_the_learned_decoder_keeps_the_picture_the_linear_one_loses(shipped):
    learned = round_trip_scores(shipped, "standard", 24)
    linear = round_trip_scores(TinyVideoCodec(), "standard", 24)
    # Measured on these clips: learned F1 0.945 / one ball 1.0 / colour 0.015; linear 0.861 / 0.435 / 0.079.
    assert learned["event_f1"] >= 0.88 and learned["event_f1"] > linear["event_f1"] + 0.03
    assert learned["video_blob_count_ok"] >= 0.85 and linear["video_blob_count_ok"] < 0.6
    assert learned["video_colour_error"] < linear["video_colour_error"] - 0.005
    assert learned["audio_pitch_error_hz"] <= 1.5                # the audio codec keeps the pitch


def test_shipped_codec_compresses_and_shares_the_dct_latents(shipped):
    config = embedded_config(shipped, TinyAudioCodec())
    assert (shipped.latent_channels, shipped.temporal_stride, shipped.spatial_stride, shipped.fps) == (16, 2, 4, 16.0)
    frames = torch.rand(1, 32, 32, 32, 3)
    latent = shipped.encode(frames)
    assert torch.equal(latent, TinyVideoCodec().encode(frames))           # the DCT encoder: same latent space
    assert latent.shape == (1, 16, 16, 8, 8) and frames.numel() / latent.numel() == 6.0
    patch = config.video.patch_size
    assert shipped.latent_channels * patch[0] * patch[1] * patch[2] * 2 <= config.video.dim   # 64 per token << 128
    decoded = shipped.decode(latent)
    assert decoded.shape == frames.shape and 0.0 <= float(decoded.min()) and float(decoded.max()) <= 1.0
    assert shipped.preview_rgb_factors() == TinyVideoCodec().preview_rgb_factors()


def test_noisy_latents_still_decode_to_one_ball(shipped):
    real = make_clips(split_seeds("val", 8, start=100))
    frames = torch.stack([c.frames for c in real]).float()
    with torch.no_grad():
        latent = shipped.encode(frames)
        noisy = shipped.decode(latent + 0.1 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(0)))
        linear = TinyVideoCodec().decode(latent)
    ok = [score_clip(v.numpy(), c.waveform.numpy(), c.fps, c.sample_rate_hz, c)["video_blob_count_ok"]
          for v, c in zip(noisy, real)]
    ok_linear = [score_clip(v.numpy(), c.waveform.numpy(), c.fps, c.sample_rate_hz, c)["video_blob_count_ok"]
                 for v, c in zip(linear, real)]
    # Measured on these 8 clips: one ball in every frame (with noise and without), the linear decoder 0.50.
    assert float(np.mean(ok)) >= 0.9 and float(np.mean(ok)) > float(np.mean(ok_linear)) + 0.2


def test_codec_follows_dtype_and_refuses_bad_input(shipped):
    latent = shipped.encode(torch.rand(1, 4, 8, 8, 3, dtype=torch.float64))
    assert latent.dtype == torch.float64 and shipped.decode(latent).dtype == torch.float64
    assert torch.allclose(shipped.decode(latent).float(), shipped.decode(latent.float()), atol=1e-4)
    with pytest.raises(ValueError, match=r"\[B, 16, Fv, Hv, Wv\]"):
        shipped.decode(torch.zeros(1, 8, 1, 2, 2))
    with pytest.raises(ValueError, match="floating-point"):
        shipped.decode(torch.zeros(1, 16, 1, 2, 2, dtype=torch.int64))


def test_save_load_round_trip_and_clear_errors_for_other_files(tmp_path):
    torch.manual_seed(0)
    decoder = VideoDecoder(VideoDecoderConfig(width=8))
    save_video_decoder(decoder, tmp_path / "decoder.safetensors")
    loaded = load_video_decoder(tmp_path / "decoder.safetensors")
    assert loaded.config == decoder.config
    latent = torch.randn(1, 16, 1, 2, 2)
    assert torch.equal(loaded(latent), decoder(latent))
    save_tensors_atomic({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="video_decoder_config"):
        load_video_decoder(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="width"):
        VideoDecoderConfig(width=0)
    with pytest.raises(ValueError, match="hidden_layers"):
        VideoDecoderConfig(hidden_layers=-1)
    with pytest.raises(ValueError, match="refine_width"):
        VideoDecoderConfig(refine_width=-1)
    with pytest.raises(ValueError, match="refine_layers"):
        VideoDecoderConfig(refine_layers=1.5)


def test_hidden_layers_set_the_depth_and_files_without_the_field_load_as_one(tmp_path):
    convolutions = [sum(isinstance(m, torch.nn.Conv3d) for m in VideoDecoder(VideoDecoderConfig(8, n)).modules())
                    for n in (0, 1, 3)]
    assert convolutions == [2, 3, 5]
    torch.manual_seed(0)
    decoder = VideoDecoder(VideoDecoderConfig(width=8, hidden_layers=1))
    # A decoder saved before hidden_layers existed: its metadata names only the width.
    save_tensors_atomic(dict(decoder.state_dict()), tmp_path / "old.safetensors",
                        {CONFIG_METADATA_KEY: json.dumps({"width": 8})})
    loaded = load_video_decoder(tmp_path / "old.safetensors")
    assert loaded.config == VideoDecoderConfig(width=8, hidden_layers=1) and loaded.refiner is None
    latent = torch.randn(1, 16, 2, 2, 2)
    assert torch.equal(loaded(latent), decoder(latent))
    deeper = VideoDecoder(VideoDecoderConfig(width=8, hidden_layers=2))
    save_video_decoder(deeper, tmp_path / "deeper.safetensors")
    assert load_video_decoder(tmp_path / "deeper.safetensors").config.hidden_layers == 2


def test_a_new_refinement_leaves_the_frames_as_they_are_and_saves_with_the_decoder(tmp_path):
    torch.manual_seed(0)
    config = VideoDecoderConfig(width=8, hidden_layers=1, refine_width=4, refine_layers=1)
    refined = VideoDecoder(config)
    blocks = VideoDecoder(config.without_refinement())
    assert blocks.config == VideoDecoderConfig(width=8, hidden_layers=1) and blocks.refiner is None
    assert sum(isinstance(m, torch.nn.Conv2d) for m in refined.modules()) == 3
    blocks.layers.load_state_dict(refined.layers.state_dict())
    latent = torch.randn(2, 16, 2, 2, 3)
    assert torch.equal(refined(latent), blocks(latent))                 # the last convolution starts at zero
    torch.nn.init.normal_(refined.refiner.layers[-1].weight, std=0.1)
    assert not torch.allclose(refined(latent), blocks(latent), atol=1e-3)
    save_video_decoder(refined, tmp_path / "refined.safetensors")
    loaded = load_video_decoder(tmp_path / "refined.safetensors")
    assert loaded.config == config and torch.equal(loaded(latent), refined(latent))


def test_pipelines_decode_with_the_learned_decoder_and_fall_back_to_the_linear_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_joint_model(JointModel(embedded_config()), tmp_path / "model.safetensors")
    assert isinstance(embedded_codec_pipeline(tmp_path / "model.safetensors").video_codec, LearnedDecoderVideoCodec)
    monkeypatch.setattr(pipeline_module, "EMBEDDED_VIDEO_DECODER_FILE", tmp_path / "absent.safetensors")
    codec = embedded_codec_pipeline(tmp_path / "model.safetensors").video_codec
    assert type(codec) is TinyVideoCodec


def test_codec_training_batches_weights_and_a_few_steps(tmp_path):
    frames = codec_batch(3, 4)
    assert frames.shape == (4, 32, 32, 32, 3)
    assert not torch.equal(frames, codec_batch(4, 4))                         # fresh clips every step
    weights = ball_weights(frames, 10.0)
    ball_share = float((weights > 1).float().mean())
    assert 0.005 < ball_share < 0.2                                           # the balls, not the background
    recipe = CodecRecipe(decoder=VideoDecoderConfig(width=8), batch_size=4,
                         train=TrainConfig(steps=6, lr=3e-3, warmup_steps=1, ema_decay=None, save_every=3,
                                           log_every=1))
    path, result = train_video_decoder(tmp_path, recipe, progress=False)
    history = result.state.history
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    codec = LearnedDecoderVideoCodec.from_file(path)
    assert dataclasses.asdict(codec.decoder.config)["width"] == 8
    assert codec.decode(codec.encode(codec_batch(100, 2))).shape == (2, 32, 32, 32, 3)


def test_a_refined_decoder_trains_in_two_stages_with_the_first_frozen(tmp_path):
    tiny = dict(lr=3e-3, warmup_steps=1, ema_decay=None, save_every=2, log_every=1)
    recipe = CodecRecipe(decoder=VideoDecoderConfig(width=8, refine_width=4, refine_layers=0), batch_size=4,
                         train=TrainConfig(steps=3, **tiny), refine_train=TrainConfig(steps=4, **tiny))
    path, result = train_video_decoder(tmp_path / "run", recipe, progress=False)
    first = load_video_decoder(tmp_path / "run" / "first_stage" / path.name)
    assert first.config == VideoDecoderConfig(width=8) and first.refiner is None
    final = load_video_decoder(path)
    assert final.config == recipe.decoder and len(result.state.history) == 4
    for name, tensor in first.layers.state_dict().items():                # the first stage stayed frozen
        assert torch.equal(final.layers.state_dict()[name], tensor)
    assert float(final.refiner.layers[-1].weight.abs().sum()) > 0        # the refinement learned
    # An earlier decoder as the first stage: it is used as it is, and it must be the recipe's block network.
    path2, _ = train_video_decoder(tmp_path / "again", recipe, first_stage=first_path(tmp_path), progress=False)
    assert not (tmp_path / "again" / "first_stage").exists()
    assert torch.equal(load_video_decoder(path2).layers[0].weight, first.layers[0].weight)
    wider = CodecRecipe(decoder=VideoDecoderConfig(width=16, refine_width=4), batch_size=4,
                        train=recipe.train, refine_train=recipe.refine_train)
    with pytest.raises(ValueError, match="expected a decoder of config"):
        train_video_decoder(tmp_path / "wider", wider, first_stage=first_path(tmp_path), progress=False)
    unrefined = CodecRecipe(decoder=VideoDecoderConfig(width=8), batch_size=4, train=recipe.train)
    with pytest.raises(ValueError, match="no refinement"):
        train_video_decoder(tmp_path / "plain", unrefined, first_stage=first_path(tmp_path), progress=False)
    assert not (tmp_path / "wider").exists() and not (tmp_path / "plain").exists()


def first_path(tmp_path):
    return tmp_path / "run" / "first_stage" / "embedded_video_decoder.safetensors"


def test_build_embedded_default_refuses_weights_asked_for_that_are_missing(tmp_path):
    from comfyui_syncav.generation.pipeline import build_embedded_default

    with pytest.raises(FileNotFoundError, match="absent.safetensors is not a file"):
        build_embedded_default(weights=tmp_path / "absent.safetensors")
    torch.manual_seed(0)
    save_joint_model(JointModel(embedded_config()), tmp_path / "model.safetensors")
    assert build_embedded_default(weights=tmp_path / "model.safetensors").name == "embedded-default"
