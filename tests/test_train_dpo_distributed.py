"""``torchrun -m comfyui_syncav train-dpo``: one run over several processes (gloo on the CPU).

The LoRA of two processes equals the one-process LoRA of the same global batch (measured max difference 3.9e-7 on
values up to 2: summation order only); a run stopped on two processes finishes on one; a killed rank stops the
others, which save and exit, instead of hanging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from comfyui_syncav.files.safetensors_io import read_header
from comfyui_syncav.runtime.lora import load_lora

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

TOLERANCE = 1e-5          # absolute, on LoRA factors of magnitude up to ~2 (measured: 3.9e-7)
RUN = ["--batch-size", "2", "--rank", "2"]


def command(out: Path, steps: int, processes: int, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    return launcher + ["-m", "comfyui_syncav", "train-dpo", "--steps", str(steps), "--out", str(out), *RUN, *extra]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SYNCAV_DIST_TIMEOUT_S": "60"}


def run(out: Path, steps: int, processes: int, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command(out, steps, processes, *extra), capture_output=True, text=True, timeout=300,
                          env=environment())
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def max_difference(a: Path, b: Path) -> float:
    first, _ = load_lora(a / "lora.safetensors")
    second, _ = load_lora(b / "lora.safetensors")
    assert first.keys() == second.keys()
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def checkpoint_step(out: Path) -> int:
    path = out / "train_state.safetensors"
    return int(read_header(path)[1]["step"]) if path.is_file() else 0


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    run(out, 4, 1)
    return out


def test_two_processes_train_the_one_process_lora(one_process, tmp_path):
    out = tmp_path / "two"
    done = run(out, 4, 2)
    assert "trained 4 steps (dpo) on 2 processes" in done.stdout
    assert max_difference(one_process, out) < TOLERANCE
    assert checkpoint_step(out) == 4
    # the history is the batch's too: the loss summed over the ranks, the other logs averaged over their rows
    import json

    one = json.loads((one_process / "history.json").read_text())
    two = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in one] == [h["step"] for h in two]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 1e-3 * max(1.0, abs(a[k])) for k in a if k != "seconds"), (a, b)


def test_the_frozen_base_sharded_over_two_processes_trains_the_same_lora(one_process, tmp_path):
    """FSDP2 on the frozen base (each rank holds half of it and gathers a layer for its forward and recomputation):
    the adapters, whole on every rank, train as on one process."""
    import re

    out = tmp_path / "sharded"
    done = run(out, 4, 2, "--shard-base", "--gradient-checkpointing")
    assert "frozen base sharded" in done.stdout
    held, whole = (int(n) for n in re.search(r"sharded over 2 ranks: (\d+) of (\d+) parameters on rank 0",
                                              done.stdout + done.stderr).groups())
    assert 0.45 * whole < held < 0.55 * whole                    # measured: 1,658,800 of 3,310,944
    assert max_difference(one_process, out) < TOLERANCE


def start(out: Path, steps: int, processes: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(command(out, steps, processes, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=environment(), start_new_session=True)


def wait_for_step(out: Path, process: subprocess.Popen, step: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while checkpoint_step(out) < step:
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the run made no checkpoint in time"
        time.sleep(0.05)


def test_a_run_stopped_on_two_processes_finishes_on_one(tmp_path):
    steps = 10
    straight = tmp_path / "straight"
    run(straight, steps, 1)
    out = tmp_path / "resumed"
    process = start(out, steps, 2, "--save-every", "1")
    wait_for_step(out, process, 2)
    os.killpg(process.pid, signal.SIGTERM)          # as a scheduler stops a job: every process gets it
    process.communicate(timeout=120)
    stopped_at = checkpoint_step(out)
    assert 2 <= stopped_at < steps
    run(out, steps, 1)
    assert checkpoint_step(out) == steps
    assert max_difference(straight, out) < TOLERANCE


def rank_pids(out: Path) -> dict[int, int]:
    """{rank: pid} of the worker processes of the run writing to ``out``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if str(out).encode() in argv and b"train-dpo" in argv and b"RANK" in environ and b"--standalone" not in argv:
            found[int(environ[b"RANK"])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the ranks' processes through /proc")
def test_a_killed_rank_stops_the_others_with_a_message_instead_of_a_hang(tmp_path):
    out = tmp_path / "run"
    process = start(out, 10_000, 2, "--save-every", "1")
    wait_for_step(out, process, 2)
    pids = rank_pids(out)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[1], signal.SIGKILL)
    started = time.monotonic()
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and time.monotonic() - started < 60
    # rank 0 stopped with a line of its own (stopped by the launcher, or its collective failed), after saving
    assert "interrupted (stopped by signal SIGTERM)" in output or "another process of the run stopped" in output
    assert "rank      : 1" in output and "SIGKILL" in output          # the launcher names the rank that died
    step = checkpoint_step(out)
    assert step >= 2
    load_lora(out / "lora.safetensors")                               # every file it left loads


def test_scored_pairs_sampled_on_two_processes_are_the_one_process_pairs(tmp_path):
    """Each rank samples every other (caption, k); the gathered pairs are the same as one process's, bit for bit
    (MKL's reproducible mode makes a row independent of its batch), and so is training on them, within tolerance."""
    from comfyui_syncav.files.safetensors_io import load_tensors

    scored = ("--pairs", "scored", "--prompts", "3")
    one, two = tmp_path / "one", tmp_path / "two"
    run(one, 1, 1, *scored)
    done = run(two, 1, 2, *scored)
    assert "scored pairs from 3 captions" in done.stdout
    first = load_tensors(one / "scored_pairs" / "pairs.safetensors")
    second = load_tensors(two / "scored_pairs" / "pairs.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert max_difference(one, two) < TOLERANCE


def test_a_batch_smaller_than_the_processes_is_refused_by_its_flag(tmp_path):
    done = subprocess.run(command(tmp_path / "run", 2, 2) + ["--batch-size", "1"], capture_output=True, text=True,
                          timeout=300, env=environment())
    assert done.returncode != 0
    assert "error: --batch-size: 1 rows cannot be shared by 2 processes" in done.stderr
    assert not (tmp_path / "run" / "train_state.safetensors").exists()
