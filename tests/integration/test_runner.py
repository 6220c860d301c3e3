"""The headless runner against a real ComfyUI (run with COMFYUI_DIR set; see tests/integration/conftest.py).

Every run goes through the UI-format files in example_workflows/, converted with the live server's /object_info:

* each workflow that runs on a CPU exits 0 and downloads its mp4s, each with a video and an audio track of the
  clip's length (the DPO one trains 2 steps under its own name, through --set);
* the Ovi workflow passes validation on a server without any model file, then fails in the Loader, which names the
  missing Ovi file: exit 1, the message on stderr;
* a value the server refuses (--set steps=0) is exit 1 with a message naming node, input and limit;
* an interruption (POST /interrupt when the trainer reports its first step) is exit 4, and the same run queued
  again with resume on continues from the step the interruption saved.
"""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from workflow_files import (DPO_TRAIN_THEN_GENERATE, EVAL_SYNC, GENERATE, GENERATE_OVI, GUIDER_SAMPLING,
                            NEGATIVES_PREVIEW, WORKFLOWS_DIR, workflow_names)

from comfyui_syncav.cli import main
from comfyui_syncav.headless import runner
from comfyui_syncav.headless.runner import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, run_workflow
from comfyui_syncav.files.media_io import probe_mp4
from comfyui_syncav.files.safetensors_io import read_header

CPU_WORKFLOWS = [name for name in workflow_names() if name != GENERATE_OVI]
# What each CPU workflow saves: mp4 files, all of the shipped clip length.
EXPECTED_MP4S = {GENERATE: 1, DPO_TRAIN_THEN_GENERATE: 1, EVAL_SYNC: 4, NEGATIVES_PREVIEW: 2, GUIDER_SAMPLING: 1}
CLIP_SECONDS = 2.0
# The DPO workflow's node ids (UI ids are kept by the conversion): trainer and Save LoRA.
TRAINER, SAVE_LORA = "3", "5"
LORA_FOLDER, RUNS_FOLDER = "syncav_lora", "syncav_lora_runs"


def run_cli(capsys, workflow: str, server, out_dir, *overrides: str) -> tuple[int, str, str, float]:
    """``python -m comfyui_syncav run WORKFLOWS_DIR/<workflow>.json ...``: (exit code, stdout, stderr, seconds)."""
    args = ["run", str(WORKFLOWS_DIR / f"{workflow}.json"), "--server", server.base_url, "--out", str(out_dir),
            "--timeout", "600"]
    for override in overrides:
        args += ["--set", override]
    capsys.readouterr()
    started = time.perf_counter()
    code = main(args)
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    with capsys.disabled():   # the timings show with pytest -s
        print(f"\n{workflow}: exit {code} in {seconds:.1f} s")
    return code, captured.out, captured.err, seconds


def step_of(path) -> int:
    return int(read_header(path)[1]["step"])


def dpo_overrides(name: str, steps: int, save_every: int) -> list[str]:
    """The shipped DPO workflow under its own run name, with ``steps`` training steps."""
    return [f"{TRAINER}.steps={steps}", f"{TRAINER}.save_every={save_every}", f"{TRAINER}.output_name={name}",
            f"{SAVE_LORA}.name={name}"]


# ------------------------------------------------------------------------------------------------ (a) success

def test_the_cpu_workflows_are_the_shipped_ones():
    assert sorted(EXPECTED_MP4S) == sorted(CPU_WORKFLOWS)


@pytest.mark.parametrize("workflow", CPU_WORKFLOWS)
def test_workflow_runs_and_downloads_its_clips(comfy_server, capsys, tmp_path, workflow):
    overrides = dpo_overrides("it_runner_dpo", steps=2, save_every=2) if workflow == DPO_TRAIN_THEN_GENERATE else []
    if workflow == GUIDER_SAMPLING:
        overrides = ["7.steps=10"]     # SyncAV Sigmas: a shorter run, the same graph
    if workflow == EVAL_SYNC:
        overrides = ["1.count=2"]      # two clips per branch (lists all the same); test_workflows runs all eight
    code, out, err, _ = run_cli(capsys, workflow, comfy_server, tmp_path / "out", *overrides)
    assert code == EXIT_OK, err[-3000:]
    assert "finished in" in err
    mp4s = sorted((tmp_path / "out").rglob("*.mp4"))
    assert len(mp4s) == EXPECTED_MP4S[workflow], (mp4s, out)
    # stdout names every file it wrote, and the file is there with that size
    written = [line for line in out.splitlines() if line.startswith("wrote ")]
    for path in mp4s:
        (line,) = [w for w in written if w.startswith(f"wrote {path} (")]
        assert f"({path.stat().st_size} bytes" in line
        # the download is the server's file, byte for byte
        assert path.read_bytes() == (comfy_server.output_dir / path.relative_to(tmp_path / "out")).read_bytes()
        info = probe_mp4(path)
        assert info["video"] is not None and info["audio"] is not None, f"{path.name}: {info}"
        assert info["video"]["seconds"] == pytest.approx(CLIP_SECONDS, abs=0.07)
        assert info["video"]["frames"] > 0 and info["audio"]["sample_rate"] > 0
        # aac pads to whole frames and adds its priming samples
        assert info["audio"]["seconds"] == pytest.approx(CLIP_SECONDS, abs=0.3)
    if workflow == DPO_TRAIN_THEN_GENERATE:
        assert step_of(comfy_server.output_dir / LORA_FOLDER / "it_runner_dpo.safetensors") == 2


# ------------------------------------------------------------------------------------------------ (b) Ovi

def test_generate_ovi_validates_then_fails_in_the_loader(comfy_server, capsys, tmp_path):
    """A fresh server has none of Ovi's files, its text encoder included: the prompt is valid all the same, and the
    Loader is what fails, naming the joint model file and the folder it belongs in."""
    # none of the files Ovi reads, in any folder it searches (earlier tests may have left LoRAs in syncav_lora)
    ovi_folders = ("diffusion_models", "unet", "vae", "mmaudio", "text_encoders", "clip")
    model_files = [path for folder in ovi_folders for path in (comfy_server.models_dir / folder).rglob("*")
                   if path.is_file()]
    assert not model_files, model_files
    code, out, err, _ = run_cli(capsys, GENERATE_OVI, comfy_server, tmp_path / "out")
    assert code == EXIT_FAILED, err[-3000:]
    assert "rejected" not in err, "the prompt did not pass validation"
    assert "queued prompt" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: node 1 (SyncAVLoader"), last
    assert "FileNotFoundError" in last and "'model.safetensors' not found in models/diffusion_models" in last, last
    assert not out.strip() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ (c) rejected

def test_a_refused_value_is_exit_1_with_a_readable_message(comfy_server, capsys, tmp_path):
    code, out, err, _ = run_cli(capsys, GENERATE, comfy_server, tmp_path / "out", "4.steps=0")
    assert code == EXIT_FAILED
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: the server rejected the prompt: "), err
    (problem,) = [line for line in lines[1:] if "node 4" in line]
    assert "SyncAVSampler" in problem and "input 'steps'" in problem and "smaller than min" in problem, problem
    assert "queued prompt" not in err and not out.strip()


# ------------------------------------------------------------------------------------------------ (d) interrupt

def test_interrupt_is_exit_4_and_resume_continues(comfy_server, capsys, tmp_path, monkeypatch):
    name = "it_runner_cancel"
    state = comfy_server.output_dir / RUNS_FOLDER / name / "train_state.safetensors"
    lora = comfy_server.output_dir / LORA_FOLDER / f"{name}.safetensors"
    long_steps = 5000
    first_step = threading.Event()
    show_progress = runner.ProgressDisplay.progress

    def progress(display, node, value, maximum):   # the runner saw a progress message from the trainer
        if node == TRAINER and value >= 1:
            first_step.set()
        show_progress(display, node, value, maximum)

    monkeypatch.setattr(runner.ProgressDisplay, "progress", progress)
    result = {}
    err = io.StringIO()

    def long_run():
        result["code"] = run_workflow(WORKFLOWS_DIR / f"{DPO_TRAIN_THEN_GENERATE}.json", comfy_server.base_url,
                                      dpo_overrides(name, steps=long_steps, save_every=1000),
                                      out_dir=tmp_path / "first", timeout_seconds=600, stdout=io.StringIO(),
                                      stderr=err)

    thread = threading.Thread(target=long_run, daemon=True)
    started = time.perf_counter()
    thread.start()
    assert first_step.wait(300), "no progress from the trainer within 300 s\n" + err.getvalue()[-3000:]
    comfy_server.interrupt()
    thread.join(300)
    assert not thread.is_alive(), "the runner did not return after the interruption"
    assert result["code"] == EXIT_INTERRUPTED, err.getvalue()[-3000:]
    assert "was interrupted at node 3 (SyncAVDPOTrainer" in err.getvalue()
    done = step_of(state)
    with capsys.disabled():
        print(f"\ninterrupted run: exit {result['code']} after {time.perf_counter() - started:.1f} s at step {done}")
    assert 1 <= done < long_steps
    assert step_of(lora) == done, "the LoRA of the last completed step was not published"

    # The same workflow again, resume on (as shipped), two more steps: it continues from `done` and generates.
    code, out, err_text, _ = run_cli(capsys, DPO_TRAIN_THEN_GENERATE, comfy_server, tmp_path / "second",
                                     *dpo_overrides(name, steps=done + 2, save_every=1000))
    assert code == EXIT_OK, err_text[-3000:]
    assert step_of(state) == done + 2 and step_of(lora) == done + 2
    # The long run logged every 25 steps, the short one logs every step: resumed, the history holds the first
    # run's entries and then steps done+1, done+2; started over, it would hold 1, 2, 3, ...
    steps = [entry["step"] for entry in json.loads(read_header(state)[1]["history"])]
    assert [s for s in steps if s > done] == [done + 1, done + 2], steps
    assert all(s % 25 == 0 for s in steps if s <= done), f"the run started over instead of resuming: {steps}"
    assert len(list((tmp_path / "second").rglob("*.mp4"))) == 1
