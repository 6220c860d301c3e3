"""SyncAV Sync Metric and SyncAV BounceBench Clip, run as plain Python (no ComfyUI), under inference mode as
ComfyUI runs nodes. The generic contract test in test_nodes.py covers their declarations too."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_syncav.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_syncav.train.bouncebench import VARIANTS, make_clip, split_seeds
from comfyui_syncav.train.sync_metrics import REPORT_KEYS

FPS = 16.0


def bounce(split="val", index=0, variant="standard"):
    with torch.inference_mode():
        return NODE_CLASS_MAPPINGS["SyncAVBounceBench"]().make(split, index, variant)


def measure(images, audio, fps=FPS, tolerance_ms=62.5, mode="auto"):
    with torch.inference_mode():
        return NODE_CLASS_MAPPINGS["SyncAVSyncMetric"]().measure(images, audio, fps, tolerance_ms, mode)


# ------------------------------------------------------------------------------------------------ declarations

def test_registered_with_display_names():
    assert NODE_DISPLAY_NAME_MAPPINGS["SyncAVSyncMetric"] == "SyncAV Sync Metric"
    assert NODE_DISPLAY_NAME_MAPPINGS["SyncAVBounceBench"] == "SyncAV BounceBench Clip"


def test_sync_metric_contract():
    cls = NODE_CLASS_MAPPINGS["SyncAVSyncMetric"]
    spec = cls.INPUT_TYPES()["required"]
    assert [spec[k][0] for k in ("images", "audio", "fps", "tolerance_ms")] == ["IMAGE", "AUDIO", "FLOAT", "FLOAT"]
    assert spec["mode"][0] == ["auto", "blobs", "motion"]
    assert spec["tolerance_ms"][1]["default"] == 62.5
    assert cls.RETURN_TYPES == ("STRING", "FLOAT") and cls.OUTPUT_NODE is True


def test_bouncebench_contract():
    cls = NODE_CLASS_MAPPINGS["SyncAVBounceBench"]
    spec = cls.INPUT_TYPES()["required"]
    assert spec["split"][0] == ["train", "val", "test"]
    assert spec["index"][0] == "INT"
    assert spec["variant"][0] == list(VARIANTS)
    assert cls.RETURN_TYPES == ("IMAGE", "AUDIO", "STRING", "FLOAT", "STRING")
    assert getattr(cls, "OUTPUT_NODE", False) is False


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


def test_zero_tolerance_means_one_frame_and_modes_run():
    images, audio, _, fps, _ = bounce("val", 0)
    assert measure(images, audio, fps, 0.0)["result"] == measure(images, audio, fps, 62.5)["result"]
    motion = json.loads(measure(images, audio, fps, mode="motion")["result"][0])
    assert 0.0 <= motion["event_f1"] <= 1.0


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
    with pytest.raises(ValueError, match=r"images / audio: 32 frames do not split into 3 clips"):
        measure(images, {"waveform": audio["waveform"].repeat(3, 1, 1), "sample_rate": 8000})
    with pytest.raises(ValueError, match=r"fps: expected a positive frame rate"):
        measure(images, audio, fps=0.0)
    with pytest.raises(ValueError, match=r"mode: expected one of auto, blobs, motion"):
        measure(images, audio, mode="flow")
