"""The clip-folder dataset (data/av_dataset.py): PyAV decoding, kornia resize/crop, bad-data skips, latent cache,
and its batch source driving the DPO trainer. Data: a few BounceBench clips written as mp4 + .txt."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_syncav.codecs.embedded import TinyAudioCodec, TinyVideoCodec
from comfyui_syncav.model.joint import JointModel
from comfyui_syncav.runtime.lora import LoraSpec, load_lora
from comfyui_syncav.files.media_io import downmix_matrix, write_mp4
from comfyui_syncav.generation.pipeline import AVPipeline, embedded_config
from comfyui_syncav.text.embedded import TinyTextEncoder
from comfyui_syncav.data import av_dataset
from comfyui_syncav.data.av_dataset import AVClipDataset, resize_crop
from comfyui_syncav.data.clip_folder import AVDatasetError
from comfyui_syncav.bouncebench.clips import make_clip
from comfyui_syncav.bouncebench.config import BounceBenchConfig, split_seeds
from comfyui_syncav.bouncebench.export import write_dataset
from comfyui_syncav.train.dpo_training import DPOTrainingConfig, train_dpo
from comfyui_syncav.model.batch import AVBatch


pytestmark = pytest.mark.usefixtures("one_thread")


def write_test_clip(path, *, frames: int = 8, fps: float = 16.0, size: tuple[int, int] = (32, 32),
                    sample_rate: int = 8000, layout: str = "mono", amplitude: float = 0.5,
                    audio_seconds: float | None = None, frame_times: list[float] | None = None, video: bool = True,
                    audio: bool = True, caption: str | None = "a test clip"):
    """A tiny clip written with PyAV (h264 + aac), the one generator of test media for the dataset's tests.

    Frame i (at ``frame_times[i]`` seconds, or ``i / fps``) is a grey of level ``frame_level(i)`` with a zero-mean
    ripple on top (so resizing has detail to keep); ``frames=0`` leaves the video track empty. Every audio channel of
    ``layout`` carries the same 440 Hz sine of ``amplitude`` for ``audio_seconds`` (default: as long as the video).
    caption: also written to the same-name .txt (None: no caption). -> the clip's path."""
    import av
    from fractions import Fraction

    path = Path(path)
    height, width = size
    times = frame_times if frame_times is not None else [i / fps for i in range(frames)]
    seconds = audio_seconds if audio_seconds is not None else (len(times) / fps if frame_times is None
                                                               else max(times, default=0.0) + 1 / fps)
    rate = Fraction(fps).limit_denominator(1001)
    # the frame grid's time base, or milliseconds for given (e.g. variable) frame times
    time_base = 1 / rate if frame_times is None else Fraction(1, 1000)
    with av.open(str(path), "w") as container:        # the container follows the suffix (.mp4, .mkv, ...)
        if video:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = time_base
            stream.options = {"preset": "ultrafast"}
            y, x = np.mgrid[0:height, 0:width]
            ripple = 30 * np.sin(2 * np.pi * 3 * x / width) * np.cos(2 * np.pi * 2 * y / height)
        if audio:
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = layout
            # 192 kbit/s a channel: at its default rate FFmpeg's aac lifts a 96 kHz tone's peaks by half
            sound.bit_rate = 192000 * len(sound.layout.channels)
        if video:
            for i, time_s in enumerate(times):
                picture = np.clip(frame_level(i) + ripple, 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(np.repeat(picture[..., None], 3, axis=2), format="rgb24")
                frame.pts, frame.time_base = round(time_s / time_base), time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        if audio:
            samples = round(seconds * sample_rate)
            tone = amplitude * np.sin(2 * np.pi * 440 * np.arange(samples) / sample_rate)
            channels = len(av.AudioLayout(layout).channels)
            waveform = np.repeat(tone[None].astype(np.float32), channels, axis=0)
            for begin in range(0, samples, 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform[:, begin:begin + 1024]),
                                                   format="fltp", layout=layout)
                frame.sample_rate, frame.pts = sample_rate, begin
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def frame_level(index: int) -> int:
    """The grey level of frame ``index`` of ``write_test_clip`` (distinct for the first 14 frames)."""
    return 40 + (12 * index) % 168


@pytest.fixture(scope="module")
def codecs():
    return TinyVideoCodec(), TinyAudioCodec(), TinyTextEncoder()


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    """Two BounceBench train clips (2 s, 32 px, 16 fps, 8 kHz) as mp4 + caption + ground truth."""
    folder = tmp_path_factory.mktemp("good")
    write_dataset(folder, "train", 2, progress=False)
    return folder


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, good_folder):
    """The two good clips, plus: one without an audio track, one too short (1 s), one of garbage bytes, one
    without a caption."""
    folder = tmp_path_factory.mktemp("mixed")
    for path in good_folder.iterdir():
        shutil.copy2(path, folder / path.name)
    clip = make_clip(split_seeds("train", 1, start=5)[0])
    write_mp4(folder / "silent.mp4", clip.frames, clip.fps)                       # video only
    (folder / "silent.txt").write_text("a ball without sound")
    write_mp4(folder / "short.mp4", clip.frames[:16], clip.fps, clip.waveform[:, :8000], clip.sample_rate_hz)
    (folder / "short.txt").write_text("a short clip")
    (folder / "garbage.mp4").write_bytes(os.urandom(2048))
    (folder / "garbage.txt").write_text("not a video")
    write_mp4(folder / "uncaptioned.mp4", clip.frames, clip.fps, clip.waveform, clip.sample_rate_hz)
    return folder


def dataset(folder, codecs, **kwargs) -> AVClipDataset:
    video_codec, audio_codec, text_encoder = codecs
    kwargs.setdefault("progress", False)
    return AVClipDataset(folder, 2.0, 16.0, 32, 8000, video_codec=video_codec, audio_codec=audio_codec,
                         text_encoder=text_encoder, **kwargs)


# ------------------------------------------------------------------------------------------------ decoding

def test_decoded_clip_matches_the_source_and_stays_in_sync(good_folder):
    seed = split_seeds("train", 1)[0]
    clip = make_clip(seed)
    ds = AVClipDataset(good_folder, 2.0, 16.0, 32, 8000, progress=False)   # no codecs: media only
    assert len(ds) == 2 and not ds.encoded and ds.num_frames == 32 and ds.num_samples == 16000
    index = [c.name for c in ds.clips].index(f"standard_train_{seed:010d}.mp4")
    assert ds.clips[index].caption == clip.caption
    frames, waveform = ds.media(index)
    assert frames.shape == (32, 32, 32, 3) and frames.dtype == torch.float32
    assert waveform.shape == (1, 16000) and waveform.dtype == torch.float32
    assert (frames - clip.frames.float()).abs().mean() < 0.03                  # h264 at crf 18
    reference = clip.waveform[0].double().numpy()
    decoded = waveform[0].double().numpy()
    lags = range(-40, 41)
    score = [np.dot(decoded[max(0, lag):16000 + min(0, lag)], reference[max(0, -lag):16000 - max(0, lag)])
             for lag in lags]
    assert lags[int(np.argmax(score))] == 0, "decoded audio is not aligned with the frames"


def test_other_frame_and_sample_rates_are_resampled(tmp_path):
    """A 32 fps / 16 kHz source decodes to the 16 fps / 8 kHz grid: every other frame, audio resampled by PyAV."""
    seed = split_seeds("train", 1)[0]
    fast = make_clip(seed, BounceBenchConfig(fps=32.0, sample_rate_hz=16000))
    slow = make_clip(seed)
    write_mp4(tmp_path / "fast.mp4", fast.frames, fast.fps, fast.waveform, fast.sample_rate_hz)
    (tmp_path / "fast.txt").write_text(fast.caption)
    frames, waveform = AVClipDataset(tmp_path, 2.0, 16.0, 32, 8000, progress=False).media(0)
    assert frames.shape == (32, 32, 32, 3) and waveform.shape == (1, 16000)
    assert (frames - slow.frames.float()).abs().mean() < 0.03
    spectrum_error = (waveform[0] - slow.waveform[0]).pow(2).mean() / slow.waveform[0].pow(2).mean()
    assert spectrum_error < 0.05


def test_kornia_resize_and_center_crop_give_the_requested_size():
    # A 48 x 64 frame whose left half is red, right half blue, with a green column band in the middle.
    frame = torch.zeros(48, 64, 3, dtype=torch.uint8)
    frame[:, :32, 0] = 255
    frame[:, 32:, 2] = 255
    frame[:, 28:36, 1] = 255
    frames = frame[None].expand(3, -1, -1, -1).contiguous()
    square = resize_crop(frames, (32, 32))
    assert square.shape == (3, 32, 32, 3) and square.dtype == torch.float32
    assert 0.0 <= square.min() and square.max() <= 1.0
    # 48x64 -> 32x43 (or 44 for parity) -> center 32 columns: both halves kept, the band stays in the middle
    assert square[0, :, 0, 0].mean() > 0.9 and square[0, :, -1, 2].mean() > 0.9
    assert square[0, :, 15:17, 1].mean() > 0.9
    tall = resize_crop(frames, (40, 24))
    assert tall.shape == (3, 40, 24, 3)
    same = resize_crop(frames, (48, 64))
    assert torch.equal(same, frames.float() / 255)


def test_frames_are_reduced_in_the_decoder_as_kornia_would(tmp_path):
    """decode_clip(size=...) scales each picked frame while converting it (libswscale, area averaging): never a
    source-size RGB frame. Against the source-size decode resized by kornia (the former path): measured mean 0.004-
    0.007 and max 0.010-0.018 of full scale over 32..1280 px sources (max 0.29 on BounceBench's sharp ball edges)."""
    path = write_test_clip(tmp_path / "wide.mp4", size=(360, 640))
    reduced, _ = av_dataset.decode_clip(path, 8, 16.0, 4000, 8000, size=(32, 32))
    assert reduced.shape == (8, 32, 32, 3) and reduced.dtype == np.uint8
    full, _ = av_dataset.decode_clip(path, 8, 16.0, 4000, 8000)
    assert full.shape == (8, 360, 640, 3)
    difference = (resize_crop(torch.from_numpy(reduced), (32, 32)) - resize_crop(torch.from_numpy(full), (32, 32)))
    assert difference.abs().mean() < 0.01 and difference.abs().max() < 0.04
    # a source already at the training size is converted exactly as before (no scaling at all)
    same, _ = av_dataset.decode_clip(write_test_clip(tmp_path / "same.mp4"), 8, 16.0, 4000, 8000, size=(32, 32))
    plain, _ = av_dataset.decode_clip(tmp_path / "same.mp4", 8, 16.0, 4000, 8000)
    assert np.array_equal(same, plain)


def test_a_5_1_downmix_keeps_full_scale(tmp_path):
    """Six channels of the same 0.9 sine: libswresample's float downmix summed them to ~3 (clipped or worse); ours
    keeps the level of one channel (the fuzz run saw a 5.1 -> mono peak of 1.30)."""
    path = write_test_clip(tmp_path / "surround.mp4", layout="5.1", amplitude=0.9)
    for channels in (1, 2):
        _, waveform = av_dataset.decode_clip(path, 8, 16.0, 4000, 8000, channels)
        peak = np.abs(waveform[:, 500:3500]).max()
        assert 0.85 < peak <= 1.0, peak
        assert (np.abs(waveform) > 0.999).mean() < 0.001, "the mix was clipped, not scaled"


def test_downmix_gains():
    five_one = ["FL", "FR", "FC", "LFE", "BL", "BR"]
    mono = downmix_matrix(five_one, 1)[0]
    assert mono.sum() == pytest.approx(1.0) and mono[3] == 0                       # LFE left out
    assert mono[0] == mono[1] == mono[2] and mono[4] == mono[5] == pytest.approx(mono[0] * 0.5 ** 0.5)
    left, right = downmix_matrix(five_one, 2)
    assert left.sum() == pytest.approx(1.0) and right.sum() == pytest.approx(1.0)
    assert left[1] == left[5] == 0 and right[0] == right[4] == 0 and left[2] == right[2] > 0
    assert np.array_equal(downmix_matrix(["FC"], 1), [[1.0]])                      # identities: unchanged audio
    assert np.array_equal(downmix_matrix(["FL", "FR"], 2), np.eye(2))
    assert np.array_equal(downmix_matrix(["FC"], 2), [[1.0], [1.0]])
    assert np.allclose(downmix_matrix(["FL", "FR"], 1), [[0.5, 0.5]])
    assert np.allclose(downmix_matrix(["NONE"] * 4, 1), 0.25)                     # unnamed channels: an even mix
    with pytest.raises(ValueError, match="channels: expected 1 .mono. or 2 .stereo., received 6"):
        downmix_matrix(five_one, 6)


# ------------------------------------------------------------------------------------------------ bad data

def test_bad_clips_are_skipped_with_a_warning_naming_them(mixed_folder, codecs, caplog):
    with caplog.at_level(logging.WARNING, logger="comfyui_syncav.data.av_dataset"):
        ds = dataset(mixed_folder, codecs)
    assert sorted(c.name for c in ds.clips) == sorted(p.name for p in mixed_folder.glob("standard_*.mp4"))
    reasons = dict(ds.skipped)
    assert set(reasons) == {"silent.mp4", "short.mp4", "garbage.mp4", "uncaptioned.mp4"}
    assert reasons["silent.mp4"] == "no audio track"
    assert "shorter than the training length" in reasons["short.mp4"] and "1 s < 2 s" in reasons["short.mp4"]
    assert reasons["garbage.mp4"].startswith("unreadable")
    assert "no caption file uncaptioned.txt" in reasons["uncaptioned.mp4"]
    logged = caplog.text
    for name in reasons:
        assert f"skipping {name}" in logged
    assert "skipped 4" in ds.summary()


def test_a_shorter_training_length_accepts_the_short_clip(mixed_folder, codecs):
    video_codec, audio_codec, text_encoder = codecs
    ds = AVClipDataset(mixed_folder, 1.0, 16.0, 16, 8000, video_codec=video_codec, audio_codec=audio_codec,
                       text_encoder=text_encoder, progress=False)
    assert "short.mp4" in [c.name for c in ds.clips]
    batch = ds.latents(range(len(ds)))
    assert batch.video.shape == (len(ds), 16, 8, 4, 4) and batch.audio.shape == (len(ds), 125, 32)


def test_nothing_usable_is_a_clear_error(tmp_path, mixed_folder, codecs):
    for name in ("silent", "short", "garbage"):
        for suffix in (".mp4", ".txt"):
            shutil.copy2(mixed_folder / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    with pytest.raises(AVDatasetError, match=r"folder: no usable clip in .*3 file\(s\) skipped: .*garbage\.mp4: "
                                             r"unreadable.*short\.mp4: shorter.*silent\.mp4: no audio track"):
        dataset(tmp_path, codecs)
    with pytest.raises(AVDatasetError, match="nowhere' does not exist"):
        dataset(tmp_path / "nowhere", codecs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AVDatasetError, match="no video files"):
        dataset(empty, codecs)


def test_settings_are_checked_against_the_codecs(good_folder, codecs):
    with pytest.raises(ValueError, match="fps: the video codec runs at 16 fps"):
        AVClipDataset(good_folder, 2.0, 25.0, 32, 8000, video_codec=codecs[0], audio_codec=codecs[1],
                      text_encoder=codecs[2], progress=False)
    with pytest.raises(ValueError, match="together"):
        AVClipDataset(good_folder, 2.0, 16.0, 32, 8000, video_codec=codecs[0], progress=False)
    with pytest.raises(ValueError, match="seconds"):
        AVClipDataset(good_folder, 0.0, 16.0, 32, 8000, progress=False)


# ------------------------------------------------------------------------------------------------ cache

def test_latent_cache_is_hit_on_the_second_load(tmp_path, good_folder, codecs, monkeypatch):
    cache = tmp_path / "cache"
    first = dataset(good_folder, codecs, cache_dir=cache)
    assert (first.cache_hits, first.cache_misses) == (0, 2)
    assert len(list(cache.glob("*.safetensors"))) == 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit must not decode the video")

    monkeypatch.setattr(av_dataset, "decode_clip", no_decoding)
    second = dataset(good_folder, codecs, cache_dir=cache)
    assert (second.cache_hits, second.cache_misses) == (2, 0)
    a, b = first.latents([0, 1]), second.latents([0, 1])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    monkeypatch.undo()

    # a touched file (new modification time) is encoded again; the other still comes from the cache
    touched = sorted(good_folder.glob("*.mp4"))[0]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = dataset(good_folder, codecs, cache_dir=cache)
    assert (third.cache_hits, third.cache_misses) == (1, 1)
    # another frame size is another cache entry
    video_codec, audio_codec, text_encoder = codecs
    other = AVClipDataset(good_folder, 2.0, 16.0, 16, 8000, video_codec=video_codec, audio_codec=audio_codec,
                          text_encoder=text_encoder, cache_dir=cache, progress=False)
    assert other.cache_misses == 2


def test_cached_tensors_are_trainable_after_inference_mode(good_folder, codecs):
    with torch.inference_mode():
        ds = dataset(good_folder, codecs)
    batch = ds.batches(0, torch.Generator().manual_seed(0), batch_size=2)
    assert not any(t.is_inference() for t in batch if t is not None)


# ------------------------------------------------------------------------------------------------ batches

def test_batches_visit_every_clip_per_epoch_and_repeat_per_step(good_folder, codecs):
    ds = dataset(good_folder, codecs, batch_size=1, seed=3)
    order = [ds.indices(step)[0] for step in range(4)]
    assert sorted(order[:2]) == [0, 1] and sorted(order[2:]) == [0, 1]
    batch = ds.batches(1, torch.Generator().manual_seed(0))
    again = ds.batches(1, torch.Generator().manual_seed(9))
    assert isinstance(batch, AVBatch) and all(torch.equal(x, y) for x, y in zip(batch, again))
    assert batch.video.shape == (1, 16, 16, 8, 8) and batch.audio.shape == (1, 250, 32)
    assert batch.text_video.shape[0] == 1 and batch.text_video_lengths.tolist() == [ds.latents([order[1]]).
                                                                                     text_video_lengths.item()]
    two = ds.batch_source(2)(0, torch.Generator())
    assert two.video.shape[0] == 2


def test_caption_dropout_blanks_rows(good_folder, codecs):
    ds = dataset(good_folder, codecs, caption_dropout=0.99)
    batch = ds.batches(0, torch.Generator().manual_seed(0), batch_size=2)
    assert batch.text_video.abs().sum() == 0 and batch.text_video_lengths.tolist() == [0, 0]


def test_dataset_drives_a_dpo_step(tmp_path, good_folder, codecs):
    video_codec, audio_codec, text_encoder = codecs
    config = embedded_config(video_codec, audio_codec)
    small = dict(dim=16, ffn_dim=32, num_heads=2, num_layers=2, freq_dim=16)
    config = config.replace(video=dataclasses.replace(config.video, **small),
                            audio=dataclasses.replace(config.audio, **small))
    torch.manual_seed(0)
    pipeline = AVPipeline(JointModel(config), video_codec, audio_codec, text_encoder, name="micro")
    ds = AVClipDataset.from_pipeline(good_folder, pipeline, 2.0, 32, progress=False)
    result = train_dpo(pipeline, tmp_path / "run", DPOTrainingConfig(steps=1, batch_size=2, lora=LoraSpec(rank=2),
                                                                   warmup_steps=0, log_every=1),
                       batches=ds.batch_source(2), progress=False)
    assert result.state.step == 1
    tensors, _ = load_lora(result.lora_path)
    assert tensors
