"""bench/ovi_train_step.py runs (at a tiny size on the CPU) and ends with its machine-readable RESULT line."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench_script

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "ovi_train_step.py"
TIMES = [f"{objective}_{base}" for base in ("bf16", "fp8", "fp8_swap") for objective in ("dpo", "sft")]
KEYS = [f"{name}{suffix}" for name in TIMES for suffix in ("_s", "_peak_gib")] + [
    f"{objective}_{base}_over_bf16" for objective in ("dpo", "sft") for base in ("fp8", "fp8_swap")]


def run(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def result_line(stdout: str) -> dict[str, float]:
    lines = stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT ")
    return {k: float(v) for k, v in (item.split("=") for item in lines[-1].split()[1:])}


def test_ovi_train_step_benchmark_runs_tiny_on_the_cpu():
    done = run("--tiny", "--device", "cpu", "--repeats", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    values = result_line(done.stdout)
    assert list(values) == KEYS
    for name in TIMES:
        assert 0 < values[f"{name}_s"] < 60, name
        assert math.isnan(values[f"{name}_peak_gib"])           # no memory counter on a CPU
    for objective in ("dpo", "sft"):
        for base in ("fp8", "fp8_swap"):
            ratio = values[f"{objective}_{base}_s"] / values[f"{objective}_bf16_s"]   # of the printed times
            assert abs(values[f"{objective}_{base}_over_bf16"] - ratio) < 0.01 * ratio
    # 3 swapped blocks: DPO brings each in for the reference pass, the policy pass and the backward; SFT twice.
    assert "dpo step, fp8_swap base" in done.stdout and "9 block copies a step (1 of 4 blocks resident)" in done.stdout
    assert "6 block copies a step (1 of 4 blocks resident)" in done.stdout


def test_ovi_train_step_benchmark_runs_only_what_is_asked():
    done = run("--tiny", "--device", "cpu", "--repeats", "1", "--only", "dpo_fp8_swap", "--blocks-on-gpu", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(result_line(done.stdout)) == ["dpo_fp8_swap_s", "dpo_fp8_swap_peak_gib"]
    assert "6 block copies a step (2 of 4 blocks resident)" in done.stdout


@pytest.mark.parametrize("args, message", [
    (("--device", "cpu"), "--tiny"),
    (("--tiny", "--device", "cpu", "--only", "dpo_fp16"), "--only: expected measurements"),
    (("--tiny", "--device", "cpu", "--blocks-on-gpu", "-1"), "--blocks-on-gpu: expected a whole number >= 0"),
])
def test_ovi_train_step_benchmark_refuses_bad_arguments(args, message):
    done = run(*args, timeout=120)
    assert done.returncode == 2 and message in done.stderr
