"""UI-format workflows (as the ComfyUI editor saves them) become the API prompt the editor would queue."""

import copy

import pytest
from fake_comfyui import SAMPLE_API_PROMPT, SAMPLE_OBJECT_INFO, SAMPLE_UI_WORKFLOW

from comfyui_syncav.headless.ui_to_api import UiWorkflowError, is_ui_format, ui_to_api


def _workflow(nodes, links=()):
    return {"nodes": nodes, "links": list(links), "groups": [], "version": 0.4}


def _sockets(*specs):
    """Input or output sockets from (name, type, link or links) triples."""
    return [{"name": name, "type": kind, ("links" if isinstance(link, list) else "link"): link}
            for name, kind, link in specs]


def _node(node_id, node_type, widgets_values=None, inputs=(), outputs=(), mode=0):
    node = {"id": node_id, "type": node_type, "mode": mode, "inputs": list(inputs), "outputs": list(outputs)}
    if widgets_values is not None:
        node["widgets_values"] = widgets_values
    return node


def _info(required=None, optional=None, order=True, name="N", output=("X",)):
    entry = {"input": {"required": required or {}}, "output": list(output), "name": name, "display_name": name}
    if optional:
        entry["input"]["optional"] = optional
    if order:
        entry["input_order"] = {"required": list(required or {}), "optional": list(optional or {})}
    return {name: entry}


def test_sample_graph_with_reroute_bypass_mute_primitive_seed_control_and_note():
    prompt = ui_to_api(copy.deepcopy(SAMPLE_UI_WORKFLOW), SAMPLE_OBJECT_INFO)
    assert prompt == SAMPLE_API_PROMPT


def test_detects_the_format():
    assert is_ui_format(SAMPLE_UI_WORKFLOW)
    assert not is_ui_format(SAMPLE_API_PROMPT)
    assert not is_ui_format({"nodes": {"class_type": "X", "inputs": {}}})  # an API node that happens to be "nodes"
    assert not is_ui_format([1, 2])


def test_control_widgets_follow_seed_names_and_the_option():
    required = {
        "noise_seed": ["INT", {}],  # by name
        "count": ["INT", {"control_after_generate": True}],  # by option
        "seed": ["INT", {"control_after_generate": False}],  # explicitly none, despite the name
        "choice": [["a", "b", "c"], {"control_after_generate": True}],  # a combo: control + filter box
        "last": ["FLOAT", {}],
    }
    values = [11, "fixed", 5, "increment", 3, "c", "randomize", "", 0.25]
    prompt = ui_to_api(_workflow([_node(1, "N", values)]), _info(required))
    assert prompt["1"]["inputs"] == {"noise_seed": 11, "count": 5, "seed": 3, "choice": "c", "last": 0.25}


def test_widget_order_follows_input_order_then_optional():
    required = {"b": ["INT", {}], "a": ["STRING", {}], "model": ["MODEL", {}]}
    optional = {"z": ["BOOLEAN", {}]}
    info = _info(required, optional)
    info["N"]["input_order"] = {"required": ["a", "model", "b"], "optional": ["z"]}
    prompt = ui_to_api(_workflow([_node(1, "N", ["text", 4, True])]), info)
    assert prompt["1"]["inputs"] == {"a": "text", "b": 4, "z": True}
    del info["N"]["input_order"]  # older servers: the order of the JSON objects
    prompt = ui_to_api(_workflow([_node(1, "N", [4, "text", True])]), info)
    assert prompt["1"]["inputs"] == {"b": 4, "a": "text", "z": True}


def test_upload_button_value_is_skipped_when_optional_widgets_follow_it():
    # the frontend adds an "upload" widget to required after the file combo; without input_order it precedes optional
    info = _info({"image": [["x.png", "y.png"], {"image_upload": True}]}, {"frames": ["INT", {}]}, order=False)
    prompt = ui_to_api(_workflow([_node(1, "N", ["y.png", "image", 8])]), info)
    assert prompt["1"]["inputs"] == {"image": "y.png", "frames": 8}
    info["N"]["input_order"] = {"required": ["image"], "optional": ["frames"]}  # with it, "upload" comes last
    prompt = ui_to_api(_workflow([_node(1, "N", ["y.png", 8, "image"])]), info)
    assert prompt["1"]["inputs"] == {"image": "y.png", "frames": 8}


def test_missing_trailing_values_take_the_defaults_and_lists_are_boxed():
    info = _info({"points": ["STRING", {}], "n": ["INT", {"default": 9}], "kind": [["p", "q"], {}],
                  "flag": ["BOOLEAN", {}]})
    prompt = ui_to_api(_workflow([_node(1, "N", [[1, 2]])]), info)
    assert prompt["1"]["inputs"] == {"points": {"__value__": [1, 2]}, "n": 9, "kind": "p", "flag": False}


def test_values_saved_by_name_and_legacy_force_input_slots():
    info = _info({"a": ["INT", {}], "b": ["FLOAT", {"forceInput": True}], "c": ["STRING", {}]})
    prompt = ui_to_api(_workflow([_node(1, "N", {"c": "x", "a": 3, "junk": 1})]), info)
    assert prompt["1"]["inputs"] == {"a": 3, "c": "x"}
    # before frontend 1.16 a forceInput input kept a widget value: three values for two widgets
    prompt = ui_to_api(_workflow([_node(1, "N", [3, 0.5, "x"])]), info)
    assert prompt["1"]["inputs"] == {"a": 3, "c": "x"}
    prompt = ui_to_api(_workflow([_node(1, "N", [3, "x"])]), info)
    assert prompt["1"]["inputs"] == {"a": 3, "c": "x"}


def test_bypass_picks_the_input_of_the_wanted_type_and_links_as_objects_work():
    info = {**_info({"v": ["INT", {}]}, name="Src", output=("A", "B")),
            **_info({"x": ["A", {}], "y": ["B", {}]}, name="Mid", output=("B",)),
            **_info({"in": ["B", {}]}, name="Dst", output=())}
    nodes = [
        _node(1, "Src", [1], outputs=_sockets(("A", "A", [1]), ("B", "B", [2]))),
        _node(2, "Mid", [], mode=4, inputs=_sockets(("x", "A", 1), ("y", "B", 2)), outputs=_sockets(("B", "B", [3]))),
        _node(3, "Dst", [], inputs=_sockets(("in", "B", 3))),
    ]
    links = [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "A"},
             {"id": 2, "origin_id": 1, "origin_slot": 1, "target_id": 2, "target_slot": 1, "type": "B"},
             {"id": 3, "origin_id": 2, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "B"}]
    prompt = ui_to_api(_workflow(nodes, links), info)
    assert prompt["3"]["inputs"] == {"in": ["1", 1]}  # slot 0 of Mid is an A: the B input (slot 1) stands in
    assert set(prompt) == {"1", "3"}


def test_bypassed_output_prefers_the_input_at_the_same_index():
    info = {**_info({"v": ["INT", {}]}, name="Src", output=("B", "B")),
            **_info({"p": ["B", {}], "q": ["B", {}]}, name="Pair", output=("B", "B")),
            **_info({"first": ["B", {}], "second": ["B", {}]}, name="Dst", output=())}
    nodes = [
        _node(1, "Src", [1], outputs=_sockets(("B", "B", [1]), ("B", "B", [2]))),
        _node(2, "Pair", [], mode=4, inputs=_sockets(("p", "B", 1), ("q", "B", 2)),
              outputs=_sockets(("B", "B", [3]), ("B", "B", [4]))),
        _node(3, "Dst", [], inputs=_sockets(("first", "B", 3), ("second", "B", 4))),
    ]
    links = [[1, 1, 0, 2, 0, "B"], [2, 1, 1, 2, 1, "B"], [3, 2, 0, 3, 0, "B"], [4, 2, 1, 3, 1, "B"]]
    prompt = ui_to_api(_workflow(nodes, links), info)
    assert prompt["3"]["inputs"] == {"first": ["1", 0], "second": ["1", 1]}


def test_unknown_class_is_an_error_naming_the_node_unless_it_is_an_unlinked_decoration(caplog):
    info = _info({"v": ["INT", {}]}, name="Known", output=())
    nodes = [_node(1, "Known", [1]), _node(2, "NotInstalled", [], inputs=[{"name": "x", "type": "X", "link": 1}]),
             _node(3, "Src", [], outputs=[{"name": "X", "type": "X", "links": [1]}])]
    with pytest.raises(UiWorkflowError, match=r"2 \(NotInstalled\).*3 \(Src\).*install the custom nodes"):
        ui_to_api(_workflow(nodes, [[1, 3, 0, 2, 0, "X"]]), info)
    # a frontend-only decoration with no links is skipped; a muted unknown node is not even looked at
    nodes = [_node(1, "Known", [1]), _node(4, "Label (rgthree)", ["hello"]), _node(5, "Gone", [], mode=2)]
    assert ui_to_api(_workflow(nodes), info) == {"1": {"inputs": {"v": 1}, "class_type": "Known",
                                                       "_meta": {"title": "Known"}}}
    assert "Label (rgthree)" in caplog.text


def test_subgraphs_and_broken_links_are_reported():
    info = _info({"v": ["INT", {}]}, name="Known", output=())
    workflow = _workflow([_node(7, "6f0c9a1e-uuid", [])])
    workflow["definitions"] = {"subgraphs": [{"id": "6f0c9a1e-uuid", "nodes": []}]}
    with pytest.raises(UiWorkflowError, match="node 7 .* is a subgraph"):
        ui_to_api(workflow, info)
    broken = _workflow([_node(1, "Known", [1], inputs=[{"name": "v", "type": "INT", "link": 99,
                                                         "widget": {"name": "v"}}])])
    with pytest.raises(UiWorkflowError, match="link 99 is not in the workflow's 'links'"):
        ui_to_api(broken, info)
