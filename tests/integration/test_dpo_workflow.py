"""The post-training nodes inside a real ComfyUI (run with COMFYUI_DIR set; see tests/integration/conftest.py).

* Loader -> Temporal Negative Builder -> DPO Trainer (2 steps) -> Load LoRA (the trainer's lora_path) -> SyncCFG
  Sampler -> Decode -> Sync Metric, plus Save LoRA: the graph succeeds, the LoRA is in output/syncav_lora, the kept
  copy in models/syncav_lora, and Load LoRA's list shows the trained file afterwards.
* Cancel: a long training run is interrupted through POST /interrupt once its first checkpoint is on disk; the
  prompt ends interrupted with the LoRA of the last completed step published, and queueing it again with resume on
  continues from that step instead of starting over.
* resume off on an existing run is refused with a message naming output_name.
"""

from __future__ import annotations

import json
import time

import pytest
from workflow_files import combo_choices

from comfyui_syncav.files.safetensors_io import read_header
from comfyui_syncav.negatives.curriculum import DEFAULT_CURRICULUM

TRAINER = "3"
LORA_FOLDER = "syncav_lora"
RUNS_FOLDER = "syncav_lora_runs"


def trainer_graph(output_name: str, steps: int, save_every: int = 100, resume: bool = True) -> dict:
    """Loader -> Negatives -> DPO Trainer -> Save LoRA (the output node that makes the trainer run)."""
    return {
        "1": {"class_type": "SyncAVLoader", "inputs": {"checkpoint": "embedded default", "dtype": "auto"}},
        "2": {"class_type": "SyncAVNegatives", "inputs": {
            "rules": "curriculum", "curriculum_json": DEFAULT_CURRICULUM.to_json(), "curriculum_mode": "staged",
            "families": "", "codecs": ["1", 1], "preview_index": 0, "preview_progress": 0.0, "seed": 0}},
        TRAINER: {"class_type": "SyncAVDPOTrainer", "inputs": {
            "model": ["1", 0], "codecs": ["1", 1], "text_encoder": ["1", 2], "negatives": ["2", 0],
            "objective": "dpo", "steps": steps, "batch_size": 1, "lr": 0.001, "rank": 2, "beta_video": 0.0,
            "beta_audio": 0.0, "save_every": save_every, "output_name": output_name, "resume": resume, "seed": 0}},
        "4": {"class_type": "SyncAVSaveLoRA", "inputs": {
            "lora_path": [TRAINER, 1], "name": f"{output_name}_kept", "overwrite": True}},
    }


def full_graph(output_name: str) -> dict:
    graph = trainer_graph(output_name, steps=2)
    graph.update({
        "5": {"class_type": "SyncAVLoadLoRA", "inputs": {
            "model": ["1", 0], "lora": "none", "strength_video": 1.0, "strength_audio": 1.0,
            "lora_path": [TRAINER, 1]}},
        "6": {"class_type": "SyncAVTextEncode", "inputs": {
            "text_encoder": ["1", 2], "video_prompt": "a red ball bouncing", "audio_prompt": "high clicks",
            "video_negative": "", "audio_negative": ""}},
        "7": {"class_type": "SyncAVEmptyLatent", "inputs": {
            "codecs": ["1", 1], "seconds": 1.0, "width": 32, "height": 32, "batch_size": 1}},
        "8": {"class_type": "SyncAVSampler", "inputs": {
            "model": ["5", 0], "conditioning": ["6", 0], "latent": ["7", 0], "codecs": ["1", 1], "seed": 0,
            "steps": 2, "solver": "euler", "shift": 3.0, "text_scale_video": 4.0, "text_scale_audio": 4.0,
            "sync_scale_video": 2.0, "sync_scale_audio": 2.0, "sync_start": 0.0, "sync_end": 1.0,
            "slg_blocks": ""}},
        "9": {"class_type": "SyncAVDecode", "inputs": {"codecs": ["1", 1], "latent": ["8", 0]}},
        "10": {"class_type": "SyncAVSyncMetric", "inputs": {
            "images": ["9", 0], "audio": ["9", 1], "fps": ["9", 2], "tolerance_ms": 62.5, "mode": "auto"}},
    })
    return graph


def step_of(path) -> int:
    return int(read_header(path)[1]["step"])


def test_train_load_lora_sample_decode(comfy_server):
    entry = comfy_server.run(full_graph("it_dpo"), timeout=900)
    assert entry["status"]["status_str"] == "success"
    lora = comfy_server.output_dir / LORA_FOLDER / "it_dpo.safetensors"
    assert lora.is_file(), f"the trainer wrote no LoRA\n{comfy_server.log_tail()}"
    assert step_of(lora) == 2
    assert (comfy_server.output_dir / RUNS_FOLDER / "it_dpo" / "train_state.safetensors").is_file()
    kept = comfy_server.models_dir / LORA_FOLDER / "it_dpo_kept.safetensors"
    assert kept.is_file() and kept.read_bytes() == lora.read_bytes()
    report = json.loads(entry["outputs"]["10"]["text"][0])
    assert "event_f1" in report
    # Load LoRA lists the trained file (output/syncav_lora) and the kept one (models/syncav_lora)
    combo = combo_choices(comfy_server.object_info("SyncAVLoadLoRA")["input"]["required"]["lora"])
    assert {"none", "it_dpo.safetensors", "it_dpo_kept.safetensors"} <= set(combo)
    # the run's state is not offered as a LoRA
    assert not any("train_state" in name for name in combo)


def test_cancel_leaves_a_resumable_run(comfy_server):
    name = "it_cancel"
    run_dir = comfy_server.output_dir / RUNS_FOLDER / name
    state = run_dir / "train_state.safetensors"
    lora = comfy_server.output_dir / LORA_FOLDER / f"{name}.safetensors"
    long_steps = 5000
    prompt_id = comfy_server.post_prompt(trainer_graph(name, steps=long_steps, save_every=3))
    deadline = time.monotonic() + 600
    while not state.is_file():
        if comfy_server.history(prompt_id) is not None:
            pytest.fail("the training prompt ended before its first checkpoint\n" + comfy_server.log_tail())
        if time.monotonic() > deadline:
            pytest.fail("no training checkpoint after 600 s\n" + comfy_server.log_tail())
        time.sleep(0.2)
    # The published LoRA follows the checkpoints while the run goes on (a killed server still leaves one).
    while not lora.is_file():
        if comfy_server.history(prompt_id) is not None or time.monotonic() > deadline:
            pytest.fail("no published LoRA while the run went on\n" + comfy_server.log_tail())
        time.sleep(0.05)
    assert step_of(lora) % 3 == 0
    comfy_server.interrupt(prompt_id)
    entry = comfy_server.wait(prompt_id, timeout=300, check=False)
    events = [event for event, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in events, comfy_server.describe_failure(entry)
    done = step_of(state)
    assert 3 <= done < long_steps
    assert lora.is_file() and step_of(lora) == done, "the LoRA of the last completed step was not published"

    # Queue again with resume on and two more steps: it continues from `done`.
    entry = comfy_server.run(trainer_graph(name, steps=done + 2, save_every=3), timeout=600)
    assert entry["status"]["status_str"] == "success"
    assert step_of(state) == done + 2 and step_of(lora) == done + 2
    # The long run logged every 25 steps, the short one logs every step: a resumed run keeps the first run's
    # entries and adds steps done+1, done+2; a run started over would have logged steps 1, 2, 3, ...
    steps = [h["step"] for h in json.loads(read_header(state)[1]["history"])]
    assert [s for s in steps if s > done] == [done + 1, done + 2], steps
    assert all(s % 25 == 0 for s in steps if s <= done), f"the run started over instead of resuming: {steps}"


def test_resume_off_never_overwrites_a_run(comfy_server):
    comfy_server.run(trainer_graph("it_once", steps=1), timeout=600)
    entry = comfy_server.run(trainer_graph("it_once", steps=1, resume=False), timeout=300, check=False)
    assert entry["status"]["status_str"] == "error"
    message = comfy_server.describe_failure(entry)
    assert "SyncAVDPOTrainer" in message and "output_name: a run named 'it_once' already exists" in message
