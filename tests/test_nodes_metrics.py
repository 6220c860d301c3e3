"""SyncAV Sync Metric and SyncAV BounceBench Clip, run as plain Python (no ComfyUI), under inference mode as
ComfyUI runs nodes. The generic contract test in test_nodes.py covers their declarations; here every choice they
offer is run."""

from __future__ import annotations

import json

import pytest
import torch

from comfy_nodes import info, node, options
from comfyui_syncav.bouncebench.clips import make_clip
from comfyui_syncav.bouncebench.config import VARIANTS, split_seeds
from comfyui_syncav.metrics.sync_metrics import REPORT_KEYS

FPS = 16.0


def bounce(split="val", index=0, variant="standard"):
    with torch.inference_mode():
        return node("SyncAVBounceBench").make(split, index, variant)


def measure(images, audio, fps=FPS, tolerance_ms=62.5, mode="auto"):
    with torch.inference_mode():
        return node("SyncAVSyncMetric").measure(images, audio, fps, tolerance_ms, mode)


# ------------------------------------------------------------------------------------------------ choices

def test_every_split_and_variant_choice_makes_its_clip():
    for split in options("SyncAVBounceBench", "split"):
        for variant in options("SyncAVBounceBench", "variant"):
            images, audio, caption, fps, truth_json = bounce(split, 0, variant)
            truth = json.loads(truth_json)
            low, high = VARIANTS[variant].num_balls
            assert truth["config"] == variant and low <= len(truth["balls"]) <= high, (split, variant)
            assert truth["seed"] == split_seeds(split, 1)[0]                  # index 0 of that split
            assert images.shape[0] == round(truth["seconds"] * fps)
            assert audio["waveform"].shape[-1] == round(truth["seconds"] * audio["sample_rate"])
            assert caption.count(" ball") == len(truth["balls"])
    assert not torch.equal(bounce("train", 0)[0], bounce("val", 0)[0])       # the splits hold other clips


def test_every_mode_choice_runs_and_auto_reads_blobs_on_a_plain_background():
    images, audio, _, fps, _ = bounce("val", 0)
    late = {"waveform": torch.roll(audio["waveform"], round(4 / fps * 8000), dims=-1), "sample_rate": 8000}
    reports = {}
    for mode in options("SyncAVSyncMetric", "mode"):
        out = measure(images, audio, fps, mode=mode)
        text, f1 = out["result"]
        assert [type(v).__name__ for v in out["result"]] == ["str", "float"] == \
            [{"STRING": "str", "FLOAT": "float"}[t] for t in info("SyncAVSyncMetric")["output"]]
        assert out["ui"]["text"] == [text]                                     # an output node shows its report
        reports[mode] = json.loads(text)
        assert measure(images, late, fps, mode=mode)["result"][1] < f1 - 0.5, mode   # measured 1.0 / 0.75 -> 0
    assert reports["auto"] == reports["blobs"] and reports["motion"] != reports["blobs"]
    assert reports["blobs"]["event_f1"] == 1.0 and reports["motion"]["event_f1"] >= 0.5    # measured 0.75


def test_tolerance_widens_the_matching_window():
    images, audio, _, fps, _ = bounce("val", 0)
    shift = round(1.5 / fps * audio["sample_rate"])                      # 93.75 ms late: one and a half frames
    late = {"waveform": torch.roll(audio["waveform"], shift, dims=-1), "sample_rate": audio["sample_rate"]}
    assert measure(images, late, fps, tolerance_ms=62.5)["result"][1] == 0.0
    report = json.loads(measure(images, late, fps, tolerance_ms=100.0)["result"][0])
    assert report["event_f1"] == 1.0 and report["median_offset_ms"] == pytest.approx(93.75, abs=2)


# ------------------------------------------------------------------------------------------------ BounceBench node

def test_bouncebench_node_gives_the_library_clip():
    images, audio, caption, fps, truth_json = bounce("val", 3, "two_balls")
    clip = make_clip(split_seeds("val", 1, start=3)[0], VARIANTS["two_balls"])
    assert images.shape == (32, 32, 32, 3) and images.dtype == torch.float32
    assert torch.equal(images, clip.frames)
    assert set(audio) == {"waveform", "sample_rate"} and audio["sample_rate"] == 8000
    assert audio["waveform"].shape == (1, 1, 16000) and torch.equal(audio["waveform"][0], clip.waveform)
    assert caption == clip.caption and " and " in caption
    assert fps == FPS and isinstance(fps, float)
    truth = json.loads(truth_json)
    assert truth["seed"] == clip.seed and truth["config"] == "two_balls"
    assert [i["time_s"] for i in truth["impacts"]] == clip.impact_times_s


def test_bouncebench_node_rejects_an_index_outside_the_split():
    with pytest.raises(ValueError, match=r"index: expected 0\.\.999999 for the val split"):
        bounce("val", 1_000_000)


# ------------------------------------------------------------------------------------------------ Sync Metric node

def test_bouncebench_clip_through_the_metric_scores_high():
    images, audio, _, fps, _ = bounce("val", 0)
    out = measure(images, audio, fps)
    assert set(out) == {"ui", "result"}
    text, f1 = out["result"]
    assert out["ui"]["text"] == [text]
    report = json.loads(text)
    assert list(report) == list(REPORT_KEYS)
    assert f1 == report["event_f1"] >= 0.9
    assert report["median_offset_ms"] < 15
    print(f"aligned clip: F1 {f1:.3f}, median offset {report['median_offset_ms']:.1f} ms")


def test_audio_rolled_by_four_frames_scores_lower():
    images, audio, _, fps, _ = bounce("val", 0)
    aligned = measure(images, audio, fps)["result"][1]
    shift = round(4 / fps * audio["sample_rate"])                        # 250 ms
    rolled = {"waveform": torch.roll(audio["waveform"], shift, dims=-1), "sample_rate": audio["sample_rate"]}
    text, f1 = measure(images, rolled, fps)["result"]
    report = json.loads(text)
    assert f1 < aligned - 0.3
    assert report["xcorr_offset_ms"] == pytest.approx(250, abs=20)      # positive: audio late
    print(f"rolled by 4 frames: F1 {f1:.3f} (aligned {aligned:.3f}), xcorr {report['xcorr_offset_ms']:+.0f} ms")


def test_zero_tolerance_means_one_frame():
    images, audio, _, fps, _ = bounce("val", 0)
    late = {"waveform": torch.roll(audio["waveform"], round(2 / fps * 8000), dims=-1), "sample_rate": 8000}
    for clip_audio in (audio, late):       # 1000 / 16 fps = 62.5 ms; the 2-frame shift keeps some matches (0.25)
        assert measure(images, clip_audio, fps, 0.0)["result"] == measure(images, clip_audio, fps, 62.5)["result"]
    assert measure(images, late, fps, 0.0)["result"] != measure(images, late, fps, 150.0)["result"]


def test_a_batch_of_clips_is_scored_clip_by_clip():
    first, second = bounce("val", 0), bounce("val", 1)
    images = torch.cat([first[0], second[0]])
    audio = {"waveform": torch.cat([first[1]["waveform"], second[1]["waveform"]]), "sample_rate": 8000}
    report = json.loads(measure(images, audio)["result"][0])
    assert report["num_clips"] == 2 and len(report["per_clip"]) == 2
    assert report["event_f1"] == pytest.approx((report["per_clip"][0]["event_f1"]
                                                + report["per_clip"][1]["event_f1"]) / 2)


def test_silence_gives_f1_zero_and_null_offsets():
    images, audio, _, fps, _ = bounce("val", 0)
    silent = {"waveform": torch.zeros_like(audio["waveform"]), "sample_rate": 8000}
    text, f1 = measure(images, silent, fps)["result"]
    report = json.loads(text)
    assert f1 == 0.0 and report["median_offset_ms"] is None and report["xcorr_offset_ms"] is None


def test_bad_inputs_give_clear_errors():
    images, audio, _, fps, _ = bounce("val", 0)
    with pytest.raises(ValueError, match=r"images: expected IMAGE frames \[F, H, W, 3\].*\[32, 32, 3\]"):
        measure(images[0], audio)
    with pytest.raises(ValueError, match=r"images: expected IMAGE frames"):
        measure(images.numpy(), audio)
    with pytest.raises(ValueError, match=r"audio: expected AUDIO .*'sample_rate'.*received \['waveform'\]"):
        measure(images, {"waveform": audio["waveform"]})
    with pytest.raises(ValueError, match=r"audio: 'waveform' must be a tensor \[B, C, T\]"):
        measure(images, {"waveform": audio["waveform"][0], "sample_rate": 8000})
    with pytest.raises(ValueError, match=r"audio: 'sample_rate' must be a positive number"):
        measure(images, {"waveform": audio["waveform"], "sample_rate": 0})
    with pytest.raises(ValueError, match=r"frames / waveform: 32 frames do not split into 3 clips"):
        measure(images, {"waveform": audio["waveform"].repeat(3, 1, 1), "sample_rate": 8000})
    # fps and mode are widgets: ComfyUI refuses a value outside the schema's range or choices before the node runs.
    inputs = info("SyncAVSyncMetric")["input"]["required"]
    assert inputs["fps"][1]["min"] > 0 and inputs["tolerance_ms"][1]["min"] == 0
    assert options("SyncAVSyncMetric", "mode") == ["auto", "blobs", "motion"]
    with pytest.raises(ValueError, match=r"mode: expected 'auto', 'blobs' or 'motion'"):
        measure(images, audio, mode="flow")            # and the library says so to a caller without a schema
