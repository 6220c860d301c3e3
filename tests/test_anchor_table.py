"""experiments/sync_guidance_table.py's anchor rows, pass counts and paired differences; the per-clip chance numbers
``evaluate_bouncebench`` keeps for them; ``bouncebench.report.paired_difference``."""

import importlib.util
import math
from pathlib import Path

import pytest

from comfyui_syncav.bouncebench.config import STANDARD
from comfyui_syncav.bouncebench.evaluation import evaluate_bouncebench
from comfyui_syncav.bouncebench.report import paired_difference
from comfyui_syncav.generation.pipeline import build_embedded_default
from comfyui_syncav.guidance.sync_cfg import SyncAnchors, SyncCFGGuidance

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "sync_guidance_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("sync_guidance_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pipeline():
    return build_embedded_default()


# ------------------------------------------------------------------------------------------------ paired SE

def test_paired_difference_pairs_by_seed_and_has_the_hand_computed_standard_error():
    base = {1: 0.5, 2: 0.4, 3: 0.7, 4: None}
    other = {3: 0.6, 1: 0.6, 2: 0.6, 4: 0.9, 5: 0.3}     # 4: undefined in base, 5: not in base -> left out
    d = paired_difference(base, other)
    # differences +0.1, +0.2, -0.1: mean 1/15, deviations 1/30, 4/30, -5/30 -> variance (1+16+25)/900/2 = 7/300
    assert d.clips == 3
    assert d.mean == pytest.approx(1 / 15)
    assert d.se == pytest.approx(math.sqrt(7 / 300) / math.sqrt(3))            # 0.08819
    assert d.se == pytest.approx(0.088192, abs=1e-6)
    one = paired_difference({1: 2.0}, {1: 2.5, 2: float("nan")})
    assert one.mean == pytest.approx(0.5) and one.se is None and one.clips == 1
    assert paired_difference({1: None}, {1: 1.0}) is None


def test_row_differences_pair_margins_by_clip(table):
    def result(f1, chance):
        return {"per_clip": [{"seed": s, "event_f1": f, "audio_pitch_error_hz": 3.0 + f} for s, f in zip((7, 8, 9), f1)],
                "chance": {"per_clip_event_f1": chance}}
    base = result([0.5, 0.4, 0.6], [0.3, 0.3, 0.2])        # margins 0.2, 0.1, 0.4
    row = result([0.6, 0.4, 0.8], [0.2, 0.4, 0.3])         # margins 0.4, 0.0, 0.5
    diffs = table.differences(row, base)
    # margin differences +0.2, -0.1, +0.1: mean 0.2/3, deviations 4/30, -5/30, 1/30 -> variance 42/900/2
    assert diffs["event_f1_margin"].mean == pytest.approx(0.2 / 3)
    assert diffs["event_f1_margin"].se == pytest.approx(math.sqrt(42 / 1800 / 3))
    assert diffs["event_f1"].mean == pytest.approx(0.1) and diffs["audio_pitch_error_hz"].mean == pytest.approx(0.1)
    assert diffs["video_colour_error"] is None                      # no clip has the number
    assert table.per_clip_values({"per_clip": base["per_clip"]}, "event_f1_margin") == {}   # no per-clip chance


# ------------------------------------------------------------------------------------------------ rows and cost

def test_rows_name_their_anchors(table):
    assert table.parse_row("sync2") == table.Row(4.0, 2.0, (0.0, 1.0), SyncAnchors.HARMONY)
    assert table.parse_row("sync2_cut").anchors is SyncAnchors.CROSS_MODAL_CUT
    assert table.parse_row("sync2_audio_alone").anchors is SyncAnchors.AUDIO_ALONE
    assert table.parse_row("sync1.5_first_half_cross_modal_cut") == table.Row(4.0, 1.5, (0.0, 0.5),
                                                                                SyncAnchors.CROSS_MODAL_CUT)
    assert table.parse_row("plain") == table.Row(4.0, 1.0) and table.parse_row("no_guidance").text == 1.0
    # --text-scale sets every row's text scale but no_guidance's.
    assert table.parse_row("plain", 2.0) == table.Row(2.0, 1.0) and table.parse_row("no_guidance", 2.0).text == 1.0
    assert table.parse_row("sync1.5_audio_alone", 1.5).text == 1.5
    guidance = table.guidance_of(table.parse_row("sync3_audio_alone"))
    assert guidance == SyncCFGGuidance(4.0, 4.0, 3.0, 3.0, anchors=SyncAnchors.AUDIO_ALONE)
    for bad in ("sync2_muted", "sync", "Plain", "sync2_cut_first_half"):
        with pytest.raises(ValueError, match=f"row '{bad}'"):
            table.parse_row(bad)


def test_passes_per_step_count_full_and_audio_alone_passes(table):
    passes = {name: table.passes_per_step(table.guidance_of(table.parse_row(name)), 25)
              for name in ("no_guidance", "plain", "sync2", "sync2_audio_alone", "sync2_cut", "sync2_first_half")}
    assert passes["no_guidance"] == (1.0, 0.0) and passes["plain"] == (2.0, 0.0)
    assert passes["sync2"] == (4.0, 0.0) and passes["sync2_cut"] == (3.0, 0.0)
    assert passes["sync2_audio_alone"] == (3.0, 1.0)
    assert passes["sync2_first_half"] == (pytest.approx((13 * 4 + 12 * 2) / 25), 0.0)   # steps 0..12 of 25


def test_audio_alone_pass_costs_the_audio_towers_share_of_a_pass(table, pipeline):
    video_shape, audio_shape = pipeline.latent_shapes(STANDARD.seconds, STANDARD.size_px, STANDARD.size_px)
    share = table.audio_alone_share(pipeline.model, video_shape, audio_shape)
    # The embedded default's towers are equally wide and deep; the audio tower has ~1.7x the video's tokens at 2 s
    # but no video tower or cross-modal part: 0.521 of a full pass with its 6 fusion blocks (0.554 with 4: the
    # blocks' share of the work grows with their number). FLOPs are exact counts.
    assert share == pytest.approx(0.521, abs=0.002)


def test_cost_ratio_compares_each_rows_fastest_clip(table):
    timing = {"seconds": {"plain": [2.5, 2.0, 3.0], "sync2": [4.0, 6.0, 3.7], "sync2_cut": [3.0, 5.0, 2.9]}}
    ratios = table.cost_ratios(timing)
    assert ratios == {"plain": 1.0, "sync2": pytest.approx(1.85), "sync2_cut": pytest.approx(1.45)}
    assert table.cost_ratios({"seconds": {"sync2": [1.0]}}) == {}


# ------------------------------------------------------------------------------------------------ per-clip chance

def test_evaluation_keeps_per_clip_chance_whose_mean_is_the_chance_baseline(pipeline):
    guidance = SyncCFGGuidance(text_scale_video=4.0, text_scale_audio=4.0)
    result = evaluate_bouncebench(pipeline, clips=3, steps=2, guidance=guidance, progress=False)
    chance = result["chance"]["per_clip_event_f1"]
    assert len(chance) == 3 and all(0.0 <= c <= 1.0 for c in chance)
    assert sum(chance) / 3 == pytest.approx(result["chance_event_f1"], abs=1e-12)
    margins = [r["event_f1"] - c for r, c in zip(result["per_clip"], chance)]
    assert sum(margins) / 3 == pytest.approx(result["event_f1_margin"], abs=1e-12)


# ------------------------------------------------------------------------------------------------ two runs

COMPARE = SCRIPT.parent / "compare_runs.py"


def _result(f1s, chances, **settings):
    records = [{"seed": 100 + i, "event_f1": f} for i, f in enumerate(f1s)]
    return {"split": "val", "seed": 0, "clips": len(f1s), "variant": "standard", "guidance": {"text": 4},
            "steps": 25, "solver": "unipc", "shift": 3.0, "seeds": [r["seed"] for r in records],
            "per_clip": records, "chance": {"per_clip_event_f1": chances}, "event_f1": sum(f1s) / len(f1s),
            **settings}


@pytest.mark.bench_script
def test_compare_runs_pairs_two_results_by_clip_and_refuses_other_clips(tmp_path):
    import json
    import subprocess
    import sys

    a = _result([0.5, 0.4, 0.7], [0.3, 0.3, 0.3])
    b = _result([0.6, 0.6, 0.6], [0.3, 0.2, 0.4])
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    run = subprocess.run([sys.executable, str(COMPARE), str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                         capture_output=True, text=True, check=True)
    result = dict(item.split("=") for item in run.stdout.strip().splitlines()[-1].split()[1:])
    # F1 differences +0.1, +0.2, -0.1 (mean 1/15, SE sqrt(7/300)/sqrt(3)); margins 0.2, 0.1, 0.4 -> 0.3, 0.4, 0.2
    assert float(result["df1"]) == pytest.approx(1 / 15, abs=1e-4)
    assert float(result["df1_se"]) == pytest.approx(math.sqrt(7 / 300 / 3), abs=1e-4)
    assert float(result["dmargin"]) == pytest.approx((0.1 + 0.3 - 0.2) / 3, abs=1e-4)
    (tmp_path / "c.json").write_text(json.dumps(_result([0.6, 0.6, 0.6], [0.3, 0.2, 0.4], variant="fast")))
    other = subprocess.run([sys.executable, str(COMPARE), str(tmp_path / "a.json"), str(tmp_path / "c.json")],
                           capture_output=True, text=True)
    assert other.returncode == 2 and "variant differ" in other.stderr
