"""bench/ovi_step.py runs (at a tiny size on the CPU) and ends with its machine-readable RESULT line."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench_script

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "ovi_step.py"
KEYS = ["forward_s", "plain_step_s", "synccfg_step_s", "synccfg_over_plain", "peak_full_gib", "peak_forward_full_gib",
        "fp8_forward_s", "peak_fp8_gib", "swap_forward_s", "peak_swap_gib"]


def test_ovi_step_benchmark_runs_tiny_on_the_cpu():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT ")
    values = dict(item.split("=") for item in lines[-1].split()[1:])
    assert list(values) == KEYS
    for key in ("forward_s", "plain_step_s", "synccfg_step_s", "fp8_forward_s", "swap_forward_s"):
        assert 0 < float(values[key]) < 60, key
    ratio = float(values["synccfg_step_s"]) / float(values["plain_step_s"])   # of the printed (rounded) times
    assert abs(float(values["synccfg_over_plain"]) - ratio) < 0.01 * ratio
    assert all(math.isnan(float(values[k])) for k in KEYS if k.startswith("peak"))   # no counter on a CPU
    assert "block swap (1 of 4 blocks resident)" in run.stdout and "6 block copies" in run.stdout


def test_ovi_step_benchmark_refuses_the_real_size_on_a_cpu():
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "--tiny" in run.stderr
