"""The generation nodes inside a real ComfyUI: registered in /object_info, and the default workflow writes an mp4.

The generate workflow (its API format in example_workflows/api/): SyncAV Loader -> Text Encode -> Empty AV Latent
-> SyncCFG Sampler -> Decode -> native CreateVideo (images, fps, audio) -> native SaveVideo (h264 mp4).
"""

from __future__ import annotations

import json

import pytest
from workflow_files import API_DIR, GENERATE

from comfyui_syncav.files.media_io import probe_mp4
from comfy_nodes import NODE_CLASSES
from comfy_nodes import info as node_info

WORKFLOW = API_DIR / f"{GENERATE}.json"
SAVE_NODE = "7"
EXPECTED_SECONDS = 2.0


def load_workflow() -> dict:
    graph = json.loads(WORKFLOW.read_text())
    return {node_id: {"class_type": n["class_type"], "inputs": n["inputs"]} for node_id, n in graph.items()}


def test_every_syncav_node_is_registered(comfy_server):
    info = comfy_server.object_info()
    missing = [key for key in NODE_CLASSES if key not in info]
    assert not missing, f"SyncAV nodes missing from /object_info: {missing}\n{comfy_server.log_tail()}"
    for key in NODE_CLASSES:
        entry, expected = info[key], node_info(key)
        assert entry["display_name"] == expected["display_name"] and entry["display_name"].startswith("SyncAV ")
        assert entry["category"] == "SyncAV"
        assert entry["output"] == expected["output"]
        assert entry["output_name"] == expected["output_name"]
        assert set(entry["input"]["required"]) == set(expected["input"]["required"])
        assert entry["python_module"].startswith("custom_nodes.")


def test_workflow_uses_only_known_nodes(comfy_server):
    info = comfy_server.object_info()
    unknown = {n["class_type"] for n in load_workflow().values()} - set(info)
    assert not unknown, f"{WORKFLOW.name} uses nodes the server does not have: {sorted(unknown)}"


def test_generate_default_workflow_writes_an_mp4_with_sound(comfy_server):
    entry = comfy_server.run(load_workflow(), timeout=600)
    assert entry["status"]["status_str"] == "success"
    files = comfy_server.output_files(entry, SAVE_NODE)
    assert len(files) == 1, f"expected one file from SaveVideo, got {entry['outputs']}"
    path = files[0]
    assert path.is_file() and path.suffix == ".mp4", path
    assert path.parent.name == "SyncAV" and path.name.startswith("clip_")
    item = entry["outputs"][SAVE_NODE]["images"][0]
    served = comfy_server.view(item["filename"], item.get("subfolder", ""), item.get("type", "output"))
    assert served == path.read_bytes()

    info = probe_mp4(path)
    print(f"\n{path.relative_to(comfy_server.base_dir)}: {path.stat().st_size} bytes; "
          f"video {info['video']}; audio {info['audio']}")
    video, audio = info["video"], info["audio"]
    assert video is not None and video["codec"] == "h264"
    assert (video["width"], video["height"]) == (32, 32)
    assert video["fps"] == pytest.approx(16.0)
    assert video["frames"] == 32
    assert video["seconds"] == pytest.approx(EXPECTED_SECONDS, abs=0.07)
    assert audio is not None and audio["codec"] == "aac", "the mp4 has no aac audio track"
    # SaveVideo opens its aac stream with PyAV's default layout, so our mono track is written as stereo.
    assert audio["sample_rate"] == 8000 and audio["channels"] in (1, 2)
    # aac pads to whole 1024-sample frames and adds encoder priming: allow a few frames at 8 kHz.
    assert audio["seconds"] == pytest.approx(EXPECTED_SECONDS, abs=0.3)
