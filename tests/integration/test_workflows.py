"""The shipped workflows inside a real ComfyUI (run with COMFYUI_DIR set; see tests/integration/conftest.py).

* The template browser's routes list example_workflows/*.json under this package (not its README.md) and serve them
  and their card pictures (NAME.jpg) under the URL-encoded name; the served UI file converts, with the live
  /object_info, to its API twin.
* tests/fixtures/object_info.json matches the live server (with SYNCAV_UPDATE_OBJECT_INFO=1 it is rewritten from it
  instead: tests/fixtures/README.md).
* Every API workflow but Ovi's runs on the CPU and its outputs are checked: mp4s with an audio track of the right
  length (the guider workflow's made through SamplerCustomAdvanced), sync reports, the negative's rule; the LoRA the
  training workflow writes loads by name in another prompt, equals the trainer's own file there, and changes the clip
  compared with strength 0.
* The Ovi workflow passes validation on a server without any model file and fails at execution, in the Loader,
  with its "not found in models/..." message.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image
from workflow_files import (DPO_TRAIN_THEN_GENERATE, EVAL_SYNC, GENERATE, GENERATE_OVI, GUIDER_SAMPLING,
                            NEGATIVES_PREVIEW, OBJECT_INFO_FIXTURE, SHIPPED, WORKFLOWS_DIR, api_workflow_names,
                            load_api, load_object_info_fixture, load_ui, prompt_of, snapshot_of, workflow_names)

from comfyui_syncav.headless.ui_to_api import ui_to_api
from comfyui_syncav.files.atomic import write_text_atomic
from comfyui_syncav.files.media_io import probe_mp4
from comfyui_syncav.files.safetensors_io import read_header
from comfy_nodes import NODE_CLASSES

from .conftest import PACKAGE_DIR_NAME

EMBEDDED_FPS = 16.0
EMBEDDED_SAMPLE_RATE_HZ = 8000
LORA_NAME = "syncav_dpo_quick"
QUICK_STEPS = 10           # sampling steps of a run that only checks what a workflow writes
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def report_timings():
    """After this file: the wall time of every prompt it ran (pytest -s shows it)."""
    yield
    if TIMINGS:
        print("\nworkflow timings: " + ", ".join(f"{label} {seconds:.1f} s" for label, seconds in TIMINGS.items()))


def run_timed(server, label: str, prompt: dict, timeout: float = 600) -> dict:
    started = time.perf_counter()
    entry = server.run(prompt, timeout=timeout)
    TIMINGS[label] = time.perf_counter() - started
    print(f"\n{label}: {TIMINGS[label]:.1f} s")
    return entry


def saved_videos(server, entry: dict, node_id: str) -> list:
    files = server.output_files(entry, node_id)
    assert files and all(path.is_file() and path.suffix == ".mp4" for path in files), entry["outputs"].get(node_id)
    return files


def check_mp4(path, seconds: float, size_px: int = 32) -> dict:
    info = probe_mp4(path)
    video, audio = info["video"], info["audio"]
    assert video is not None and video["codec"] == "h264", info
    assert (video["width"], video["height"]) == (size_px, size_px)
    assert video["fps"] == pytest.approx(EMBEDDED_FPS)
    assert video["frames"] == round(seconds * EMBEDDED_FPS)
    assert video["seconds"] == pytest.approx(seconds, abs=0.07)
    assert audio is not None and audio["codec"] == "aac", f"{path.name} has no aac audio track"
    assert audio["sample_rate"] == EMBEDDED_SAMPLE_RATE_HZ
    # aac pads to whole 1024-sample frames and adds encoder priming: a few frames at 8 kHz
    assert audio["seconds"] == pytest.approx(seconds, abs=0.3)
    return info


def report_of(entry: dict, node_id: str) -> dict:
    return json.loads(entry["outputs"][node_id]["text"][0])


# ------------------------------------------------------------------------------------------------ templates

def test_template_browser_lists_and_serves_the_workflows(comfy_server):
    listed = comfy_server.get_json("/api/workflow_templates")
    assert sorted(listed.get(PACKAGE_DIR_NAME, [])) == workflow_names(), listed
    info = comfy_server.object_info()
    assert "README" not in listed.get(PACKAGE_DIR_NAME, []), "only *.json files are templates"
    for name in workflow_names():
        # the editor puts the name in the URL as it is; the browser encodes its spaces
        url = f"/api/workflow_templates/{urllib.parse.quote(PACKAGE_DIR_NAME)}/{urllib.parse.quote(name)}"
        served = json.loads(comfy_server.request("GET", f"{url}.json"))
        assert served == load_ui(name)
        assert ui_to_api(served, info) == load_api(name), f"{name}: the live server's widgets differ"
        # the card's picture: the frontend asks for NAME.jpg beside NAME.json
        assert comfy_server.request("GET", f"{url}.jpg") == (WORKFLOWS_DIR / f"{name}.jpg").read_bytes()


def test_object_info_snapshot_is_current(comfy_server):
    live = snapshot_of(comfy_server.object_info(), NODE_CLASSES)
    if os.environ.get("SYNCAV_UPDATE_OBJECT_INFO", "").strip() not in ("", "0"):
        write_text_atomic(OBJECT_INFO_FIXTURE, json.dumps(live, indent=1, ensure_ascii=False) + "\n")
    stored = load_object_info_fixture()
    assert sorted(live) == sorted(stored), "node types missing on the server or in the snapshot"
    for name in stored:
        live_entry = {k: v for k, v in live[name].items() if k != "python_module"}
        stored_entry = {k: v for k, v in stored[name].items() if k != "python_module"}
        assert live_entry == stored_entry, (f"{name} differs from tests/fixtures/object_info.json; regenerate it "
                                            "(tests/fixtures/README.md)")


# ------------------------------------------------------------------------------------------------ running them

def test_each_api_workflow_has_its_test_here():
    assert set(api_workflow_names()) == set(SHIPPED)


def test_generate_default(comfy_server):
    entry = run_timed(comfy_server, "generate", prompt_of(load_api(GENERATE)))
    (path,) = saved_videos(comfy_server, entry, "7")
    assert path.parent.name == "SyncAV" and path.name.startswith("clip_")
    check_mp4(path, 2.0)


def test_guider_sampling(comfy_server):
    """SamplerCustomAdvanced (SyncAV Noise, the SyncCFG Guider, euler, SyncAV Sigmas) -> Decode(samples) -> mp4; at
    the generate workflow's 10 steps instead of the shipped 25 (the clip's length and tracks do not depend on them)."""
    prompt = prompt_of(load_api(GUIDER_SAMPLING))
    (sigmas,) = [node for node in prompt.values() if node["class_type"] == "SyncAVSigmas"]
    assert sigmas["inputs"]["steps"] == 25
    sigmas["inputs"]["steps"] = QUICK_STEPS
    entry = run_timed(comfy_server, "guider_sampling", prompt)
    (path,) = saved_videos(comfy_server, entry, "11")
    assert path.parent.name == "SyncAV" and path.name.startswith("guided_")
    check_mp4(path, 2.0)


def test_eval_sync(comfy_server):
    """BounceBench Clip's ``count`` clips run through Text Encode, both samplers (each clip seeded by its own
    BounceBench seed) and Decode once per clip by ComfyUI's list mapping; each Sync Metric scores all of them and the
    SyncCFG one pairs its clips with plain CFG's report."""
    prompt = prompt_of(load_api(EVAL_SYNC))
    count = prompt["1"]["inputs"]["count"]
    assert count == 8 and prompt["6"]["inputs"]["seed"] == prompt["7"]["inputs"]["seed"] == ["1", 5]
    entry = run_timed(comfy_server, "eval_sync", prompt)
    plain, synced, real = (report_of(entry, node) for node in ("10", "11", "12"))
    # the reports are shown by the Preview Any nodes too
    for metric, preview in (("10", "13"), ("11", "14"), ("12", "15")):
        assert json.loads(entry["outputs"][preview]["text"][0]) == report_of(entry, metric)
    for report in (plain, synced, real):
        assert report["num_clips"] == count and len(report["per_clip"]) == count
        assert 0.0 <= report["event_f1"] <= 1.0 and report["num_audio_onsets"] >= 1
        assert report["event_f1_se"] is not None and report["chance_event_f1"] is not None
        assert report["event_f1_margin"] == pytest.approx(report["event_f1"] - report["chance_event_f1"])
        assert report["summary"][0] == f"{count} clips, mean ± standard error over clips"
    # the benchmark clips themselves are in sync: their impacts and sounds match (the metric's ceiling)
    assert real["event_f1"] >= 0.9 and abs(real["median_offset_ms"]) <= 1000 / EMBEDDED_FPS
    # SyncCFG minus plain, clip by clip
    paired = synced["paired_difference"]
    differences = [s["event_f1"] - p["event_f1"] for s, p in zip(synced["per_clip"], plain["per_clip"])]
    assert paired["clips"] == count and paired["event_f1"]["clips"] == count
    assert paired["event_f1"]["mean"] == pytest.approx(sum(differences) / count)
    assert "paired_difference" not in plain
    plain_mp4s, synced_mp4s = saved_videos(comfy_server, entry, "18"), saved_videos(comfy_server, entry, "19")
    assert len(plain_mp4s) == len(synced_mp4s) == count                 # one mp4 per clip and branch
    assert {path.parent.name for path in plain_mp4s + synced_mp4s} == {"eval"}
    for path in plain_mp4s + synced_mp4s:
        check_mp4(path, 2.0)
    for label, report in (("plain", plain), ("SyncCFG", synced), ("real", real)):
        print(f"\n{label}: " + "; ".join(report["summary"][1:]))


def test_negatives_preview(comfy_server):
    entry = run_timed(comfy_server, "negatives_preview", prompt_of(load_api(NEGATIVES_PREVIEW)))
    (real,) = saved_videos(comfy_server, entry, "6")
    (negative,) = saved_videos(comfy_server, entry, "8")
    for path in (real, negative):
        check_mp4(path, 2.0)
    rule = entry["outputs"]["10"]["text"][0]
    # progress 0 draws from the curriculum's first (coarse) stage, on the clip the Int node picked for both
    assert rule.split(":")[0] in ("audio_swap", "audio_reversal", "video_reversal", "audio_shift"), rule
    assert "stage 'coarse'" in rule and rule.endswith("BounceBench train clip 0")
    (sound,) = comfy_server.output_files(entry, "9")
    assert sound.is_file() and sound.stat().st_size > 0


def test_dpo_train_then_generate_and_the_lora_loads_by_name(comfy_server):
    workflow = load_api(DPO_TRAIN_THEN_GENERATE)
    steps = workflow["3"]["inputs"]["steps"]
    entry = run_timed(comfy_server, "dpo_train_then_generate", prompt_of(workflow), timeout=900)
    trained = comfy_server.output_dir / "syncav_lora" / f"{LORA_NAME}.safetensors"
    kept = comfy_server.models_dir / "syncav_lora" / f"{LORA_NAME}.safetensors"
    assert trained.is_file() and int(read_header(trained)[1]["step"]) == steps
    assert kept.is_file() and kept.read_bytes() == trained.read_bytes()
    # where the LoRA was kept, as the editor shows it: Save LoRA's lora_path in the Preview Any node
    assert entry["outputs"]["14"]["text"] == [str(kept)]
    (curves,) = comfy_server.output_files(entry, "4")
    assert curves.suffix == ".png" and curves.stat().st_size > 0
    (generated,) = saved_videos(comfy_server, entry, "12")
    check_mp4(generated, 2.0)

    # A second prompt: the workflow's generation half three times from the same noise, with the kept LoRA chosen
    # by name in Load LoRA's list, with the trainer's file through lora_path, and with the kept LoRA at strength 0
    # (the base model). Frames are saved as PNG: lossless, so equal clips compare equal (h264 is not bit-exact
    # from one encode to the next).
    generation = prompt_of(workflow)
    prompt = {node_id: generation[node_id] for node_id in ("1", "7", "8")}
    # ComfyUI's own Load LoRA (model only) reads it from models/loras
    core_lora = comfy_server.models_dir / "loras" / f"{LORA_NAME}_core.safetensors"
    core_lora.parent.mkdir(parents=True, exist_ok=True)
    core_lora.write_bytes(kept.read_bytes())
    branches = {"by_name": {"lora": f"{LORA_NAME}.safetensors", "strength_video": 1.0, "strength_audio": 1.0},
                "by_path": {"lora": "none", "strength_video": 1.0, "strength_audio": 1.0,
                            "lora_path": str(trained)},
                "strength_0": {"lora": f"{LORA_NAME}.safetensors", "strength_video": 0.0, "strength_audio": 0.0},
                "core_loader": {}}
    for k, (branch, lora_inputs) in enumerate(branches.items()):
        lora_id, sampler_id, decode_id, save_id = (str(100 + 10 * k + i) for i in range(4))
        prompt[lora_id] = {"class_type": "SyncAVLoadLoRA", "inputs": {"model": ["1", 0], **lora_inputs}} \
            if branch != "core_loader" else {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0],
                                             "lora_name": core_lora.name, "strength_model": 1.0}}
        prompt[sampler_id] = {"class_type": "SyncAVSampler",
                              "inputs": dict(generation["9"]["inputs"], model=[lora_id, 0])}
        prompt[decode_id] = {"class_type": "SyncAVDecode", "inputs": {"codecs": ["1", 1], "latent": [sampler_id, 0]}}
        prompt[save_id] = {"class_type": "SaveImage", "inputs": {"images": [decode_id, 0],
                                                                  "filename_prefix": f"SyncAV/lora_{branch}"}}
    entry = run_timed(comfy_server, "Load LoRA by name, by path, at strength 0 and with core's loader", prompt)
    frames = {branch: np.stack([np.asarray(Image.open(path)) for path in
                                sorted(comfy_server.output_files(entry, str(100 + 10 * k + 3)))])
              for k, branch in enumerate(branches)}
    assert frames["by_name"].shape == (32, 32, 32, 3)
    np.testing.assert_array_equal(frames["by_name"], frames["by_path"])
    # core's LoRA loader patches the same weights the same way (both through comfy.lora.load_lora and add_patches)
    np.testing.assert_array_equal(frames["core_loader"], frames["by_name"])
    # The workflow's 40-step LoRA moves the frames by a mean 0.62 / 255 on the shipped default (6 blocks, 18,200
    # steps; 0.44 on the 4-block 16,200-step one); a LoRA that is not applied leaves them equal to the strength-0
    # branch's.
    changed = np.abs(frames["by_name"].astype(int) - frames["strength_0"]).mean()
    assert changed > 0.2, f"the trained LoRA barely changes the clip: mean |difference| {changed:.3f} / 255"


def test_generate_ovi_is_valid_without_model_files_and_fails_in_the_loader(comfy_server):
    """Ovi does not run on a CPU, and a fresh server has none of its files. Its workflow names no file itself (the
    Loader's preset finds the joint model, codecs and text encoder at run time), so it passes validation, and
    executing it fails in the Loader, which names the joint model file and its folder."""
    # none of the files Ovi reads, in any folder it searches (earlier tests may have left LoRAs in syncav_lora)
    ovi_folders = ("diffusion_models", "unet", "vae", "mmaudio", "text_encoders", "clip")
    model_files = [path for folder in ovi_folders for path in (comfy_server.models_dir / folder).rglob("*")
                   if path.is_file()]
    assert not model_files, model_files
    entry = comfy_server.run(prompt_of(load_api(GENERATE_OVI)), timeout=120, check=False)
    error = comfy_server.execution_error(entry)
    assert (error["node_id"], error["node_type"], error["exception_type"]) == \
        ("1", "SyncAVLoader", "FileNotFoundError")
    assert ("Ovi 720x720 5s: joint model file 'model.safetensors' not found in models/diffusion_models"
            in error["exception_message"])
    assert not comfy_server.output_files(entry)


