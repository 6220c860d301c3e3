"""SyncAV Sync Metric and SyncAV BounceBench Clip, run as plain Python (no ComfyUI), under inference mode as
ComfyUI runs nodes. The generic contract test in test_nodes.py covers their declarations; here every choice they
offer is run.

BounceBench Clip's outputs are ComfyUI output lists (one item per clip) and Sync Metric takes its inputs as whole
lists (``is_input_list``), so the helpers pass and take lists the way ComfyUI's executor does."""

from __future__ import annotations

import json

import pytest
import torch

from comfy_nodes import NODE_CLASSES, info, node, options
from comfyui_syncav.bouncebench.clips import make_clip
from comfyui_syncav.bouncebench.config import VARIANTS, split_seeds
from comfyui_syncav.bouncebench.sync_summary import clip_set_report
from comfyui_syncav.metrics.sync_metrics import REPORT_KEYS, chance_baseline, sync_report

FPS = 16.0


def bounce_clips(split="val", index=0, variant="standard", count=1):
    """BounceBench Clip's output lists: (images, audio, captions, fps, ground truths, seeds), one item per clip."""
    with torch.inference_mode():
        return node("SyncAVBounceBench").make(split, index, variant, count)


def bounce(split="val", index=0, variant="standard"):
    """One clip's outputs (the only item of each list): images, audio, caption, fps, ground_truth, seed."""
    outputs = bounce_clips(split, index, variant, 1)
    assert all(isinstance(values, list) and len(values) == 1 for values in outputs)
    return tuple(values[0] for values in outputs)


def _items(value):
    return value if isinstance(value, list) else [value]


def measure(images, audio, fps=FPS, tolerance_ms=62.5, mode="auto", compare_to=None):
    """Sync Metric as ComfyUI calls it: every input a list (one clip or batch per item; a widget a list of one)."""
    optional = {} if compare_to is None else {"compare_to": _items(compare_to)}
    with torch.inference_mode():
        return node("SyncAVSyncMetric").measure(_items(images), _items(audio), _items(fps), [tolerance_ms], [mode],
                                                **optional)


def silenced(audio, start_s=0.0):
    """The track with everything from ``start_s`` on muted."""
    waveform = audio["waveform"].clone()
    waveform[..., round(start_s * audio["sample_rate"]):] = 0
    return {"waveform": waveform, "sample_rate": audio["sample_rate"]}


# ------------------------------------------------------------------------------------------------ choices

def test_every_split_and_variant_choice_makes_its_clip():
    for split in options("SyncAVBounceBench", "split"):
        for variant in options("SyncAVBounceBench", "variant"):
            images, audio, caption, fps, truth_json, seed = bounce(split, 0, variant)
            truth = json.loads(truth_json)
            low, high = VARIANTS[variant].num_balls
            assert truth["config"] == variant and low <= len(truth["balls"]) <= high, (split, variant)
            assert truth["seed"] == seed == split_seeds(split, 1)[0]          # index 0 of that split
            assert images.shape[0] == round(truth["seconds"] * fps)
            assert audio["waveform"].shape[-1] == round(truth["seconds"] * audio["sample_rate"])
            assert caption.count(" ball") == len(truth["balls"])
    assert not torch.equal(bounce("train", 0)[0], bounce("val", 0)[0])       # the splits hold other clips


def test_every_mode_choice_runs_and_auto_reads_blobs_on_a_plain_background():
    images, audio, _, fps, _, _ = bounce("val", 0)
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
    images, audio, _, fps, _, _ = bounce("val", 0)
    shift = round(1.5 / fps * audio["sample_rate"])                      # 93.75 ms late: one and a half frames
    late = {"waveform": torch.roll(audio["waveform"], shift, dims=-1), "sample_rate": audio["sample_rate"]}
    assert measure(images, late, fps, tolerance_ms=62.5)["result"][1] == 0.0
    report = json.loads(measure(images, late, fps, tolerance_ms=100.0)["result"][0])
    assert report["event_f1"] == 1.0 and report["median_offset_ms"] == pytest.approx(93.75, abs=2)


# ------------------------------------------------------------------------------------------------ BounceBench node

def test_bouncebench_node_gives_the_library_clip():
    images, audio, caption, fps, truth_json, seed = bounce("val", 3, "two_balls")
    clip = make_clip(split_seeds("val", 1, start=3)[0], VARIANTS["two_balls"])
    assert images.shape == (32, 32, 32, 3) and images.dtype == torch.float32
    assert torch.equal(images, clip.frames)
    assert set(audio) == {"waveform", "sample_rate"} and audio["sample_rate"] == 8000
    assert audio["waveform"].shape == (1, 1, 16000) and torch.equal(audio["waveform"][0], clip.waveform)
    assert caption == clip.caption and " and " in caption
    assert fps == FPS and isinstance(fps, float)
    truth = json.loads(truth_json)
    assert truth["seed"] == clip.seed == seed and isinstance(seed, int) and truth["config"] == "two_balls"
    assert [i["time_s"] for i in truth["impacts"]] == clip.impact_times_s


def test_bouncebench_node_rejects_an_index_outside_the_split():
    with pytest.raises(ValueError, match=r"index: expected 0\.\.999999 for the val split"):
        bounce("val", 1_000_000)


# ------------------------------------------------------------------------------------------------ Sync Metric node

def test_bouncebench_clip_through_the_metric_scores_high():
    images, audio, _, fps, _, _ = bounce("val", 0)
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
    images, audio, _, fps, _, _ = bounce("val", 0)
    aligned = measure(images, audio, fps)["result"][1]
    shift = round(4 / fps * audio["sample_rate"])                        # 250 ms
    rolled = {"waveform": torch.roll(audio["waveform"], shift, dims=-1), "sample_rate": audio["sample_rate"]}
    text, f1 = measure(images, rolled, fps)["result"]
    report = json.loads(text)
    assert f1 < aligned - 0.3
    assert report["xcorr_offset_ms"] == pytest.approx(250, abs=20)      # positive: audio late
    print(f"rolled by 4 frames: F1 {f1:.3f} (aligned {aligned:.3f}), xcorr {report['xcorr_offset_ms']:+.0f} ms")


def test_zero_tolerance_means_one_frame():
    images, audio, _, fps, _, _ = bounce("val", 0)
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
    images, audio, _, fps, _, _ = bounce("val", 0)
    silent = {"waveform": torch.zeros_like(audio["waveform"]), "sample_rate": 8000}
    text, f1 = measure(images, silent, fps)["result"]
    report = json.loads(text)
    assert f1 == 0.0 and report["median_offset_ms"] is None and report["xcorr_offset_ms"] is None


def test_bad_inputs_give_clear_errors():
    images, audio, _, fps, _, _ = bounce("val", 0)
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


# ------------------------------------------------------------------------------------------------ several clips

def test_bouncebench_count_gives_lists_of_consecutive_clips_with_their_seeds():
    images, audio, captions, fps, truths, seeds = bounce_clips("val", 5, "standard", 3)
    assert seeds == split_seeds("val", 3, start=5) == [1_000_000_005, 1_000_000_006, 1_000_000_007]
    assert all(isinstance(seed, int) for seed in seeds)
    for k, seed in enumerate(seeds):
        clip = make_clip(seed, VARIANTS["standard"])
        assert torch.equal(images[k], clip.frames) and torch.equal(audio[k]["waveform"][0], clip.waveform)
        assert audio[k]["sample_rate"] == 8000 and captions[k] == clip.caption and fps[k] == FPS
        assert json.loads(truths[k])["seed"] == seed
    # ComfyUI runs every node fed by these outputs once per clip; count 1 is a list of one, the same to a graph
    assert info("SyncAVBounceBench")["output_is_list"] == [True] * 6
    assert info("SyncAVBounceBench")["output_name"][-1] == "seed"
    assert info("SyncAVBounceBench")["input_order"]["required"] == ["split", "index", "variant", "count"]
    with pytest.raises(ValueError, match=r"count: expected 1\.\.3 clips from index 999997 of the val split, "
                                         r"received 4"):
        bounce_clips("val", 999_997, "standard", 4)


def test_sync_metric_takes_whole_lists_and_reports_means_with_standard_errors_chance_and_margin():
    images, audio, _, fps, _, _ = bounce_clips("val", 0, "standard", 3)
    assert NODE_CLASSES["SyncAVSyncMetric"].INPUT_IS_LIST is True
    # clip 1 keeps only its first second of sound: every onset heard has its impact (precision 1), half the
    # impacts are silent, F1 = 2 R / (1 + R) with R the impacts heard over all impacts
    truth = json.loads(bounce_clips("val", 1)[4][0])
    heard = sum(1 for impact in truth["impacts"] if impact["time_s"] < 1.0) / len(truth["impacts"])
    audio[1] = silenced(audio[1], start_s=1.0)
    out = measure(images, audio, fps)
    text, f1 = out["result"]
    report = json.loads(text)
    assert out["ui"]["text"] == [text] and "±" in text                     # readable in Preview Any
    assert report["num_clips"] == 3 and len(report["per_clip"]) == 3
    per_clip_f1 = [clip["event_f1"] for clip in report["per_clip"]]
    assert heard == 0.5 and per_clip_f1 == pytest.approx([1.0, 2 * heard / (1 + heard), 1.0])   # 1, 2/3, 1
    # mean 8/9; deviations 1/9, -2/9, 1/9: sample variance (6/81) / 2 = 1/27, standard error sqrt(1/27 / 3) = 1/9
    assert f1 == report["event_f1"] == pytest.approx(8 / 9)
    assert report["event_f1_se"] == pytest.approx(1 / 9)
    # chance: clip i's video against clip i + 1's sound, as sync_report scores that pair; the margin is F1 - chance
    for i, clip in enumerate(report["per_clip"]):
        mismatched = sync_report(images[i], audio[(i + 1) % 3]["waveform"][0], FPS, 8000, 0.0625)
        assert clip["chance_event_f1"] == pytest.approx(mismatched["event_f1"])
        assert clip["event_f1_margin"] == pytest.approx(clip["event_f1"] - clip["chance_event_f1"])
    clips = [(images[i], audio[i]["waveform"][0], FPS, 8000) for i in range(3)]
    assert report["chance_event_f1"] == pytest.approx(chance_baseline(clips, 0.0625)["event_f1"])
    assert report["event_f1_margin"] == pytest.approx(report["event_f1"] - report["chance_event_f1"])
    assert report == clip_set_report(clips, 0.0625)                       # the node only translates
    assert report["summary"][1] == f"event F1 {report['event_f1']:.3f} ± {report['event_f1_se']:.3f}"


def test_sync_metric_compare_to_reports_paired_differences_clip_by_clip():
    images, audio, _, fps, _, _ = bounce_clips("val", 0, "standard", 3)
    base_text, _ = measure(images, audio, fps)["result"]
    worse = list(audio)
    worse[2] = silenced(audio[2])                                          # clip 2 silent: its F1 1 -> 0
    text, _ = measure(images, worse, fps, compare_to=base_text)["result"]
    paired = json.loads(text)["paired_difference"]
    assert paired["clips"] == 3
    # per-clip F1 differences 0, 0, -1: mean -1/3, standard error sd / sqrt(3) = (1 / sqrt(3)) / sqrt(3) = 1/3
    assert paired["event_f1"] == {"mean": pytest.approx(-1 / 3), "se": pytest.approx(1 / 3), "clips": 3}
    assert paired["median_offset_ms"]["clips"] == 2                       # a silent clip has no matched event
    base, this = json.loads(base_text)["per_clip"], json.loads(text)["per_clip"]
    margins = [b["event_f1_margin"] for b in base], [t["event_f1_margin"] for t in this]
    diffs = torch.tensor(margins[1], dtype=torch.float64) - torch.tensor(margins[0], dtype=torch.float64)
    assert paired["event_f1_margin"]["mean"] == pytest.approx(float(diffs.mean()))
    assert paired["event_f1_margin"]["se"] == pytest.approx(float(diffs.std() / 3 ** 0.5))
    assert "this minus compare_to, clip by clip: event F1 -0.333 ± 0.333" in json.loads(text)["summary"][-1]
    # one clip against one clip: the difference, no standard error; the report stays sync_report's otherwise
    one = json.loads(measure(images[2], worse[2], fps[2], compare_to=measure(images[2], audio[2])["result"][0])
                     ["result"][0])
    assert list(one) == list(REPORT_KEYS) + ["paired_difference"]
    assert one["paired_difference"]["event_f1"] == {"mean": -1.0, "se": None, "clips": 1}
    with pytest.raises(ValueError, match=r"compare_to: expected a report on the same 2 clips as this one .*"
                                         r"received one on 3"):
        measure(images[:2], audio[:2], fps[:2], compare_to=base_text)
    with pytest.raises(ValueError, match=r"compare_to: expected the JSON report of SyncAV Sync Metric"):
        measure(images, audio, fps, compare_to="F1 was 0.7")


def test_sync_metric_lists_pair_each_clip_with_its_own_track_and_rate():
    images, audio, _, fps, _, _ = bounce_clips("val", 0, "standard", 2)
    # a list of per-clip rates (as Decode gives one per clip) and a single widget rate score alike
    assert measure(images, audio, fps)["result"] == measure(images, audio, [FPS])["result"]
    with pytest.raises(ValueError, match=r"frames / waveform: expected one audio track batch per frame batch, got 2 "
                                         r"frame batches and 1 audio batches"):
        measure(images, audio[:1], fps)
    with pytest.raises(ValueError, match=r"tolerance_ms: expected one value for all clips"):
        with torch.inference_mode():
            node("SyncAVSyncMetric").measure(images, audio, fps, [62.5, 100.0], ["auto"])
