"""BounceBench evaluation: the report's keys and numbers, the real-clip ceiling, the quality proxies, and the CLI.

Kept small (2 clips, 2 sampling steps on the embedded default, untrained until its weights ship)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from comfyui_syncav.cli import main
from comfyui_syncav.generation.generate import generate_clip
from comfyui_syncav.generation.pipeline import build_embedded_default
from comfyui_syncav.guidance.sync_cfg import SyncCFGGuidance
from comfyui_syncav.bouncebench.audio_proxies import audio_quality
from comfyui_syncav.bouncebench.clips import make_clips
from comfyui_syncav.bouncebench.config import BALL_CLASSES, VARIANTS, split_seeds
from comfyui_syncav.bouncebench.evaluation import RESULT_KEYS, SUMMARY_KEYS, evaluate_bouncebench, score_clip
from comfyui_syncav.bouncebench.video_proxies import count_blobs, video_quality
from comfyui_syncav.metrics.sync_metrics import REPORT_KEYS

CLIPS, STEPS = 2, 2
GUIDANCE = SyncCFGGuidance(text_scale_video=4.0, text_scale_audio=4.0, sync_scale_video=2.0, sync_scale_audio=2.0)


@pytest.fixture(scope="module")
def result():
    pipeline = build_embedded_default()
    return evaluate_bouncebench(pipeline, split="val", seed=0, clips=CLIPS, guidance=GUIDANCE, steps=STEPS,
                                include_real=True, progress=False)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ the report

def test_keys_come_in_the_promised_order(result):
    keys = list(result)
    assert keys[:4] == ["event_f1", "median_offset_ms", "av_align", "xcorr_offset_ms"]
    assert keys[4:9] == ["video_blob_count_ok", "video_colour_error", "video_radius_ratio",
                         "audio_spectral_distance_db", "audio_pitch_error_hz"]
    assert keys[9:11] == ["chance_event_f1", "event_f1_margin"]
    assert keys == list(RESULT_KEYS)
    assert list(result["real"])[:len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert set(result["sync"]) == set(REPORT_KEYS)
    json.dumps(result, allow_nan=False)  # strict JSON: undefined numbers are None, never NaN


def test_settings_seeds_and_per_clip_records(result):
    seeds = split_seeds("val", CLIPS)
    assert result["seeds"] == seeds and result["seed"] == 0 and result["clips"] == CLIPS
    assert result["bench"] == "bouncebench" and result["split"] == "val" and result["variant"] == "standard"
    assert result["steps"] == STEPS and result["solver"] == "unipc" and result["shift"] == 3.0
    assert result["guidance"]["sync_scale_video"] == 2.0 and result["guidance"]["sync_interval"] == [0.0, 1.0]
    assert result["tolerance_ms"] == 62.5
    assert [r["seed"] for r in result["per_clip"]] == seeds
    assert [r["caption"] for r in result["per_clip"]] == [c.caption for c in make_clips(seeds)]
    assert result["chance_pairs"] == CLIPS and result["num_true_impacts"] > 0
    assert finite(result["elapsed_s"]) and result["elapsed_s"] > 0


def test_each_record_scores_the_clip_generate_makes_for_its_seed_and_caption(result):
    pipeline = build_embedded_default()
    for record, real in zip(result["per_clip"], make_clips(result["seeds"])):
        with torch.inference_mode():
            clip = generate_clip(pipeline, real.caption, real.caption, seed=real.seed, steps=STEPS, guidance=GUIDANCE)
        assert record == score_clip(clip.frames[0], clip.waveform[0], clip.fps, clip.sample_rate_hz, real)


def test_summary_is_the_mean_over_clips_and_the_margin_is_over_chance(result):
    for key in ("event_f1", "median_offset_ms", "av_align", "xcorr_offset_ms", "video_blob_count_ok",
                "video_colour_error", "video_radius_ratio", "audio_spectral_distance_db", "audio_pitch_error_hz",
                "num_audio_onsets", "num_visual_events", "num_true_impacts"):
        # undefined for a clip with no ball or no matched event: None, left out of the mean
        values = [r[key] for r in result["per_clip"] if r[key] is not None]
        assert all(finite(v) for v in values), key
        assert result[key] == (pytest.approx(sum(values) / len(values)) if values else None), key
    assert result["chance_event_f1"] == result["chance"]["event_f1"] and result["chance"]["num_pairs"] == CLIPS
    assert result["event_f1_margin"] == pytest.approx(result["event_f1"] - result["chance_event_f1"])
    for key in ("event_f1", "av_align", "video_blob_count_ok", "chance_event_f1"):
        assert 0.0 <= result[key] <= 1.0, key
    print("generated:", {k: result[k] for k in SUMMARY_KEYS})


def test_real_clips_are_the_ceiling(result):
    real = result["real"]
    assert real["event_f1"] >= 0.9
    assert real["event_f1_margin"] > 0.4
    assert real["video_blob_count_ok"] == 1.0
    assert real["video_colour_error"] < 0.01
    assert real["video_radius_ratio"] == pytest.approx(1.0, abs=0.05)
    assert real["audio_spectral_distance_db"] == 0.0              # each real clip against itself
    assert real["audio_pitch_error_hz"] < 3.0
    assert real["clips_with_blobs"] == CLIPS
    print("real:", {k: real[k] for k in SUMMARY_KEYS})


# ------------------------------------------------------------------------------------------------ the proxies

def test_quality_proxies_separate_right_from_wrong():
    clips = make_clips(split_seeds("val", 6))
    a = clips[0]
    b = next(c for c in clips if c.balls[0]["colour"] != a.balls[0]["colour"])
    f0 = BALL_CLASSES[a.balls[0]["colour"]].fundamental_hz
    same = audio_quality(a.waveform, 8000, a.waveform, 8000, [f0])
    other = audio_quality(b.waveform, 8000, a.waveform, 8000, [f0])
    assert same["audio_spectral_distance_db"] == 0.0 and same["audio_pitch_error_hz"] < 3.0
    assert other["audio_spectral_distance_db"] > 5.0 and other["audio_pitch_error_hz"] > 100.0
    assert audio_quality(torch.zeros(1, 16000), 8000, a.waveform, 8000, [f0])["audio_pitch_error_hz"] is None

    right, wrong_colour = video_quality(a.frames, a.balls, 32), video_quality(b.frames, a.balls, 32)
    assert right["video_colour_error"] < 0.01 and wrong_colour["video_colour_error"] > 0.3
    doubled = torch.maximum(a.frames, torch.roll(a.frames, 12, dims=2))   # the ball twice in every frame
    assert (count_blobs(doubled) >= 2).all()
    assert video_quality(doubled, a.balls, 32)["video_blob_count_ok"] < 0.5
    assert video_quality(torch.rand(32, 32, 32, 3), a.balls, 32)["video_blob_count_ok"] < 0.5


def test_two_balls_are_counted_and_paired_by_colour():
    clip = make_clips(split_seeds("val", 1, start=2), VARIANTS["two_balls"])[0]
    quality = video_quality(clip.frames, clip.balls, 32)
    assert quality["balls_tracked"] == 2 and quality["video_colour_error"] < 0.01
    assert quality["video_blob_count_ok"] > 0.8


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="guidance: expected a SyncCFGGuidance"):
        evaluate_bouncebench(None, guidance={"text_scale_video": 4})
    with pytest.raises(ValueError, match="variant: expected one of standard"):
        evaluate_bouncebench(None, guidance=GUIDANCE, variant="huge")
    with pytest.raises(ValueError, match="clips: expected a positive number"):
        evaluate_bouncebench(None, guidance=GUIDANCE, clips=0)


# ------------------------------------------------------------------------------------------------ the CLI

def test_cli_eval_writes_the_json(tmp_path, capsys):
    out = tmp_path / "plain.json"
    rc = main(["eval", "--bench", "bouncebench", "--seed", "0", "--clips", str(CLIPS), "--steps", str(STEPS),
               "--guidance", "plain", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert list(report) == [k for k in RESULT_KEYS if k != "real"]
    assert report["guidance"]["sync_scale_video"] == 1.0 and report["guidance"]["text_scale_video"] == 4.0
    assert report["seeds"] == split_seeds("val", CLIPS) and report["steps"] == STEPS
    printed = capsys.readouterr().out
    assert "margin" in printed and f"wrote {out}" in printed
    assert not [p for p in tmp_path.iterdir() if p.name != "plain.json"]  # no temporary file left


def test_cli_eval_takes_a_sync_scale_per_stream(tmp_path):
    out = tmp_path / "video_only.json"
    rc = main(["eval", "--clips", "1", "--steps", "1", "--guidance", "synccfg", "--sync-scale", "3",
               "--sync-scale-audio", "1", "--json", str(out)])
    assert rc == 0
    guidance = json.loads(out.read_text())["guidance"]
    assert (guidance["sync_scale_video"], guidance["sync_scale_audio"]) == (3.0, 1.0)


def test_cli_eval_rejects_a_missing_lora_and_misplaced_sync_flags(tmp_path, capsys):
    out = tmp_path / "x.json"
    rc = main(["eval", "--bench", "bouncebench", "--clips", "2", "--guidance", "synccfg", "--lora", "dpo.safetensors",
               "--json", str(out)])
    assert rc == 2
    assert "dpo.safetensors: no such file" in capsys.readouterr().err
    rc = main(["eval", "--clips", "2", "--guidance", "plain", "--sync-scale", "3", "--json", str(out)])
    assert rc == 2
    assert "--sync-scale" in capsys.readouterr().err
    rc = main(["eval", "--clips", "2", "--guidance", "plain", "--sync-scale-audio", "3", "--json", str(out)])
    assert rc == 2
    assert "--sync-scale-audio: only apply to --guidance synccfg" in capsys.readouterr().err
    rc = main(["eval", "--clips", "2", "--guidance", "synccfg", "--json", str(tmp_path / "missing" / "x.json")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()
