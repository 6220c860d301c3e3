"""The shipped workflows and the /object_info snapshot their tests read (shared by tests/test_workflows.py and
tests/integration/test_workflows.py).

``example_workflows/NAME.json`` is the UI format (what the ComfyUI editor saves and loads),
``example_workflows/api/NAME.json`` its API twin (what ``POST /prompt`` takes). ``tests/fixtures/object_info.json``
holds the server's ``/object_info`` entries of every node type the workflows use plus all of ours, with file names
removed from the choice lists (they depend on what is installed); tests/fixtures/README.md says how to regenerate
it.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "example_workflows"
API_DIR = WORKFLOWS_DIR / "api"

# The shipped workflows by what they do. A file name is the title of its card in ComfyUI's template browser (and,
# with - and _ as spaces, its description), hence the readable names.
GENERATE = "SyncAV - generate a clip with sound (CPU)"
EVAL_SYNC = "SyncAV - sync eval, SyncCFG vs plain CFG (CPU)"
NEGATIVES_PREVIEW = "SyncAV - preview a temporal negative (CPU)"
DPO_TRAIN_THEN_GENERATE = "SyncAV - DPO sync training, then generate (CPU)"
GENERATE_OVI = "SyncAV - Ovi video with speech (GPU only)"
GUIDER_SAMPLING = "SyncAV - SyncCFG guider, ComfyUI samplers (CPU)"
SHIPPED = (GENERATE, EVAL_SYNC, NEGATIVES_PREVIEW, DPO_TRAIN_THEN_GENERATE, GENERATE_OVI, GUIDER_SAMPLING)
OBJECT_INFO_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "object_info.json"

# Nodes that live only in the editor: they never reach the server and have no /object_info entry.
FRONTEND_ONLY_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
# ComfyUI's model-file extensions (folder_paths.supported_pt_extensions, plus gguf): a choice that ends with one
# of these is a file someone installed, not part of a node's definition.
MODEL_FILE_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf")


def workflow_names() -> list[str]:
    """Names of the shipped workflows (``example_workflows/NAME.json``), sorted."""
    return sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))


def api_workflow_names() -> list[str]:
    return sorted(path.stem for path in API_DIR.glob("*.json"))


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def load_api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def prompt_of(api_workflow: dict) -> dict:
    """The API workflow as ``POST /prompt`` takes it (``_meta`` titles dropped)."""
    return {node_id: {"class_type": node["class_type"], "inputs": node["inputs"]}
            for node_id, node in api_workflow.items()}


def used_node_types() -> set[str]:
    """Every server-side node type a shipped workflow (UI or API) names."""
    types = set()
    for name in workflow_names():
        types |= {node["type"] for node in load_ui(name)["nodes"]} - FRONTEND_ONLY_TYPES
    for name in api_workflow_names():
        types |= {node["class_type"] for node in load_api(name).values()}
    return types


def is_file_name(choice) -> bool:
    return isinstance(choice, str) and choice.lower().endswith(MODEL_FILE_EXTENSIONS)


def combo_choices(spec) -> list | None:
    """The choices of a COMBO input spec in either form /object_info uses (``[[a, b], {...}]`` for classic nodes,
    ``["COMBO", {"options": [a, b]}]`` for schema nodes); None for any other input."""
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        return spec[0]
    if isinstance(spec, list) and len(spec) > 1 and spec[0] == "COMBO" and isinstance(spec[1], dict):
        return spec[1].get("options", [])
    return None


def without_file_names(entry: dict) -> dict:
    """A copy of one /object_info entry whose choice lists hold no installed file names."""
    entry = json.loads(json.dumps(entry))
    for section in (entry.get("input") or {}).values():
        if not isinstance(section, dict):
            continue
        for spec in section.values():
            choices = combo_choices(spec)
            if choices is not None:
                choices[:] = [c for c in choices if not is_file_name(c)]
    return entry


def snapshot_of(object_info: dict, our_types) -> dict:
    """The fixture's content for a full /object_info: the entries of our node types and of every type the shipped
    workflows use, without installed file names, sorted by type. A type the server lacks is left out (the tests
    then name it)."""
    wanted = set(our_types) | used_node_types()
    return {name: without_file_names(object_info[name]) for name in sorted(wanted) if name in object_info}


def load_object_info_fixture() -> dict:
    return json.loads(OBJECT_INFO_FIXTURE.read_text())
