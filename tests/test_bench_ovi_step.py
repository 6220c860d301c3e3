"""bench/ovi_step.py runs (at a tiny size on the CPU) and ends with its machine-readable RESULT line."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench_script

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "ovi_step.py"
KEYS = ["forward_s", "plain_step_s", "synccfg_step_s", "synccfg_over_plain", "audio_alone_step_s",
        "audio_alone_over_plain", "cut_step_s", "cut_over_plain", "peak_full_gib", "peak_forward_full_gib", "compile_s",
        "compiled_forward_s", "compiled_over_eager", "compiled_step_s", "fp8_forward_s", "peak_fp8_gib",
        "fp8_compute_forward_s", "fp8_compute_rel_err", "fp8_compute_over_bf16", "swap_forward_s", "peak_swap_gib",
        "gen_step_s", "peak_gen_gib", "est_50_steps_s"]


def test_ovi_step_benchmark_runs_tiny_on_the_cpu():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT ")
    values = dict(item.split("=") for item in lines[-1].split()[1:])
    assert list(values) == KEYS
    for key in ("forward_s", "plain_step_s", "synccfg_step_s", "audio_alone_step_s", "cut_step_s",
                "compiled_forward_s", "compiled_step_s", "fp8_forward_s", "fp8_compute_forward_s", "swap_forward_s",
                "gen_step_s"):
        assert 0 < float(values[key]) < 60, key
    assert 0 < float(values["compile_s"]) < 240
    # fp8 rounding of random weights: a few percent off the bf16 forward, not garbage.
    assert 0 < float(values["fp8_compute_rel_err"]) < 0.2
    assert "regional compile (aot_eager)" in run.stdout and "relative difference to eager 0.00e+00" in run.stdout
    ratio = float(values["synccfg_step_s"]) / float(values["plain_step_s"])   # of the printed (rounded) times
    assert abs(float(values["synccfg_over_plain"]) - ratio) < 0.01 * ratio
    assert all(math.isnan(float(values[k])) for k in KEYS if k.startswith("peak"))   # no counter on a CPU
    assert "block swap (1 of 4 blocks resident)" in run.stdout and "6 block copies" in run.stdout


def test_ovi_step_benchmark_refuses_the_real_size_on_a_cpu():
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "--tiny" in run.stderr
