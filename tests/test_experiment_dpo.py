"""experiments/dpo_experiment.py: the quality check pairs clips by seed and gets the signs right; run names parse."""

import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench_script

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "dpo_experiment.py"


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location("dpo_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clip(seed, pitch, colour, radius, blobs=0.5):
    return {"seed": seed, "event_f1": 0.5, "median_offset_ms": 20.0, "video_blob_count_ok": blobs,
            "video_colour_error": colour, "video_radius_ratio": radius, "audio_pitch_error_hz": pitch,
            "audio_spectral_distance_db": None}


def test_quality_change_is_paired_by_seed_and_signed_worse_negative(experiment):
    base = {"plain": {"per_clip": [clip(1, 2.0, 0.10, 1.00), clip(2, 4.0, 0.10, 1.10), clip(3, 6.0, 0.10, None)]}}
    # Listed in another order; seed 3 has no radius in either; pitch up by 0.4 and 0.8 Hz (worse).
    run = {"plain": {"per_clip": [clip(2, 4.8, 0.05, 0.90), clip(1, 2.4, 0.05, 0.94), clip(3, 6.0, 0.05, None)]}}
    changes = experiment.quality_change(run, base, "plain")
    pitch, pitch_se = changes["audio_pitch_error_hz"]
    assert pitch == pytest.approx(-(0.4 + 0.8 + 0.0) / 3 / 4.0)         # mean difference over the base mean
    assert pitch_se == pytest.approx(0.4 / math.sqrt(3) / 4.0)            # std of (0.4, 0.8, 0) / sqrt(3) / 4
    assert changes["video_colour_error"][0] == pytest.approx(0.5)          # error halved: better
    # Size: |r - 1| goes 0.00 -> 0.06 and 0.10 -> 0.10, i.e. +0.03 real radii worse on average.
    assert changes["video_radius_ratio"][0] == pytest.approx(-0.03)
    assert changes["video_blob_count_ok"][0] == pytest.approx(0.0)
    assert "audio_spectral_distance_db" not in changes                    # undefined everywhere
    assert experiment.fmt_change(changes["video_colour_error"]) == "+50.0 % ± 0.0"


def test_quality_change_of_results_without_per_clip_numbers_uses_the_means(experiment):
    base = {"plain": {"audio_pitch_error_hz": 3.0, "video_radius_ratio": 1.01, "video_blob_count_ok": 0.2}}
    run = {"plain": {"audio_pitch_error_hz": 3.3, "video_radius_ratio": 0.92, "video_blob_count_ok": 0.25}}
    changes = experiment.quality_change(run, base, "plain")
    assert changes["audio_pitch_error_hz"] == (pytest.approx(-0.1), None)
    assert changes["video_radius_ratio"][0] == pytest.approx(-(0.08 - 0.01))
    assert changes["video_blob_count_ok"][0] == pytest.approx(0.25)


def test_run_names_set_the_training_config_and_unknown_runs_are_refused(experiment):
    class Args:
        steps, batch_size, lr, rank, seed, noise_shift = 8, 2, 1e-4, 4, 0, 3.0

    config = experiment.training_config("dpo_beta4000", Args)
    assert (config.dpo.beta_video, config.dpo.beta_audio, config.dpo.noise.shift) == (4000.0, 4000.0, 3.0)
    assert config.dpo.noise.driven_fraction == 0.0 and config.lora.towers == ("video", "audio")
    config = experiment.training_config("dpo_audiotower_beta12000_driven0.25", Args)
    assert (config.dpo.beta_audio, config.dpo.noise.driven_fraction, config.lora.towers) == (12000.0, 0.25,
                                                                                             ("audio",))
    config = experiment.training_config("dpo_only_shift_sft", Args)
    assert config.families == ("shift",) and config.dpo.sft_weight == 1.0 and config.objective == "dpo"
    assert experiment.training_config("sft", Args).objective == "sft"
    assert experiment.training_config("dpo_nocurriculum", Args).curriculum_mode == "none"
    for bad in ("dpo_fancy", "dpo_betax", "dpo_beta0", "dpo_driven1.5", "dpo_only_nothing", "dpo_beta1_beta2",
                "dpo_bothtower", "sft_beta3", "base"):
        assert experiment.parse_run(bad) is None, bad
        with pytest.raises(ValueError, match="unknown run"):
            experiment.training_config(bad, Args)
