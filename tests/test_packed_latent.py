"""The packed audio-video latent (one tensor through ComfyUI's samplers), SyncCFG as a denoiser of (x, sigma), and
the embedded codec's preview colours."""

from __future__ import annotations

import pytest
import torch

from comfyui_syncav.codecs.embedded import TinyVideoCodec
from comfyui_syncav.generation.packed_latent import PackedAVLayout, layout_of_packed
from comfyui_syncav.generation.pipeline import build_embedded_default
from comfyui_syncav.guidance.denoise import SigmaKeyedGuidance, guided_denoise
from comfyui_syncav.guidance.passes import SyncCFGConditioning
from comfyui_syncav.guidance.schedules import FlowSolver, flow_sigmas
from comfyui_syncav.guidance.sync_cfg import SyncCFGGuidance, guided_velocity
from comfyui_syncav.text.interface import EncodedText

from micro_models import micro_model


@pytest.mark.parametrize("video_shape, audio_shape, columns", [
    ((2, 16, 16, 8, 8), (2, 250, 32), 4),        # the embedded default's 2 s clip: 8,000 audio values, 2,048 a column
    ((1, 48, 31, 44, 44), (1, 157, 20), 1),      # Ovi's 5 s 720x720 clip
    ((1, 4, 1, 2, 2), (1, 9, 3), 4),             # audio larger than a column: 27 values, 8 per column
])
def test_pack_then_unpack_returns_both_streams_exactly(video_shape, audio_shape, columns):
    g = torch.Generator().manual_seed(0)
    video, audio = torch.randn(video_shape, generator=g), torch.randn(audio_shape, generator=g)
    layout = PackedAVLayout(video_shape, audio_shape)
    packed = layout.pack(video, audio)
    assert layout.audio_columns == columns
    assert packed.shape == (*video_shape[:4], video_shape[4] + columns)
    back_video, back_audio = layout.unpack(packed)
    assert torch.equal(back_video, video) and torch.equal(back_audio, audio)
    # The slack after the audio values is zero, and the layout is read back from the shape alone.
    slack = packed[..., video_shape[4]:].reshape(video_shape[0], -1)[:, audio.numel() // video_shape[0]:]
    assert torch.all(slack == 0)
    assert layout_of_packed(packed.shape, lambda frames: audio_shape[1], audio_shape[2]) == layout


def test_the_pipeline_reads_the_layout_of_its_own_latents_and_refuses_others():
    pipeline = build_embedded_default()
    video_shape, audio_shape = pipeline.latent_shapes(2.0, 32, 32, batch=2)
    layout = PackedAVLayout(video_shape, audio_shape)
    assert pipeline.packed_layout(layout.packed_shape) == layout
    for seconds in (0.5, 1.0, 3.0):     # the audio length follows the frames for any duration
        shapes = pipeline.latent_shapes(seconds, 32, 64)
        assert pipeline.packed_layout(PackedAVLayout(*shapes).packed_shape) == PackedAVLayout(*shapes)
    with pytest.raises(ValueError, match="cannot hold video and a 250-step audio latent"):
        pipeline.packed_layout((1, 16, 16, 8, 1))
    with pytest.raises(ValueError, match="made for other codecs: 4 video"):
        pipeline.packed_layout((1, 4, 16, 8, 9))
    with pytest.raises(ValueError, match=r"expected a packed audio-video latent \[B, C, F, H, W\]"):
        pipeline.packed_layout((1, 16, 64))


def test_guided_denoise_is_x_minus_sigma_times_the_guided_velocity():
    model = micro_model(prediction="velocity").eval()
    g = torch.Generator().manual_seed(1)
    video, audio = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 5, 3, generator=g)
    positive = (EncodedText(torch.randn(1, 4, 8, generator=g), torch.tensor([4])),
                EncodedText(torch.randn(1, 3, 8, generator=g), torch.tensor([3])))
    negative = (EncodedText(torch.zeros(1, 1, 8), torch.tensor([1])),) * 2
    cond = SyncCFGConditioning.prepare(1, positive, negative, torch.zeros(1, 4, 2, 4, 4), torch.zeros(1, 5, 3))
    guidance = SigmaKeyedGuidance(SyncCFGGuidance(3.0, 2.0, 2.0, 1.5), sync_sigmas=(0.2, 0.6))
    with torch.no_grad():
        for sigma, sync_on in ((0.9, False), (0.5, True), (0.1, False)):
            s = torch.tensor([sigma])
            x0_video, x0_audio = guided_denoise(model, video, audio, s, cond, guidance)
            v_video, v_audio = guided_velocity(model, video, audio, s, s, cond, guidance.guidance.scales(sync_on))
            assert torch.allclose(x0_video, video - sigma * v_video, atol=1e-6)
            assert torch.allclose(x0_audio, audio - sigma * v_audio, atol=1e-6)
    assert guidance.scales_at_sigma(0.6).sync_video == 2.0 and guidance.scales_at_sigma(0.61).sync_video == 1.0


def test_sigma_keyed_guidance_refuses_a_step_interval_and_a_reversed_range():
    with pytest.raises(ValueError, match="takes its sync interval as sync_sigmas"):
        SigmaKeyedGuidance(SyncCFGGuidance(sync_interval=(0.0, 0.5)))
    with pytest.raises(ValueError, match="expected 0 <= min <= max"):
        SigmaKeyedGuidance(SyncCFGGuidance(), sync_sigmas=(0.8, 0.2))


def test_flow_sigmas_are_the_euler_solvers_noise_levels():
    sigmas = flow_sigmas(10, 5.0)
    assert torch.equal(sigmas, FlowSolver("euler", 10, 5.0).sigmas)
    assert sigmas.shape == (11,) and sigmas[0] == 1.0 and sigmas[-1] == 0.0 and bool((sigmas.diff() < 0).all())


def test_embedded_codec_preview_colours_are_each_blocks_mean_colour():
    codec = TinyVideoCodec()
    factors, bias = codec.preview_rgb_factors()
    frames = torch.rand(1, 4, 8, 8, 3, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    latent = codec.encode(frames)
    predicted = latent.permute(0, 2, 3, 4, 1) @ torch.tensor(factors) + torch.tensor(bias)   # [1, Fv, Hv, Wv, 3]
    block_means = codec.decode(latent).reshape(1, 2, 2, 2, 4, 2, 4, 3).mean(dim=(2, 4, 6))
    assert (predicted - (2 * block_means - 1)).abs().max() < 1e-5
