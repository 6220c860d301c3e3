"""The embedded codecs (codecs/embedded.py): shapes, exactness of the transforms, measured round-trip error.

The bounds below sit just under the figures measured with these generators and seeds (docs/codec.md); running
this file as a script prints the measured table.
"""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_syncav.codecs.interface import AudioCodec, VideoCodec
from comfyui_syncav.codecs.embedded import TinyAudioCodec, TinyVideoCodec, dct_ii_matrix, mdct_matrix
from comfyui_syncav.model.config import PRESETS

SAMPLE_RATE_HZ = 8000
FPS = 16


# ------------------------------------------------------------------------------------------- synthetic content

def bouncing_balls(clips: int, seed: int, frames: int = 32, size_px: int = 32) -> torch.Tensor:
    """[clips, frames, size, size, 3]: 1-3 anti-aliased balls (radius 3-7 px, random colours, up to 3 px/frame)
    bouncing off the walls of a random plain background."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.arange(size_px, dtype=torch.float64) + 0.5
    video = torch.rand(clips, 1, 1, 1, 3, generator=g, dtype=torch.float64).expand(
        clips, frames, size_px, size_px, 3).clone()
    for _ in range(3):
        present = (torch.rand(clips, generator=g) < 0.67).double()
        radius = 3 + 4 * torch.rand(clips, 1, generator=g, dtype=torch.float64)
        colour = torch.rand(clips, 3, generator=g, dtype=torch.float64)
        span = size_px - 2 * radius
        start = torch.rand(clips, 2, generator=g, dtype=torch.float64) * span
        velocity = (torch.rand(clips, 2, generator=g, dtype=torch.float64) - 0.5) * 6
        t = torch.arange(frames, dtype=torch.float64)[None, :, None]
        # Reflection off the walls as a triangle wave of the free path.
        free = (start[:, None] + velocity[:, None] * t) % (2 * span[:, None])
        position = radius[:, None] + torch.where(free > span[:, None], 2 * span[:, None] - free, free)
        dy = centres[None, None, :, None] - position[:, :, 0, None, None]
        dx = centres[None, None, None, :] - position[:, :, 1, None, None]
        coverage = (radius[:, :, None, None] - (dy ** 2 + dx ** 2).sqrt() + 0.5).clamp(0, 1)
        coverage = (coverage * present[:, None, None, None])[..., None]
        video = video * (1 - coverage) + colour[:, None, None, None] * coverage
    return video.float()


def gradients(clips: int, seed: int, frames: int = 32, size_px: int = 32) -> torch.Tensor:
    """[clips, frames, size, size, 3]: bilinear blends of four random corner colours, drifting sideways."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(clips, 4, 1, 1, 1, 3, generator=g)
    v = torch.linspace(0, 1, size_px)[None, None, :, None, None]
    drift = torch.linspace(0, 0.3, frames)[None, :, None, None, None]
    u = (torch.linspace(0, 1, size_px)[None, None, None, :, None] + drift).clamp(0, 1)
    return (corners[:, 0] * (1 - u) * (1 - v) + corners[:, 1] * u * (1 - v)
            + corners[:, 2] * (1 - u) * v + corners[:, 3] * u * v)


def click_track(clips: int, seed: int, seconds: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms [clips, 1, T] with 4 clicks each (a sine of 300-1500 Hz starting at phase 0 at an exact, sub-sample
    onset, decaying with a 7.5 ms time constant, cut at 60 ms), and the onsets in seconds [clips, 4]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE_HZ), dtype=torch.float64) / SAMPLE_RATE_HZ
    slot = seconds / 4
    onsets = (torch.arange(4) * slot + 0.02 + (slot - 0.1) * torch.rand(clips, 4, generator=g)).double()
    pitch_hz = 300 + 1200 * torch.rand(clips, 4, 1, generator=g, dtype=torch.float64)
    amplitude = 0.3 + 0.6 * torch.rand(clips, 4, 1, generator=g, dtype=torch.float64)
    since = t[None, None] - onsets[..., None]
    tone = amplitude * torch.sin(2 * math.pi * pitch_hz * since) * torch.exp(-since / 0.0075)
    wave = torch.where((since >= 0) & (since < 0.06), tone, 0.0).sum(1, keepdim=True)
    return wave.float(), onsets


def sine_sweep(low_hz: float, high_hz: float, seconds: float = 2.0, amplitude: float = 0.5) -> torch.Tensor:
    """[1, 1, T] linear sweep from low_hz to high_hz."""
    t = torch.arange(int(seconds * SAMPLE_RATE_HZ), dtype=torch.float64) / SAMPLE_RATE_HZ
    phase = 2 * math.pi * (low_hz * t + (high_hz - low_hz) / (2 * seconds) * t ** 2)
    return (amplitude * torch.sin(phase)).float()[None, None]


def psnr_db(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    return (10 * torch.log10(1.0 / ((reference.double() - decoded.double()) ** 2).mean())).item()


def snr_db(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    reference, decoded = reference.double(), decoded.double()
    return (10 * torch.log10((reference ** 2).sum() / ((reference - decoded) ** 2).sum())).item()


def onset_seconds(wave: torch.Tensor, near_seconds: float, threshold: float = 0.1) -> float:
    """First sample, searching from 20 ms before ``near_seconds``, whose magnitude passes ``threshold`` times the
    loudest sample of the 50 ms after it."""
    start = max(int((near_seconds - 0.02) * SAMPLE_RATE_HZ), 0)
    segment = wave[start:int((near_seconds + 0.05) * SAMPLE_RATE_HZ)].abs()
    first = torch.nonzero(segment > threshold * segment.max())[0].item()
    return (start + first) / SAMPLE_RATE_HZ


def click_onset_errors_ms(codec: TinyAudioCodec, clips: int, seed: int) -> torch.Tensor:
    """|decoded onset - original onset| in ms for every click of ``clips`` click tracks."""
    wave, onsets = click_track(clips, seed)
    decoded = codec.decode(codec.encode(wave))[..., :wave.shape[-1]]
    return torch.tensor([abs(onset_seconds(decoded[i, 0], s) - onset_seconds(wave[i, 0], s)) * 1000
                         for i in range(clips) for s in onsets[i].tolist()])


def measured_table() -> dict[str, float]:
    video, audio = TinyVideoCodec(), TinyAudioCodec()
    balls, smooth = bouncing_balls(32, seed=1), gradients(32, seed=2)
    grey = balls.mean(dim=-1, keepdim=True).expand_as(balls)
    clicks, _ = click_track(32, seed=3)
    in_band, full_band = sine_sweep(50, 1950), sine_sweep(50, 3950)
    errors = click_onset_errors_ms(audio, 32, seed=3)

    def audio_round_trip(wave):
        return audio.decode(audio.encode(wave))[..., :wave.shape[-1]]

    return {
        "video PSNR dB, bouncing balls": psnr_db(balls, video.decode(video.encode(balls))),
        "video PSNR dB, balls in greyscale": psnr_db(grey, video.decode(video.encode(grey))),
        "video PSNR dB, gradients": psnr_db(smooth, video.decode(video.encode(smooth))),
        "audio SNR dB, clicks": snr_db(clicks, audio_round_trip(clicks)),
        "audio SNR dB, sweep 50-1950 Hz": snr_db(in_band, audio_round_trip(in_band)),
        "audio SNR dB, sweep 50-3950 Hz": snr_db(full_band, audio_round_trip(full_band)),
        "click onset error ms, median": errors.median().item(),
        "click onset error ms, max": errors.max().item(),
    }


# ------------------------------------------------------------------------------------------- video

def test_video_rates_and_shapes_match_the_tiny_preset():
    codec = TinyVideoCodec()
    assert isinstance(codec, VideoCodec)
    assert (codec.fps, codec.temporal_stride, codec.spatial_stride, codec.causal_first_frame) == (16, 2, 4, False)
    assert codec.latent_channels == PRESETS["tiny"].video.in_channels == 16
    latent = codec.encode(torch.rand(2, 32, 32, 32, 3))
    assert latent.shape == (2, 16, 16, 8, 8)
    # The tiny model's (1, 2, 2) patches then make 16 x 4 x 4 = 256 tokens of 64 numbers (< width 128).
    assert codec.latent_frames(32) == 16 and codec.latent_hz(32) == 8.0
    assert codec.decode(latent).shape == (2, 32, 32, 32, 3)
    assert codec.encode(torch.rand(1, 6, 12, 20, 3)).shape == (1, 16, 3, 3, 5)


def test_video_basis_is_orthonormal_and_the_transforms_are_exact():
    assert torch.allclose(dct_ii_matrix(4) @ dct_ii_matrix(4).T, torch.eye(4, dtype=torch.float64), atol=1e-12)
    codec = TinyVideoCodec()
    assert torch.allclose(codec.basis @ codec.basis.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    # The decoder is the encoder's right inverse: any latent whose pixels stay inside 0..1 (so that the clamp does
    # not act) comes back unchanged, so every latent channel is free and none is redundant.
    latent = 0.05 * torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (codec.encode(codec.decode(latent)) - latent).abs().max().item() < 1e-12


def test_video_round_trip_error_on_balls_and_gradients():
    codec = TinyVideoCodec()
    balls, smooth = bouncing_balls(32, seed=1), gradients(32, seed=2)
    assert psnr_db(balls, codec.decode(codec.encode(balls))) > 27.5            # measured 28.2 dB
    assert psnr_db(smooth, codec.decode(codec.encode(smooth))) > 55.0          # measured 56.7 dB
    grey = balls.mean(dim=-1, keepdim=True).expand_as(balls)                   # luma keeps more detail
    assert psnr_db(grey, codec.decode(codec.encode(grey))) > 34.0              # measured 34.7 dB


def test_video_latents_have_roughly_unit_variance_on_balls():
    latent = TinyVideoCodec().encode(bouncing_balls(48, seed=11))
    std = latent.transpose(0, 1).reshape(16, -1).std(dim=1)
    assert std.min().item() > 0.6 and std.max().item() < 1.5, std


def test_video_keeps_a_moving_ball_where_it_is():
    # One white ball on black, moving 2 px per frame. Both frames of a latent keep their own position (measured
    # error 0.06 px); a codec that averaged the frame pair would be 1 px off in every frame.
    frames, size = 8, 32
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    centre_x = 8.3 + 2.0 * torch.arange(frames)
    video = ((4.5 - ((yy - 14.7) ** 2 + (xx - centre_x[:, None, None]) ** 2).sqrt() + 0.5).clamp(0, 1))
    video = video[None, ..., None].expand(1, frames, size, size, 3)
    decoded = TinyVideoCodec().decode(TinyVideoCodec().encode(video))[0, ..., 0]
    mass = decoded.sum(dim=(1, 2))
    centroid_x = (decoded * xx).sum(dim=(1, 2)) / mass
    true_x = (video[0, ..., 0] * xx).sum(dim=(1, 2)) / video[0, ..., 0].sum(dim=(1, 2))
    assert (centroid_x - true_x).abs().max().item() < 0.15


def test_video_static_anchor_decodes_to_a_constant_grey_frame():
    codec = TinyVideoCodec()
    anchor = codec.static_latent(latent_frames=16, height_px=32, width_px=32)
    assert anchor.shape == (1, 16, 16, 8, 8)
    assert anchor.abs().max().item() < 1e-6                                   # mid-grey is the codec's zero
    assert (codec.decode(anchor) - 0.5).abs().max().item() < 1e-6
    dark = codec.static_latent(latent_frames=4, height_px=8, width_px=8, grey_level=0.2)
    assert dark[:, 1:8].abs().max().item() < 1e-6                              # only the means carry a flat frame
    assert (codec.decode(dark) - 0.2).abs().max().item() < 1e-5


def test_video_encode_rejects_bad_shapes_with_the_received_shape():
    codec = TinyVideoCodec()
    cases = {
        (1, 31, 32, 32, 3): "[1, 31, 32, 32, 3]",       # frames not a multiple of the temporal stride
        (1, 32, 30, 32, 3): "[1, 32, 30, 32, 3]",       # height not a multiple of 4
        (1, 32, 32, 32, 4): "[1, 32, 32, 32, 4]",       # RGBA
        (32, 32, 32, 3): "frames[None]",                # missing batch dimension
    }
    for shape, named in cases.items():
        with pytest.raises(ValueError, match="frames") as info:
            codec.encode(torch.rand(shape))
        assert named in str(info.value) and "[B, F, H, W, 3]" in str(info.value)
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"received \[1, 8, 2, 2\]"):
        codec.decode(torch.zeros(1, 8, 2, 2))


def test_video_codec_follows_dtype_and_is_differentiable():
    codec = TinyVideoCodec()
    frames = bouncing_balls(1, seed=3, frames=4, size_px=8)
    latent64 = codec.encode(frames.double())
    assert latent64.dtype == torch.float64
    assert codec.decode(codec.encode(frames.bfloat16())).dtype == torch.bfloat16
    latent = codec.encode(frames).requires_grad_(True)
    codec.decode(latent).sum().backward()
    assert latent.grad is not None and latent.grad.abs().sum().item() > 0
    with torch.inference_mode():                       # codecs made or used inside ComfyUI's inference mode ...
        inference_codec = TinyVideoCodec()
        inference_codec.encode(frames)
    pixels = frames.clone().requires_grad_(True)       # ... still take part in training graphs afterwards
    inference_codec.encode(pixels).square().sum().backward()
    assert pixels.grad.abs().sum().item() > 0


# ------------------------------------------------------------------------------------------- audio

def test_audio_rates_and_shapes():
    codec = TinyAudioCodec()
    assert isinstance(codec, AudioCodec)
    assert (codec.sample_rate, codec.samples_per_latent, codec.latents_per_second) == (8000, 64, 125.0)
    assert codec.latent_channels == PRESETS["tiny"].audio.in_channels == 32
    assert codec.band_limit_hz == 2000.0
    latent = codec.encode(torch.zeros(3, 1, 16000))
    assert latent.shape == (3, 250, 32)
    assert codec.decode(latent).shape == (3, 1, 16000)
    assert codec.encode(torch.zeros(1, 1, 16001)).shape == (1, 251, 32)
    assert codec.encode(torch.zeros(1, 1, 1)).shape == (1, 1, 32)


def test_mdct_with_all_bins_is_orthonormal_and_perfectly_reconstructs():
    # The full MDCT (all 64 bins) is an orthogonal transform of [0, 64 La): exact reconstruction and Parseval,
    # including the edge frames.
    codec = TinyAudioCodec()
    full = mdct_matrix(64)
    codec.kernel, codec.bin_std = full, torch.ones(64, dtype=torch.float64)
    codec.latent_channels = 64
    wave = (torch.rand(2, 1, 640, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5)
    latent = codec.encode(wave)
    assert (codec.decode(latent) - wave).abs().max().item() < 1e-12
    assert abs(latent.square().sum().item() - wave.square().sum().item()) < 1e-9


def test_audio_round_trip_error_on_clicks_and_sweeps():
    codec = TinyAudioCodec()
    clicks, _ = click_track(32, seed=3)
    assert snr_db(clicks, codec.decode(codec.encode(clicks))) > 26.5           # measured 27.6 dB
    in_band = sine_sweep(50, 1950)
    assert snr_db(in_band, codec.decode(codec.encode(in_band))) > 32.5         # measured 33.8 dB
    # Above the 2 kHz band limit everything is lost: a sweep over the whole 0-4 kHz keeps about half its energy.
    full_band = sine_sweep(50, 3950)
    assert 2.0 < snr_db(full_band, codec.decode(codec.encode(full_band))) < 4.5   # measured 3.0 dB


def test_click_onsets_survive_within_a_millisecond():
    errors_ms = click_onset_errors_ms(TinyAudioCodec(), clips=32, seed=3)
    assert errors_ms.numel() == 128
    assert errors_ms.max().item() <= 1.0                                       # measured max 0.25 ms
    # The band limit smears a click's sharp start back in time by up to half a window (8 ms); from 1 ms before
    # the onset back to 10 ms that pre-echo stays below 6 % of the click's peak (measured 4 %).
    codec = TinyAudioCodec()
    wave, onsets = click_track(32, seed=3)
    decoded = codec.decode(codec.encode(wave))
    worst = 0.0
    for clip in range(32):
        for onset in onsets[clip].tolist():
            first = int(onset * SAMPLE_RATE_HZ) + 1                            # first sample after the onset
            before = decoded[clip, 0, first - 80:first - 8].abs().max()
            worst = max(worst, (before / wave[clip, 0, first:first + 400].abs().max()).item())
    assert 0.0 < worst < 0.06


def test_audio_latents_have_roughly_unit_variance_on_clicks_in_band():
    wave, _ = click_track(48, seed=12)
    std = TinyAudioCodec().encode(wave).reshape(-1, 32).std(dim=0)
    # Bins 5-23 (about 300-1500 Hz) are where the clicks live; the floored bins above 1.6 kHz stay below one.
    assert std[5:24].min().item() > 0.6 and std[5:24].max().item() < 1.6, std
    assert std.max().item() < 1.6 and std[27:].max().item() < 0.8


def test_audio_silence_anchor_decodes_to_silence():
    codec = TinyAudioCodec()
    anchor = codec.silence_latent(latent_length=250)
    assert anchor.shape == (1, 250, 32)
    assert anchor.abs().max().item() == 0.0
    assert codec.decode(anchor).abs().max().item() == 0.0


def test_audio_encode_rejects_bad_shapes_with_the_received_shape():
    codec = TinyAudioCodec()
    with pytest.raises(ValueError, match=r"waveform.*\[B, 1, T\].*received \[2, 2, 800\].*downmix"):
        codec.encode(torch.zeros(2, 2, 800))
    with pytest.raises(ValueError, match=r"waveform.*received \[800\]"):
        codec.encode(torch.zeros(800))
    with pytest.raises(ValueError, match=r"latent.*\[B, La, 32\].*received \[1, 10, 20\]"):
        codec.decode(torch.zeros(1, 10, 20))


def test_audio_codec_is_batched_differentiable_and_follows_dtype():
    codec = TinyAudioCodec()
    wave, _ = click_track(3, seed=4)
    batched = codec.encode(wave)
    single = torch.cat([codec.encode(wave[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-6)
    assert codec.encode(wave.double()).dtype == torch.float64
    latent = batched.clone().requires_grad_(True)
    codec.decode(latent).square().sum().backward()
    assert latent.grad.abs().sum().item() > 0


if __name__ == "__main__":
    for name, value in measured_table().items():
        print(f"{name:40s} {value:8.2f}")
