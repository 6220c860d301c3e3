"""Bad and edge inputs for clip folders: the AV dataset (data/av_dataset.py), its decoder (files/media_io.py) and the
SyncAV AV Dataset node. Clips are made tiny with PyAV by ``write_test_clip`` (tests/test_av_dataset.py), so each case
runs in well under a second.

Outcomes: a bad setting is a ``ValueError`` naming it, raised before any file is read; a clip that cannot be used is
skipped with a reason naming it (in ``dataset.skipped``, the log and the node's report); a folder left with nothing
usable is one ``AVDatasetError`` naming the folder and every skipped file with its reason. The cases below each load a
folder whose only clip has the problem, so the folder error shows the clip's reason. Edge inputs that must work (odd
sample rates and channel layouts, huge frames, variable frame rates, odd sizes) are checked by value at the end."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bad_input.harness import BadInput, expect_error, params
from comfyui_syncav.files.media_io import decode_clip
from comfyui_syncav.text.embedded import TinyTextEncoder
from comfy_nodes import run
from comfyui_syncav.nodes.comfy_types import SyncAVCodecs
from comfyui_syncav.nodes.dataset import SyncAVDataset
from comfyui_syncav.data.av_dataset import AVClipDataset
from comfyui_syncav.data.clip_folder import MAX_CAPTION_BYTES, AVDatasetError
from micro_models import micro_pipeline
from test_av_dataset import frame_level, write_test_clip

pytestmark = pytest.mark.usefixtures("one_thread")

DATASET = "AV dataset"
NODE = "SyncAV AV Dataset node"
LENGTH = dict(seconds=0.5, fps=16.0, size_px=16, sample_rate_hz=8000)     # 8 frames, 4000 samples


def load(folder, **settings) -> AVClipDataset:
    return AVClipDataset(folder, **{**LENGTH, "progress": False, **settings})


def folder_of(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    return folder


def only_clip_error(expected_reason: str) -> str:
    """The folder error's regex when its only file is skipped for ``expected_reason``."""
    return r"folder: no usable clip in '.*clips' .*1 file\(s\) skipped: " + expected_reason


# ------------------------------------------------------------------------------------------------ folder contents
# Each setup fills tmp_path and returns the call that must fail.

def _no_audio_stream(tmp_path):
    write_test_clip(folder_of(tmp_path) / "silent.mp4", audio=False)
    return lambda: load(tmp_path / "clips")


def _clip_0_1_s(tmp_path):
    write_test_clip(folder_of(tmp_path) / "blip.mp4", frames=2, fps=20.0)
    return lambda: load(tmp_path / "clips")


def _truncated_mp4(tmp_path):
    path = write_test_clip(folder_of(tmp_path) / "cut.mp4")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])      # the index (moov) is written last: it is gone
    return lambda: load(tmp_path / "clips")


def _text_named_mp4(tmp_path):
    folder = folder_of(tmp_path)
    (folder / "notes.mp4").write_text("these are my notes, not a video\n")
    (folder / "notes.txt").write_text("notes")
    return lambda: load(folder)


def _empty_video_stream(tmp_path):
    write_test_clip(folder_of(tmp_path) / "empty.mkv", frames=0, audio_seconds=0.5)   # mkv keeps the empty track
    return lambda: load(tmp_path / "clips")


def _strip_frames(tmp_path):
    write_test_clip(folder_of(tmp_path) / "strip.mp4", size=(16, 512))
    return lambda: load(tmp_path / "clips")


def _caption_without_video(tmp_path):
    (folder_of(tmp_path) / "lonely.txt").write_text("a caption whose clip was not copied")
    return lambda: load(tmp_path / "clips")


def _video_without_caption(tmp_path):
    write_test_clip(folder_of(tmp_path) / "mute.mp4", caption=None)
    return lambda: load(tmp_path / "clips")


def _empty_folder(tmp_path):
    folder_of(tmp_path)
    return lambda: load(tmp_path / "clips")


def _missing_folder(tmp_path):
    return lambda: load(tmp_path / "nowhere")


def _file_as_folder(tmp_path):
    path = write_test_clip(folder_of(tmp_path) / "clip.mp4")
    return lambda: load(path)


def _broken_link(tmp_path):
    folder = folder_of(tmp_path)
    os.symlink(folder / "moved-away.mp4", folder / "gone.mp4")
    (folder / "gone.txt").write_text("its video was moved")
    return lambda: load(folder)


def _caption(content: bytes):
    def setup(tmp_path):
        path = write_test_clip(folder_of(tmp_path) / "clip.mp4")
        path.with_suffix(".txt").write_bytes(content)
        return lambda: load(tmp_path / "clips")
    return setup


def _setting(**settings):
    """A bad setting with a folder that does not exist: the setting's error proves it is checked first."""
    return lambda tmp_path: (lambda: load(tmp_path / "not-read", **settings))


def _with_codecs(**settings):
    def setup(tmp_path):
        from comfyui_syncav.codecs.embedded import TinyAudioCodec, TinyVideoCodec
        codecs = dict(video_codec=TinyVideoCodec(), audio_codec=TinyAudioCodec(), text_encoder=TinyTextEncoder())
        return lambda: load(tmp_path / "not-read", **codecs, **settings)
    return setup


CASES = [
    (BadInput("no-audio-stream", DATASET, only_clip_error(r"silent\.mp4: no audio track")), _no_audio_stream),
    (BadInput("clip-0.1s", DATASET, only_clip_error(r"blip\.mp4: shorter than the training length: video 0\.1 s "
                                                    r"< 0\.5 s")), _clip_0_1_s),
    (BadInput("truncated-mp4", DATASET, only_clip_error(r"cut\.mp4: unreadable \(InvalidDataError: Invalid data")),
     _truncated_mp4),
    (BadInput("text-named-mp4", DATASET, only_clip_error(r"notes\.mp4: unreadable \(InvalidDataError: Invalid data")),
     _text_named_mp4),
    (BadInput("empty-video-stream", DATASET, only_clip_error(r"empty\.mkv: no decodable video frame \(the video "
                                                             r"track is empty")), _empty_video_stream),
    (BadInput("strip-frames", DATASET, only_clip_error(r"strip\.mp4: frame 512x16 px is too far from the training "
                                                       r"frame's shape 16x16 px")), _strip_frames),
    (BadInput("caption-without-video", DATASET, only_clip_error(r"lonely\.txt: a caption without a video \(no lonely "
                                                                r"with a video extension, \.mp4/")),
     _caption_without_video),
    (BadInput("video-without-caption", DATASET, only_clip_error(r"mute\.mp4: no caption file mute\.txt")),
     _video_without_caption),
    (BadInput("empty-folder", DATASET, r"folder: no video files in '.*clips' \(expected a folder of video clips "
                                       r"\(\.mp4, .*\) with same-name \.txt captions"), _empty_folder),
    (BadInput("missing-folder", DATASET, r"folder: '.*nowhere' does not exist \(expected a folder of video clips"),
     _missing_folder),
    (BadInput("file-as-folder", DATASET, r"folder: '.*clip\.mp4' is a file, not a folder \(expected a folder"),
     _file_as_folder),
    (BadInput("broken-link", DATASET, only_clip_error(r"gone\.mp4: not a readable file \(a folder, or a link to "
                                                      r"nothing\)")), _broken_link),
    (BadInput("non-utf8-caption", DATASET, only_clip_error(r"clip\.mp4: caption file clip\.txt is not UTF-8 text "
                                                           r"\(byte 0xe9 at position 3\); save it as UTF-8")),
     _caption("café au lait".encode("latin-1"))),
    (BadInput("empty-caption", DATASET, only_clip_error(r"clip\.mp4: caption file clip\.txt is empty, expected the "
                                                        r"clip's description")), _caption(b" \n\t\n")),
    (BadInput("huge-caption", DATASET, only_clip_error(rf"clip\.mp4: caption file clip\.txt holds "
                                                       rf"{MAX_CAPTION_BYTES + 1} bytes, expected a caption of at "
                                                       rf"most {MAX_CAPTION_BYTES} bytes")),
     _caption(b"a" * (MAX_CAPTION_BYTES + 1))),
    (BadInput("binary-caption", DATASET, only_clip_error(r"clip\.mp4: caption file clip\.txt holds binary data "
                                                         r"\(NUL bytes\), expected text")),
     _caption(b"a ball\x00\x00\x01bounces")),
    (BadInput("seconds-zero", DATASET, r"seconds: expected a positive training length in seconds, received 0"),
     _setting(seconds=0)),
    (BadInput("seconds-negative", DATASET, r"seconds: expected a positive training length .*received -2"),
     _setting(seconds=-2.0)),
    (BadInput("seconds-nan", DATASET, r"seconds: expected a positive training length .*received nan"),
     _setting(seconds=float("nan"))),
    (BadInput("seconds-inf", DATASET, r"seconds: expected a positive training length .*received inf"),
     _setting(seconds=float("inf"))),
    (BadInput("fps-nan", DATASET, r"fps: expected a positive frame rate, received nan"), _setting(fps=float("nan"))),
    (BadInput("size-zero", DATASET, r"size_px: expected a positive whole number of pixels or \(height, width\), "
                                    r"received 0"), _setting(size_px=0)),
    (BadInput("size-not-codec-multiple", DATASET, r"size_px: the video codec takes frames whose sides are multiples "
                                                  r"of 4 px, received 18"), _with_codecs(size_px=18)),
    (BadInput("sample-rate-zero", DATASET, r"sample_rate_hz: expected a positive whole number of Hz, received 0"),
     _setting(sample_rate_hz=0)),
    (BadInput("channels-5.1", DATASET, r"audio_channels: expected 1 \(mono\) or 2 \(stereo\), received 6"),
     _setting(audio_channels=6)),
]
SETUPS = {case.id: setup for case, setup in CASES}


@pytest.mark.parametrize("case", params([case for case, _ in CASES]))
def test_bad_dataset_input_gets_one_clear_error(case, tmp_path):
    error_types = (AVDatasetError,) if case.expected.startswith("folder") else (ValueError,)
    expect_error(case, SETUPS[case.id](tmp_path), error_types)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="file permissions do not stop root")
def test_unreadable_caption_is_skipped_with_its_reason(tmp_path):
    path = write_test_clip(folder_of(tmp_path) / "locked.mp4")
    path.with_suffix(".txt").chmod(0)
    case = BadInput("unreadable-caption", DATASET,
                    only_clip_error(r"locked\.mp4: cannot read the caption file locked\.txt \(PermissionError"))
    expect_error(case, lambda: load(tmp_path / "clips"), (AVDatasetError,))


def test_a_skipped_clip_is_named_in_the_log_and_the_report_while_the_others_load(tmp_path, caplog):
    folder = folder_of(tmp_path)
    write_test_clip(folder / "good.mp4")
    write_test_clip(folder / "silent.mp4", audio=False)
    (folder / "stray.txt").write_text("no clip")
    with caplog.at_level(logging.WARNING, logger="comfyui_syncav.data.av_dataset"):
        ds = load(folder)
    assert [c.name for c in ds.clips] == ["good.mp4"]
    assert dict(ds.skipped) == {"silent.mp4": "no audio track",
                                "stray.txt": "a caption without a video (no stray with a video extension, "
                                             ".mp4/.m4v/.mov/.mkv/.webm, beside it)"}
    assert "skipping silent.mp4: no audio track" in caplog.text and "skipping stray.txt" in caplog.text
    assert "skipped 2: " in ds.summary() and "silent.mp4: no audio track" in ds.summary()


# ------------------------------------------------------------------------------------------------ the node

@pytest.fixture(scope="module")
def node_inputs():
    text_encoder = TinyTextEncoder()
    return SyncAVCodecs(micro_pipeline(text_encoder)), text_encoder


NODE_CASES = [
    (BadInput("node-folder-blank", NODE, r"folder: expected the path of a folder of clips .*received ' '"),
     dict(folder=" ")),
    (BadInput("node-folder-missing", NODE, r"folder: '.*nowhere' does not exist \(expected a folder of video clips"), dict(folder="nowhere")),
    (BadInput("node-seconds-inf", NODE, r"seconds: expected a positive training length in seconds, received inf"),
     dict(seconds=float("inf"))),
    (BadInput("node-seconds-nan", NODE, r"seconds: expected a positive training length.*received nan"),
     dict(seconds=float("nan"))),
    (BadInput("node-size-odd", NODE, r"size_px: expected sides that are multiples of \d+ px for this model, received 33"),
     dict(size=33)),
]
NODE_INPUTS = {case.id: inputs for case, inputs in NODE_CASES}


@pytest.mark.parametrize("case", params([case for case, _ in NODE_CASES]))
def test_bad_node_input_gets_one_clear_error(case, tmp_path, node_inputs):
    codecs, text_encoder = node_inputs
    write_test_clip(folder_of(tmp_path) / "clip.mp4", frames=32)
    inputs = dict(folder=str(tmp_path / "clips"), codecs=codecs, text_encoder=text_encoder, seconds=2.0, size=16,
                  cache=False)
    inputs.update(NODE_INPUTS[case.id])
    with torch.inference_mode():
        expect_error(case, lambda: run(SyncAVDataset, **inputs))


def test_node_report_names_each_skipped_clip(tmp_path, node_inputs):
    codecs, text_encoder = node_inputs
    folder = folder_of(tmp_path)
    write_test_clip(folder / "good.mp4", frames=32)
    write_test_clip(folder / "blip.mp4", frames=2, fps=20.0)
    with torch.inference_mode():
        dataset, report = run(SyncAVDataset, str(folder), codecs, text_encoder, 2.0, 16, False)
    assert len(dataset) == 1 and dataset.encoded
    assert "skipped 1: blip.mp4: shorter than the training length: video 0.1 s < 2 s" in report


# ------------------------------------------------------------------------------------------------ edge inputs that work

@pytest.mark.parametrize("sample_rate", [8000, 44100, 96000])
@pytest.mark.parametrize("layout", ["mono", "stereo", "5.1"])
def test_sample_rates_and_layouts_decode_to_the_training_rate_within_full_scale(tmp_path, sample_rate, layout):
    """Every channel holds the same 0.5 sine at 440 Hz: any correct mix keeps it at 0.5 (a sum would not)."""
    path = write_test_clip(tmp_path / "tone.mp4", sample_rate=sample_rate, layout=layout, amplitude=0.5)
    for channels in (1, 2):
        _, waveform = decode_clip(path, 8, 16.0, 4000, 8000, channels, size=(16, 16))
        assert waveform.shape == (channels, 4000) and waveform.dtype == np.float32
        middle = waveform[:, 500:3500]          # away from the codec's priming and tail
        assert 0.45 < np.abs(middle).max() < 0.56, (layout, sample_rate, np.abs(middle).max())
        spectrum = np.abs(np.fft.rfft(middle[0]))
        assert abs(np.argmax(spectrum) * 8000 / middle.shape[1] - 440) < 5     # the tone, at the right rate
        assert np.abs(waveform[0] - waveform[-1]).max() < 0.02     # the same tone on both sides (up to aac)


def test_huge_frames_are_reduced_as_they_leave_the_decoder(tmp_path):
    path = write_test_clip(tmp_path / "big.mp4", size=(1080, 1920), frames=3)
    frames, _ = decode_clip(path, 3, 16.0, 1500, 8000, size=(16, 16))
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8           # never 1080x1920 in RGB
    levels = frames.reshape(3, -1).mean(axis=1)
    assert np.abs(levels - [frame_level(i) for i in range(3)]).max() < 6


def test_variable_frame_rate_picks_the_frame_nearest_each_grid_time(tmp_path):
    times = [0.0, 0.05, 0.07, 0.2, 0.21, 0.4, 0.5]
    path = write_test_clip(tmp_path / "vfr.mp4", frame_times=times)
    frames, _ = decode_clip(path, 8, 16.0, 4000, 8000, size=(16, 16))
    picked = [int(np.argmin([abs(level - frame_level(i)) for i in range(len(times))]))
              for level in frames.reshape(8, -1).mean(axis=1)]
    # grid times 0, 1/16, ... 7/16 s -> nearest source frames (ties: the earlier)
    assert picked == [0, 2, 2, 3, 4, 5, 5, 5]


def test_odd_sizes_and_shapes_are_covered_and_cropped(tmp_path):
    write_test_clip(folder_of(tmp_path) / "wide.mp4", size=(36, 64))
    for size in (33, (17, 9), (40, 24)):
        frames, waveform = load(tmp_path / "clips", size_px=size).media(0)
        h, w = (size, size) if isinstance(size, int) else size
        assert frames.shape == (8, h, w, 3) and waveform.shape == (1, 4000)
        assert abs(frames.mean().item() * 255 - np.mean([frame_level(i) for i in range(8)])) < 6
