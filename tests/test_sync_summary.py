"""Sync metrics over a set of clips (bouncebench/sync_summary.py, report.mean_se, sync_metrics.own_and_chance_reports):
means with standard errors, chance and margin clip by clip, paired differences, the batch layout ComfyUI passes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from comfyui_syncav.bouncebench.clips import make_clips
from comfyui_syncav.bouncebench.config import STANDARD, clip_seeds, split_seeds
from comfyui_syncav.bouncebench.report import finite_mean, mean_se, paired_difference
from comfyui_syncav.bouncebench.sync_summary import (PAIRED_KEYS, SE_KEYS, clip_set_report, clips_of_batches,
                                                     paired_differences, per_clip_reports, split_clip_batch)
from comfyui_syncav.metrics.sync_metrics import REPORT_KEYS, chance_baseline, own_and_chance_reports, sync_report


@pytest.fixture(scope="module")
def clips():
    """Val clips 0-2 as (frames [32, 32, 32, 3], waveform [1, 16000], fps, rate); each scores event F1 1.0."""
    return [(c.frames, c.waveform, c.fps, c.sample_rate_hz) for c in make_clips(split_seeds("val", 3), STANDARD)]


def muted(clip, from_s: float = 0.0):
    frames, waveform, fps, rate = clip
    waveform = waveform.clone()
    waveform[..., round(from_s * rate):] = 0
    return frames, waveform, fps, rate


# ------------------------------------------------------------------------------------------------ mean and SE

def test_mean_se_is_the_mean_and_sample_sd_over_root_n_of_the_finite_values():
    stats = mean_se([0.2, 0.5, 0.8, None, float("nan")])
    # mean 0.5; deviations -0.3, 0, 0.3: sample variance 0.18 / 2 = 0.09, sd 0.3, SE 0.3 / sqrt(3)
    assert stats.mean == pytest.approx(0.5) and stats.se == pytest.approx(0.3 / math.sqrt(3)) and stats.count == 3
    assert mean_se([0.7]) == (0.7, None, 1)                  # one number: no spread to estimate
    assert mean_se([None, float("inf")]) == (None, None, 0)
    assert finite_mean([0.2, None, 0.8]) == 0.5
    # paired_difference is the same rule on the differences: 0.1, 0.3, 0.5 -> 0.3 ± 0.2 / sqrt(3)
    d = paired_difference({1: 0.0, 2: 0.0, 3: 0.0}, {1: 0.1, 2: 0.3, 3: 0.5})
    assert (d.mean, d.se, d.clips) == (pytest.approx(0.3), pytest.approx(0.2 / math.sqrt(3)), 3)


# ------------------------------------------------------------------------------------------------ per-clip reports

def test_own_and_chance_reports_are_sync_report_of_each_pair(clips):
    own, chance = own_and_chance_reports(clips)
    for i, (frames, waveform, fps, rate) in enumerate(clips):
        assert own[i] == sync_report(frames, waveform, fps, rate)
        assert chance[i] == sync_report(frames, clips[(i + 1) % 3][1], fps, rate)
    assert sum(c["event_f1"] for c in chance) / 3 == pytest.approx(chance_baseline(clips)["event_f1"])
    assert own_and_chance_reports(clips[:1])[1] == []        # one clip: nothing to mismatch


def test_three_clips_give_hand_computed_means_standard_errors_chance_and_margin(clips):
    # clip 1 heard for its first second only: 2 of its 4 impacts (0.27, 0.55 s; 1.43, 1.51 s are silent), every
    # onset matched -> precision 1, recall 1/2, F1 2/3. clip 2 silent: F1 0. Per-clip F1: 1, 2/3, 0.
    three = [clips[0], muted(clips[1], 1.0), muted(clips[2])]
    report = clip_set_report(three)
    assert [c["event_f1"] for c in report["per_clip"]] == pytest.approx([1.0, 2 / 3, 0.0])
    # mean 5/9; deviations 4/9, 1/9, -5/9: sample variance (42/81) / 2 = 7/27, SE sqrt(7/27 / 3) = sqrt(7) / 9
    assert report["event_f1"] == pytest.approx(5 / 9) and report["event_f1_se"] == pytest.approx(math.sqrt(7) / 9)
    assert report["num_clips"] == 3 and list(report)[0] == "summary"
    assert [k for k in report if k in REPORT_KEYS] == list(REPORT_KEYS)
    # a silent clip has no matched event: the offset's mean and SE are over the two clips that have one
    offsets = [c["median_offset_ms"] for c in report["per_clip"]]
    assert offsets[2] is None and report["median_offset_ms"] == pytest.approx((offsets[0] + offsets[1]) / 2)
    assert report["median_offset_ms_se"] == pytest.approx(abs(offsets[0] - offsets[1]) / 2)    # n = 2: |a - b| / 2
    assert all(f"{key}_se" in report for key in SE_KEYS)
    # chance per clip: video i against sound i + 1; margin = F1 - chance, clip by clip and on average
    chance = [c["chance_event_f1"] for c in report["per_clip"]]
    assert chance == pytest.approx([sync_report(three[i][0], three[(i + 1) % 3][1], 16.0, 8000)["event_f1"]
                                    for i in range(3)])
    margins = [f - c for f, c in zip([1.0, 2 / 3, 0.0], chance)]
    assert [c["event_f1_margin"] for c in report["per_clip"]] == pytest.approx(margins)
    assert report["event_f1_margin"] == pytest.approx(sum(margins) / 3)
    assert report["event_f1_margin_se"] == pytest.approx(float(torch.tensor(margins).double().std()) / math.sqrt(3))
    assert report["chance_event_f1"] == pytest.approx(chance_baseline(three)["event_f1"])
    assert report["summary"][1] == f"event F1 0.556 ± {math.sqrt(7) / 9:.3f}"
    assert "(2 of 3 clips have a matched event)" in report["summary"][4]
    json.dumps(report, allow_nan=False)                       # strict JSON: undefined numbers are null


def test_one_clip_is_exactly_sync_report(clips):
    assert clip_set_report(clips[:1]) == sync_report(*clips[0])


# ------------------------------------------------------------------------------------------------ batches

def test_batches_laid_end_to_end_split_into_their_clips(clips):
    frames = torch.cat([clips[0][0], clips[1][0]])                     # [2 * 32, 32, 32, 3]
    waveform = torch.stack([clips[0][1], clips[1][1]])                 # [2, 1, 16000]
    split = split_clip_batch(frames, waveform, 16.0, 8000)
    assert len(split) == 2 and np.array_equal(split[1][0], clips[1][0]) and torch.equal(split[1][1], clips[1][1])
    # a batch of two and a batch of one are the same three clips as three batches of one
    joined = clips_of_batches([frames, clips[2][0]], [waveform, clips[2][1][None]], [16.0], [8000, 8000])
    assert clip_set_report(joined) == clip_set_report(clips)
    with pytest.raises(ValueError, match=r"frames / waveform: 64 frames do not split into 3 clips"):
        split_clip_batch(frames, waveform.repeat(2, 1, 1)[:3], 16.0, 8000)
    with pytest.raises(ValueError, match=r"fps: expected one frame rate, or one per batch \(2\), got 3"):
        clips_of_batches([frames, frames], [waveform, waveform], [16.0] * 3, [8000, 8000])


# ------------------------------------------------------------------------------------------------ paired

def _report(f1, margin, offset_ms):
    """A several-clip report with just the per-clip numbers paired_differences reads."""
    return {"event_f1": sum(f1) / len(f1), "per_clip": [
        {"event_f1": f, "event_f1_margin": m, "median_offset_ms": o} for f, m, o in zip(f1, margin, offset_ms)]}


def test_paired_differences_are_the_mean_and_se_of_per_clip_differences():
    synced = _report([0.8, 0.5, 0.9], [0.5, 0.3, 0.4], [10.0, None, 12.0])
    plain = _report([0.6, 0.5, 0.6], [0.4, 0.2, 0.4], [14.0, 20.0, 12.0])
    paired = paired_differences(synced, json.dumps(plain))          # JSON text, as the node passes it
    assert list(paired) == ["clips", *PAIRED_KEYS] and paired["clips"] == 3
    # F1 differences 0.2, 0, 0.3: mean 1/6; deviations 1/30, -5/30, 4/30: variance (42/900) / 2, SE sqrt(7/900)
    assert paired["event_f1"] == {"mean": pytest.approx(1 / 6), "se": pytest.approx(math.sqrt(7) / 30), "clips": 3}
    # margin differences 0.1, 0.1, 0: mean 1/15; SE = sd / sqrt(3) with sd = sqrt(1/300)
    assert paired["event_f1_margin"]["mean"] == pytest.approx(1 / 15)
    assert paired["event_f1_margin"]["se"] == pytest.approx(math.sqrt(1 / 300) / math.sqrt(3))
    # the offset pairs only where both runs matched an event: -4, 0 -> -2 ± 2
    assert paired["median_offset_ms"] == {"mean": -2.0, "se": 2.0, "clips": 2}


def test_paired_differences_refuse_other_clip_counts_and_non_reports():
    three = _report([0.8, 0.5, 0.9], [0.5, 0.3, 0.4], [10.0, 11.0, 12.0])
    two = _report([0.6, 0.5], [0.4, 0.2], [14.0, 20.0])
    with pytest.raises(ValueError, match=r"compare_to: expected a report on the same 3 clips as this one \(paired "
                                         r"clip by clip\), received one on 2"):
        paired_differences(three, two)
    with pytest.raises(ValueError, match=r"compare_to: expected a sync report .* received \['f1'\]"):
        paired_differences(three, {"f1": 0.5})
    with pytest.raises(ValueError, match=r"compare_to: expected the JSON report of SyncAV Sync Metric, received text "
                                         r"that is not JSON"):
        paired_differences(three, "0.5 +- 0.1, I think")
    # a one-clip report is its own per-clip report; a one-clip pair has a difference and no standard error
    single = {key: 0.5 for key in REPORT_KEYS}
    assert per_clip_reports(single) == [single]
    one = paired_differences({**single, "event_f1": 0.75}, single)
    assert one["event_f1"] == {"mean": 0.25, "se": None, "clips": 1}
    assert one["event_f1_margin"] == {"mean": None, "se": None, "clips": 0}        # one clip has no chance pair


def test_a_report_compared_to_another_run_of_the_same_clips(clips):
    plain = clip_set_report(clips)
    worse = clip_set_report([clips[0], clips[1], muted(clips[2])], compare_to=plain)
    assert worse["paired_difference"]["event_f1"] == {"mean": pytest.approx(-1 / 3), "se": pytest.approx(1 / 3),
                                                      "clips": 3}
    assert worse["summary"][-1].startswith("this minus compare_to, clip by clip: event F1 -0.333 ± 0.333, margin ")
    assert list(worse)[-2:] == ["paired_difference", "per_clip"]
    with pytest.raises(ValueError, match="compare_to: expected a report on the same 2 clips"):
        clip_set_report(clips[:2], compare_to=plain)


def test_clip_seeds_name_index_and_count():
    assert clip_seeds("test", 4, 2) == split_seeds("test", 2, start=4)
    with pytest.raises(ValueError, match=r"index: expected 0\.\.999999 for the val split"):
        clip_seeds("val", 1_000_000, 1)
    with pytest.raises(ValueError, match=r"count: expected 1\.\.1000000 clips from index 0 of the val split, "
                                         r"received 0"):
        clip_seeds("val", 0, 0)
