"""The shipped workflows (no ComfyUI needed): each UI file converts to exactly its API twin, both only name node
types and inputs that exist, the UI files are graphs the editor can load, and the /object_info snapshot they are
checked against still describes our nodes as they are now.

tests/integration/test_workflows.py runs them in a real ComfyUI.
"""

from __future__ import annotations

import json
import math

import pytest
from workflow_files import (EVAL_SYNC, FRONTEND_ONLY_TYPES, GENERATE, GENERATE_OVI, GUIDER_SAMPLING, SHIPPED,
                            WORKFLOWS_DIR, api_workflow_names, combo_choices, is_file_name, load_api,
                            load_object_info_fixture, load_ui, used_node_types, workflow_names)

from comfyui_syncav.headless.ui_to_api import ui_to_api
from comfy_nodes import NODE_CLASSES, info
from comfyui_syncav.nodes import comfy_bridge

NAMES = workflow_names()
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TITLE_BAR_PX = 30          # the editor draws a node's title above its pos


@pytest.fixture(scope="module")
def object_info() -> dict:
    return load_object_info_fixture()


def _input_specs(entry: dict) -> dict:
    declared = entry["input"]
    return {**declared.get("required", {}), **declared.get("optional", {})}


def _input_type(spec) -> str:
    return "COMBO" if combo_choices(spec) is not None else spec[0]


def _is_widget(spec) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return _input_type(spec) in WIDGET_TYPES and not options.get("forceInput")


def test_the_expected_workflows_ship_in_both_formats():
    assert set(NAMES) >= set(SHIPPED)
    assert NAMES == api_workflow_names(), "every UI workflow needs its API twin in example_workflows/api/ and back"


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_converts_to_its_api_twin(name, object_info):
    converted = ui_to_api(load_ui(name), object_info)
    twin = load_api(name)
    assert set(converted) == set(twin), "node ids differ"
    for node_id in twin:
        assert converted[node_id]["class_type"] == twin[node_id]["class_type"], node_id
        assert converted[node_id]["inputs"] == twin[node_id]["inputs"], f"node {node_id}"
        assert converted[node_id]["_meta"] == twin[node_id]["_meta"], node_id
    assert converted == twin


@pytest.mark.parametrize("name", api_workflow_names())
def test_api_workflow_names_only_existing_nodes_inputs_and_choices(name, object_info):
    prompt = load_api(name)
    for node_id, node in prompt.items():
        class_type = node["class_type"]
        where = f"{name}.json node {node_id} ({class_type})"
        assert class_type in object_info, f"{where}: not in tests/fixtures/object_info.json"
        if class_type.startswith("SyncAV"):
            assert class_type in NODE_CLASSES, where
        specs = _input_specs(object_info[class_type])
        unknown = set(node["inputs"]) - set(specs)
        assert not unknown, f"{where}: unknown inputs {sorted(unknown)}"
        missing = set(object_info[class_type]["input"].get("required", {})) - set(node["inputs"])
        assert not missing, f"{where}: required inputs missing {sorted(missing)}"
        for input_name, value in node["inputs"].items():
            spec = specs[input_name]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(value, list):          # a link: [source node id, output slot]
                source_id, slot = value
                assert source_id in prompt, f"{where}.{input_name}: links to missing node {source_id}"
                source_type = object_info[prompt[source_id]["class_type"]]["output"][slot]
                wanted = _input_type(spec)
                assert wanted == "*" or source_type == wanted, \
                    f"{where}.{input_name}: wants {wanted}, linked to a {source_type} output"
                continue
            assert _is_widget(spec), f"{where}.{input_name}: a {spec[0]} input needs a link, has {value!r}"
            kind = _input_type(spec)
            if kind == "COMBO":
                if not is_file_name(value):      # file lists depend on what is installed
                    assert value in combo_choices(spec), f"{where}.{input_name}: {value!r} is not a choice"
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}.{input_name}"
                assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), f"{where}.{input_name}"
                if kind == "INT":
                    assert isinstance(value, int), f"{where}.{input_name}: {value!r} is not an integer"
            elif kind == "STRING":
                assert isinstance(value, str), f"{where}.{input_name}"
            else:
                assert isinstance(value, bool), f"{where}.{input_name}"


def _widget_count(entry: dict) -> int:
    """Widgets the editor gives a node: one per widget input, plus the control widget after seeds."""
    count = 0
    for input_name, spec in _input_specs(entry).items():
        if not _is_widget(spec):
            continue
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        control = options.get("control_after_generate")
        count += 1 + int(_input_type(spec) == "INT" and (control if control is not None
                                                         else input_name in ("seed", "noise_seed")))
    return count


def _overlap(a, b) -> bool:
    (ax, ay, aw, ah), (bx, by, bw, bh) = a, b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_a_graph_the_editor_loads(name, object_info):
    """The schema the ComfyUI frontend validates (workflow version 0.4) and links that agree from both ends."""
    ui = load_ui(name)
    assert ui["version"] == 0.4
    nodes = {node["id"]: node for node in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "node ids repeat"
    assert ui["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in ui["links"]}
    assert len(links) == len(ui["links"]), "link ids repeat"
    assert ui["last_link_id"] >= max(links, default=0)
    for node in nodes.values():
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "properties"} <= set(node), node["id"]
        assert node["mode"] == 0, f"node {node['id']} is muted or bypassed"
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        entry = object_info[node["type"]]
        assert node["properties"]["Node name for S&R"] == node["type"]
        # the editor matches widget values to widgets by position
        assert len(node["widgets_values"]) == _widget_count(entry), f"node {node['id']} ({node['type']})"
        specs = _input_specs(entry)
        for socket in node["inputs"]:
            assert socket["name"] in specs, f"node {node['id']}: no input {socket['name']!r}"
            if "widget" in socket:
                assert socket["widget"]["name"] == socket["name"] and socket["link"] is not None
        assert [o["name"] for o in node["outputs"]] == entry["output_name"]
        assert [o["type"] for o in node["outputs"]] == entry["output"]
    for link_id, origin, origin_slot, target, target_slot, link_type in ui["links"]:
        output = nodes[origin]["outputs"][origin_slot]
        socket = nodes[target]["inputs"][target_slot]
        assert link_id in output["links"] and socket["link"] == link_id, f"link {link_id}"
        assert link_type == output["type"] and socket["type"] in (link_type, "*"), f"link {link_id}"
    for node in nodes.values():
        for socket in node.get("inputs", []):
            assert socket["link"] is None or socket["link"] in links, f"node {node['id']}: dangling link"
        for output in node.get("outputs", []):
            assert all(link_id in links for link_id in output["links"] or []), f"node {node['id']}: dangling link"

    notes = [n for n in nodes.values() if n["type"] in ("Note", "MarkdownNote")]
    assert notes and all(len(n["widgets_values"][0]) > 200 for n in notes), "a note explains the knobs"

    # Readable layout: nodes never overlap (title bars included), data flows left to right, and every group
    # frames its nodes without covering another group.
    boxes = {i: (n["pos"][0], n["pos"][1] - TITLE_BAR_PX, n["size"][0], n["size"][1] + TITLE_BAR_PX)
             for i, n in nodes.items()}
    ids = sorted(boxes)
    for k, a in enumerate(ids):
        for b in ids[k + 1:]:
            assert not _overlap(boxes[a], boxes[b]), f"nodes {a} and {b} overlap"
    for _, origin, _, target, _, _ in ui["links"]:
        assert nodes[origin]["pos"][0] <= nodes[target]["pos"][0], f"link {origin} -> {target} runs right to left"
    groups = ui["groups"]
    for k, group in enumerate(groups):
        for other in groups[k + 1:]:
            assert not _overlap(group["bounding"], other["bounding"]), f"groups {group['title']!r}, {other['title']!r}"
    for node_id, box in boxes.items():
        inside = [g for g in groups if _overlap(g["bounding"], box)]
        assert len(inside) <= 1, f"node {node_id} straddles groups"
        if inside:
            gx, gy, gw, gh = inside[0]["bounding"]
            x, y, w, h = box
            assert gx <= x and gy <= y and x + w <= gx + gw and y + h <= gy + gh, f"node {node_id} sticks out"


def test_ui_workflows_are_where_comfyui_lists_custom_node_templates():
    """ComfyUI's /api/workflow_templates lists ``<custom node>/example_workflows/*.json`` (the folder name ComfyUI's
    docs recommend) and serves the folder: only UI-format files may sit at its top level, API twins go below it."""
    for path in WORKFLOWS_DIR.glob("*.json"):
        workflow = json.loads(path.read_text())
        assert isinstance(workflow.get("nodes"), list), f"{path.name} is not in UI format"


def test_workflows_are_shipped_package_data():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((WORKFLOWS_DIR.parent / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["comfyui_syncav"]
    assert {"example_workflows/*.json", "example_workflows/api/*.json", "example_workflows/*.jpg"} <= set(data)
    for ui_file in WORKFLOWS_DIR.glob("*.json"):       # each card of the template browser has its picture
        assert ui_file.with_suffix(".jpg").is_file(), ui_file.name


def test_registry_icon_is_a_small_square_png_of_this_repository():
    """[tool.comfy] Icon: the registry shows the file at that URL, which must be this repository's own (a raw
    GitHub URL under [project.urls] Repository) and a square PNG of at most 400 px (the registry's limit)."""
    tomllib = pytest.importorskip("tomllib")
    Image = pytest.importorskip("PIL.Image")
    project = tomllib.loads((WORKFLOWS_DIR.parent / "pyproject.toml").read_text())
    repository = project["project"]["urls"]["Repository"]
    raw_prefix = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    icon_url = project["tool"]["comfy"]["Icon"]
    assert icon_url.startswith(raw_prefix), icon_url
    with Image.open(WORKFLOWS_DIR.parent / icon_url[len(raw_prefix):]) as icon:
        assert icon.format == "PNG" and icon.width == icon.height <= 400, (icon.format, icon.size)


# Characters a file name cannot hold on Windows, or that would end or escape the template URL the editor builds
# from the name unencoded (/api/workflow_templates/<pack>/<name>.json).
UNSAFE_NAME_CHARACTERS = set('<>:"/\\|?*#%&')
CARD_TITLE_CHARS = 50      # the card shows two lines of the title, about 25 characters each, then an ellipsis


@pytest.mark.parametrize("name", NAMES)
def test_workflow_names_are_readable_card_titles_and_safe_file_names(name):
    """The template browser shows the file name as the card's title, and again as its description."""
    assert not UNSAFE_NAME_CHARACTERS & set(name) and name == name.strip(), name
    assert len(name) <= CARD_TITLE_CHARS, f"{name!r} is cut off on its card"
    assert name.startswith("SyncAV - "), "in the browser's All list the pack's templates sit among ComfyUI's own"
    needs_gpu = any(node["type"] == "SyncAVLoader" and str(node["widgets_values"][0]).startswith("Ovi")
                    for node in load_ui(name)["nodes"])
    assert name.endswith("(GPU only)" if needs_gpu else "(CPU)"), name


def test_ovi_workflow_lists_the_files_it_needs_for_the_missing_models_dialog():
    """The editor reads a workflow's top-level ``models`` ({name, url, directory}) when it opens it and offers each
    file missing from ``models/<directory>`` for download, only from Hugging Face and only for .safetensors (node
    ``properties.models`` count only where the name is one of the node's widget values, and the Loader's widget is
    a preset, not a file). The list must be exactly the files the Loader's preset looks for, by their first name."""
    from comfyui_syncav.ovi.variants import AUDIO_VAE, TEXT_ENCODER, VIDEO_VAE, VOCODER, VARIANTS_BY_LABEL

    workflow = load_ui(GENERATE_OVI)
    (loader,) = [node for node in workflow["nodes"] if node["type"] == "SyncAVLoader"]
    variant = VARIANTS_BY_LABEL[loader["widgets_values"][0]]
    needed = {(spec.name, spec.folders[0]) for spec in (variant.model_file, VIDEO_VAE, AUDIO_VAE, VOCODER,
                                                         TEXT_ENCODER)}
    listed = workflow["models"]
    assert {(model["name"], model["directory"]) for model in listed} == needed
    for model in listed:
        assert set(model) == {"name", "url", "directory"}, model
        assert model["url"].startswith("https://huggingface.co/") and "/resolve/main/" in model["url"], model
        assert model["url"].endswith("/" + model["name"]) and model["name"].endswith(".safetensors"), model
    notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "MarkdownNote"]
    assert any(note.startswith("## GPU only") for note in notes), "the note says first that Ovi needs a GPU"
    assert all(model["name"] in "\n".join(notes) for model in listed), "the note names every file"


# ------------------------------------------------------------------------------------------------ the snapshot

def test_snapshot_holds_exactly_our_nodes_and_those_the_workflows_use(object_info):
    assert set(object_info) == set(NODE_CLASSES) | used_node_types()
    for entry in object_info.values():
        for section in entry["input"].values():
            for spec in section.values() if isinstance(section, dict) else ():
                assert not any(is_file_name(c) for c in combo_choices(spec) or []), "installed files in the snapshot"


@pytest.mark.parametrize("key", sorted(NODE_CLASSES))
def test_snapshot_describes_our_nodes_as_they_are_now(key, object_info, monkeypatch):
    """Rebuilt from the node classes: a renamed, added or re-ordered input, a new default or choice shows here, and
    the snapshot (and with it the workflows) must be regenerated (tests/fixtures/README.md)."""
    monkeypatch.setattr(comfy_bridge, "diffusion_model_names", lambda: [])   # no installed files, as in the
    monkeypatch.setattr(comfy_bridge, "lora_names", lambda: [])              # fresh server the snapshot came from
    expected = {k: v for k, v in json.loads(json.dumps(info(key))).items() if k != "python_module"}
    stored = {k: v for k, v in object_info[key].items() if k != "python_module"}
    assert stored == expected


def test_a_second_run_of_the_generate_workflows_makes_a_new_clip_and_comparisons_stay_put():
    """The editor applies a seed's control_after_generate after each queued run: the generate workflows draw a new
    seed (randomize; the guider workflow's is SyncAV Noise's), the eval workflow keeps its seed so both of its samplers
    start from the same noise."""
    def seed_controls(name, node_type="SyncAVSampler"):
        return [node["widgets_values"][1] for node in load_ui(name)["nodes"] if node["type"] == node_type]

    assert seed_controls(GENERATE) == ["randomize"] and seed_controls(GENERATE_OVI) == ["randomize"]
    assert seed_controls(GUIDER_SAMPLING, "SyncAVNoise") == ["randomize"]
    assert seed_controls(EVAL_SYNC) == ["fixed", "fixed"]


def test_guider_workflow_wires_core_sampling_the_way_that_makes_the_sampler_nodes_clip(object_info):
    """SamplerCustomAdvanced gets SyncAV Noise, the SyncCFG Guider (default anchors), euler and SyncAV Sigmas and the
    Empty AV Latent's LATENT: the settings that make the SyncCFG Sampler's clip (tests/integration/test_guider.py);
    Decode reads the sampler's LATENT. The note's other samplers are choices of KSamplerSelect."""
    from comfyui_syncav.guidance.sync_cfg import DEFAULT_ANCHORS

    prompt = load_api(GUIDER_SAMPLING)
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    (sampling,) = by_type["SamplerCustomAdvanced"]
    sources = {name: (prompt[link[0]]["class_type"], link[1]) for name, link in prompt[sampling]["inputs"].items()}
    assert sources == {"noise": ("SyncAVNoise", 0), "guider": ("SyncAVSyncCFGGuider", 0),
                       "sampler": ("KSamplerSelect", 0), "sigmas": ("SyncAVSigmas", 0),
                       "latent_image": ("SyncAVEmptyLatent", 1)}
    inputs = {class_type: prompt[ids[0]]["inputs"] for class_type, ids in by_type.items()}
    assert inputs["KSamplerSelect"]["sampler_name"] == "euler"
    assert (inputs["SyncAVSigmas"]["steps"], inputs["SyncAVSigmas"]["shift"]) == (25, 3.0)
    assert inputs["SyncAVSyncCFGGuider"]["anchors"] == DEFAULT_ANCHORS.value
    assert inputs["SyncAVDecode"]["samples"] == [sampling, 0] and "latent" not in inputs["SyncAVDecode"]
    notes = "\n".join(node["widgets_values"][0] for node in load_ui(GUIDER_SAMPLING)["nodes"]
                      if node["type"] == "MarkdownNote")
    samplers = combo_choices(object_info["KSamplerSelect"]["input"]["required"]["sampler_name"])
    for name in ("dpmpp_2m", "uni_pc", "res_multistep"):
        assert f"`{name}`" in notes and name in samplers, name
    assert "BasicScheduler" in notes
