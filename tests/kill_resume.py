"""Kill -9 a real training process at random moments, resume it each time, and compare with a straight run.

    python tests/kill_resume.py --kills 20 [--trainer dpo|default] [--steps N] [--seed S] [--keep DIR]

A training process (the DPO trainer on the embedded default, or ``train-default``'s trainer on a small batch, both
saving every step) runs once straight to the end. Then the same run is started in another folder and killed with
SIGKILL ``--kills`` times, in turn at a random moment of start-up, at a random moment within the first steps, and as
soon as a save after the first step is seen in progress (its temporary file appears). After every kill the script checks that what is on disk
loads: the training checkpoint (with its optimizer and EMA state), the LoRA and the LoRA published beside it (DPO),
and that the published LoRA is never behind the checkpoint by more than one save. Each time the same command is
started again and resumes. After the last kill it runs to the end, and the finished weights must equal the straight
run's bit for bit (the README's reproducibility contract: same machine, same threads). The last line:

    RESULT kills=K during_save=S loads_ok=L resumes=R identical=1 max_abs_diff=0 seconds=T

Exit code 0 when every check held. ``tests/test_kill_resume.py`` runs a short version (3 kills) in the test suite.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKPOINT = "train_state.safetensors"
PUBLISHED = "published_lora.safetensors"
FINAL_FILES = {"dpo": "lora.safetensors", "default": "embedded_default.safetensors"}


# ---- the training process -------------------------------------------------------------------------------------

def child(trainer: str, out_dir: Path, steps: int, save_every: int) -> None:
    """The process that gets killed: trains, saving every step, and prints each completed step."""
    import comfyui_syncav  # noqa: F401  - switches MKL's reproducible mode on before anything computes

    def report(step: int, logs: dict) -> None:
        print(f"step {step}", flush=True)

    if trainer == "dpo":
        from comfyui_syncav.runtime.lora import LoraSpec
        from comfyui_syncav.generation.pipeline import build_embedded_default
        from comfyui_syncav.train.dpo_training import DPOTrainingConfig, train_dpo

        config = DPOTrainingConfig(steps=steps, batch_size=2, lr=1e-3, lora=LoraSpec(rank=4, alpha=4),
                                   save_every=save_every, log_every=1, warmup_steps=2, seed=3)
        train_dpo(build_embedded_default(), out_dir, config, callback=report, progress=False,
                  publish_lora_to=out_dir / PUBLISHED)
    else:
        import dataclasses

        from comfyui_syncav.train.embedded_training import EmbeddedRecipe, train_embedded_default
        from comfyui_syncav.train.loop import TrainConfig

        recipe = dataclasses.replace(EmbeddedRecipe(), batch_size=4, train=TrainConfig(
            steps=steps, lr=1e-3, warmup_steps=2, ema_decay=0.99, save_every=save_every, log_every=1, seed=3))
        train_embedded_default(out_dir, recipe, progress=False, callback=report)


# ---- checks ---------------------------------------------------------------------------------------------------

def load_everything(out_dir: Path) -> dict[str, int]:
    """Load what a resume or a user would load; returns the steps the files hold (raises if anything fails)."""
    from comfyui_syncav.runtime.lora import load_lora
    from comfyui_syncav.files.safetensors_io import load_tensors, read_header
    from comfyui_syncav.train.loop import STATE_FORMAT

    steps = {}
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists():
        _, metadata = read_header(checkpoint)
        assert metadata.get("format") == STATE_FORMAT, metadata.get("format")
        tensors = load_tensors(checkpoint)
        assert any(k.startswith("optim.") for k in tensors) and any(k.startswith("param.") for k in tensors)
        steps["checkpoint"] = int(metadata["step"])
    for name in (FINAL_FILES["dpo"], PUBLISHED):
        if (out_dir / name).exists():
            _, metadata = load_lora(out_dir / name)
            steps[name] = int(metadata["step"])
    return steps


def temporaries(out_dir: Path) -> list[Path]:
    """Temporary files of atomic writes (hidden, beside their target): a save is in progress, or was killed."""
    return [p for p in out_dir.glob(".*") if p.is_file()] if out_dir.is_dir() else []


def final_tensors(trainer: str, out_dir: Path) -> dict:
    from comfyui_syncav.files.safetensors_io import load_tensors

    return load_tensors(out_dir / FINAL_FILES[trainer])


# ---- the driver -----------------------------------------------------------------------------------------------

def start(trainer: str, out_dir: Path, steps: int, save_every: int = 1) -> subprocess.Popen:
    """The training process, saving every ``save_every`` steps (the kills use 1: every step is a save)."""
    return subprocess.Popen([sys.executable, __file__, "--child", "--trainer", trainer, "--steps", str(steps),
                             "--save-every", str(save_every), str(out_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, what: str) -> float:
    """Wait for the process to end well; returns the seconds from now to its first completed step."""
    started = time.monotonic()
    first_step_s = None
    for line in process.stdout:
        if first_step_s is None and line.startswith("step "):
            first_step_s = time.monotonic() - started
    err = process.stderr.read()
    process.wait(timeout=600)
    if process.returncode != 0:
        raise SystemExit(f"{what}: the training process failed (exit {process.returncode}):\n{err[-3000:]}")
    return first_step_s or 0.0


def wait_for_a_step(process: subprocess.Popen) -> None:
    """Read the process's output until it reports a completed step (or ends)."""
    for line in process.stdout:
        if line.startswith("step "):
            return


def kill_during_save(process: subprocess.Popen, out_dir: Path, deadline_s: float) -> None:
    """SIGKILL as soon as a temporary file of a save shows up (or at the deadline)."""
    before = set(temporaries(out_dir))
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and process.poll() is None:
        if set(temporaries(out_dir)) - before:
            break
        time.sleep(0.0005)


def run(kills: int, trainer: str, steps: int, seed: int, work: Path) -> dict:
    import torch

    rng = random.Random(seed)
    began = time.monotonic()
    straight_dir, killed_dir = work / "straight", work / "killed"
    started = time.monotonic()
    start_up_s = finish(start(trainer, straight_dir, steps), "straight run")
    straight_s = time.monotonic() - started
    step_s = (straight_s - start_up_s) / max(1, steps - 1)
    print(f"# straight run: {steps} steps in {straight_s:.1f} s (first step after {start_up_s:.1f} s, then "
          f"{step_s:.2f} s a step)", flush=True)
    reference = final_tensors(trainer, straight_dir)

    during_save = loads_ok = resumes = 0
    for kill in range(kills):
        process = start(trainer, killed_dir, steps)
        resumes += (killed_dir / CHECKPOINT).exists()
        leftovers = set(temporaries(killed_dir))
        # Three kinds of moment in turn, each random within its span: during start-up (loading the checkpoint),
        # during the steps (within three steps of the first one), during the save of a step after the first. Each
        # life of the process moves the run on by a few steps at most, so it outlives the kills.
        kind = kill % 3
        if kind == 0:
            time.sleep(rng.uniform(0.0, start_up_s))
            how = "at a random moment of start-up"
        elif kind == 1:
            wait_for_a_step(process)
            time.sleep(rng.uniform(0.0, 3 * step_s))
            how = "at a random moment of the steps"
        else:
            wait_for_a_step(process)
            kill_during_save(process, killed_dir, straight_s)
            how = "in the next save"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=600)
        finished = process.returncode == 0
        in_save = bool(set(temporaries(killed_dir)) - leftovers)
        during_save += in_save
        steps_on_disk = load_everything(killed_dir)        # raises (and so fails the run) if anything is broken
        loads_ok += 1
        checkpoint_step = steps_on_disk.get("checkpoint", 0)
        if PUBLISHED in steps_on_disk:
            # The published LoRA follows the checkpoint: written right after it at every save.
            assert checkpoint_step - 1 <= steps_on_disk[PUBLISHED] <= checkpoint_step, steps_on_disk
        print(f"# kill {kill + 1}/{kills} ({how}{', the process had already finished' if finished else ''}"
              f"{', a save was in progress' if in_save else ''}): files load, at step {steps_on_disk}", flush=True)
        if finished:
            break
    finish(start(trainer, killed_dir, steps), "resumed run")
    resumes += 1
    resumed = final_tensors(trainer, killed_dir)
    assert set(resumed) == set(reference), "the resumed run wrote other tensors than the straight run"
    max_diff = max(float((resumed[k].double() - reference[k].double()).abs().max()) for k in reference)
    identical = all(torch.equal(resumed[k], reference[k]) for k in reference)
    return {"kills": kill + 1, "during_save": during_save, "loads_ok": loads_ok, "resumes": resumes,
            "identical": int(identical), "max_abs_diff": max_diff, "seconds": round(time.monotonic() - began, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run may finish (default 20)")
    parser.add_argument("--trainer", choices=tuple(FINAL_FILES), default="dpo")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 2 x kills + 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a "
                                                                "temporary folder, removed)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save-every", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("out_dir", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or 2 * args.kills + 6
    if args.child:
        child(args.trainer, args.out_dir, steps, args.save_every)
        return 0
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args.kills, args.trainer, steps, args.seed, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="syncav-kill-") as work:
            result = run(args.kills, args.trainer, steps, args.seed, Path(work))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
