"""Convert a workflow saved by the ComfyUI frontend (UI format) into the prompt ``POST /prompt`` takes (API format).

UI format: ``{"nodes": [...], "links": [...], "groups": [...], "version": 0.4, ...}``. Each node holds its widget
values as a bare list (``widgets_values``) in the order the frontend created the widgets, its input sockets (each
with the id of the link feeding it), and a mode (0 always, 2 muted, 4 bypassed). API format: ``{node_id:
{"class_type", "inputs": {name: value | [source_id, output_slot]}, "_meta": {"title"}}}``.

The widget order is not stored in the file: it is rebuilt from the server's ``/object_info`` the way the frontend
builds a node, i.e. the inputs in ``input_order`` (required, then optional) whose type has a widget, each followed
by the extra widgets the frontend adds beside it (the "control after generate" combo after seeds, and a filter box
after a combo that has one). The rest follows what the frontend does when it queues a graph:

- muted nodes are left out, and so are inputs linked to them;
- a bypassed node is passed through: an input it feeds gets the bypassed node's input of the same type;
- Reroute nodes are followed to the real source;
- a PrimitiveNode pushes its value into the widgets it is linked to;
- Note / MarkdownNote nodes are ignored;
- a widget whose input socket is linked (a "converted" widget) takes the link instead of its stored value.

Frontend-only text rewriting (``%date%`` in file names, ``{a|b}`` dynamic prompts) is not applied.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterable

log = logging.getLogger(__name__)

MODE_MUTED = 2  # LGraphEventMode.NEVER
MODE_BYPASSED = 4  # LGraphEventMode.BYPASS

# Frontend-only nodes: they exist in the editor and never reach the server.
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
VIRTUAL_TYPES = NOTE_TYPES | {REROUTE, PRIMITIVE}

# Input types the stock frontend draws as widgets (its ComfyWidgets table); any other type is a link-only socket.
WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "IMAGEUPLOAD", "FILEUPLOAD", "COLOR", "IMAGECOMPARE",
    "TREESELECT", "MULTISELECT", "CHART", "GALLERIA", "SELECTBUTTON", "TEXTAREA",
    "AUDIO_UI", "AUDIOUPLOAD",  # added by the frontend's audio extension to the audio load/save nodes
})
SEED_NAMES = ("seed", "noise_seed")  # INT inputs that get a control widget even without the option
AUDIO_PLAYER_CLASSES = frozenset({"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus"})

_FORCED = object()  # a widget slot of a forceInput input in a workflow saved before frontend 1.16


class UiWorkflowError(ValueError):
    """The UI-format workflow cannot be converted (a missing node class, a broken link, an unsupported feature)."""


def is_ui_format(workflow: Any) -> bool:
    """True for a workflow as the frontend saves it (a ``nodes`` list), False for an API-format prompt."""
    return isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list)


def ui_to_api(ui_workflow: dict, object_info: dict) -> dict:
    """The API-format prompt for ``ui_workflow``, using ``object_info`` (the server's ``GET /object_info``) to name the
    widget values. Raises UiWorkflowError when a node's class is unknown to the server or the graph is inconsistent."""
    if not is_ui_format(ui_workflow):
        keys = sorted(ui_workflow)[:8] if isinstance(ui_workflow, dict) else "-"
        raise UiWorkflowError("expected a UI-format workflow (a dict with a 'nodes' list), got "
                              f"{type(ui_workflow).__name__} with keys {keys}")
    graph = _Graph(ui_workflow)
    _check_supported(graph, ui_workflow, object_info)

    prompt: dict[str, dict] = {}
    for node in graph.nodes.values():
        node_type = node.get("type")
        if node_type in VIRTUAL_TYPES or node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            continue
        if node_type not in object_info:
            continue  # a frontend-only decoration with no links (checked in _check_supported)
        node_def = object_info[node_type]
        inputs: dict[str, Any] = {}
        for name, value in _widget_values(node, node_def):
            inputs[name] = _wrap_value(value)
        for slot, socket in enumerate(node.get("inputs") or []):
            if socket.get("link") is None:
                continue
            source = graph.resolve_input(node, slot)
            if source is None:
                continue  # nothing real behind the link: a widget keeps its own value, a socket stays empty
            if isinstance(source, _PrimitiveValue):
                inputs[socket["name"]] = _wrap_value(source.value)
            else:
                inputs[socket["name"]] = [source[0], source[1]]
        prompt[_node_key(node)] = {
            "inputs": inputs,
            "class_type": node_type,
            "_meta": {"title": node.get("title") or node_def.get("display_name") or node_type},
        }

    # Links into nodes that were left out (muted) are dropped, like the frontend does; the server then reports a
    # missing required input rather than a dangling link.
    for entry in prompt.values():
        for name, value in list(entry["inputs"].items()):
            if _is_link(value) and value[0] not in prompt:
                del entry["inputs"][name]
    return copy.deepcopy(prompt)  # share no list or dict with ui_workflow


# ---------------------------------------------------------------------------------------------------------------
# graph walking


class _PrimitiveValue:
    """What an input linked to a PrimitiveNode resolves to: the primitive's value rather than a link."""

    def __init__(self, value: Any):
        self.value = value


class _Graph:
    def __init__(self, ui_workflow: dict):
        self.nodes: dict[str, dict] = {}
        for node in ui_workflow["nodes"]:
            if not isinstance(node, dict) or "id" not in node:
                raise UiWorkflowError(f"every entry of 'nodes' needs an 'id'; got {str(node)[:120]}")
            self.nodes[_node_key(node)] = node
        # links: [id, origin_id, origin_slot, target_id, target_slot, type] (schema 0.4) or objects (schema 1)
        self.links: dict[str, tuple[str, int]] = {}
        for link in ui_workflow.get("links") or []:
            if isinstance(link, dict):
                link_id, origin_id, origin_slot = link.get("id"), link.get("origin_id"), link.get("origin_slot")
            elif isinstance(link, (list, tuple)) and len(link) >= 3:
                link_id, origin_id, origin_slot = link[0], link[1], link[2]
            else:
                raise UiWorkflowError(f"a link should be [id, origin_id, origin_slot, target_id, target_slot, type] "
                                      f"or an object with those keys; got {str(link)[:120]}")
            self.links[str(link_id)] = (str(origin_id), int(origin_slot))

    def resolve_input(self, node: dict, slot: int, wanted_type: Any = None, seen: set | None = None):
        """The real source feeding ``node``'s input ``slot``: ``(node_id, output_slot)``, a _PrimitiveValue, or None."""
        seen = set() if seen is None else seen
        key = (_node_key(node), "in", slot)
        if key in seen:
            raise UiWorkflowError(f"node {_describe(node)}: links loop back through input {slot}")
        seen.add(key)
        sockets = node.get("inputs") or []
        if slot >= len(sockets):
            raise UiWorkflowError(f"node {_describe(node)} has no input slot {slot}")
        socket = sockets[slot]
        link_id = socket.get("link")
        if link_id is None:
            return None
        if str(link_id) not in self.links:
            raise UiWorkflowError(f"node {_describe(node)}, input {socket.get('name')!r}: link {link_id} is not in "
                                  "the workflow's 'links'")
        origin_id, origin_slot = self.links[str(link_id)]
        origin = self.nodes.get(origin_id)
        if origin is None:
            raise UiWorkflowError(f"node {_describe(node)}, input {socket.get('name')!r}: link {link_id} comes from "
                                  f"node {origin_id}, which is not in the workflow")
        return self.resolve_output(origin, origin_slot, wanted_type if wanted_type is not None else socket.get("type"),
                                   seen)

    def resolve_output(self, node: dict, slot: int, wanted_type: Any, seen: set):
        key = (_node_key(node), "out", slot)
        if key in seen:
            raise UiWorkflowError(f"node {_describe(node)}: links loop back through output {slot}")
        seen.add(key)
        if node.get("mode") == MODE_BYPASSED:
            through = _bypass_input_slot(node, slot, wanted_type)
            if through < 0:
                return None  # no input of a matching type: the consumer gets nothing
            return self.resolve_input(node, through, None, seen)
        node_type = node.get("type")
        if node_type == PRIMITIVE:
            values = node.get("widgets_values") or [None]
            return _PrimitiveValue(values[0] if isinstance(values, list) else None)
        if node_type in VIRTUAL_TYPES:  # Reroute: output i passes input i through
            if slot < len(node.get("inputs") or []):
                return self.resolve_input(node, slot, wanted_type, seen)
            return None
        return (_node_key(node), slot)


def _bypass_input_slot(node: dict, output_slot: int, wanted_type: Any) -> int:
    """Which input of a bypassed node stands in for its output ``output_slot`` (-1: none): the input at the same
    index if its type fits, else the first input of exactly the wanted type, else the first that fits."""
    sockets = node.get("inputs") or []
    outputs = node.get("outputs") or []
    output_type = outputs[output_slot].get("type") if output_slot < len(outputs) else "*"
    if wanted_type in ("*", "", None):
        return output_slot if output_slot < len(sockets) else (0 if sockets else -1)
    if output_slot < len(sockets):
        same = sockets[output_slot].get("type")
        if _types_fit(same, output_type) and _types_fit(same, wanted_type):
            return output_slot
    for index, socket in enumerate(sockets):
        if socket.get("type") == wanted_type:
            return index
    for index, socket in enumerate(sockets):
        if _types_fit(socket.get("type"), output_type) and _types_fit(socket.get("type"), wanted_type):
            return index
    return -1


def _types_fit(a: Any, b: Any) -> bool:
    """LiteGraph's connection rule: equal, a wildcard/empty on either side, or overlapping comma-separated lists."""
    if not a or not b or a == "*" or b == "*" or a == b:
        return True
    a_set = {t.strip().lower() for t in str(a).split(",")}
    b_set = {t.strip().lower() for t in str(b).split(",")}
    return bool(a_set & b_set)


def _check_supported(graph: _Graph, ui_workflow: dict, object_info: dict) -> None:
    subgraph_ids = {str(s.get("id")) for s in ((ui_workflow.get("definitions") or {}).get("subgraphs") or [])}
    group_nodes = set(((ui_workflow.get("extra") or {}).get("groupNodes") or {}))
    linked = _linked_node_keys(graph)
    missing: list[str] = []
    for key, node in graph.nodes.items():
        node_type = node.get("type")
        if node_type in VIRTUAL_TYPES or node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            continue
        if str(node_type) in subgraph_ids:
            raise UiWorkflowError(f"node {_describe(node)} is a subgraph, which this converter does not expand; "
                                  "unpack it in the editor (right click > Unpack Subgraph) or export the workflow "
                                  "in API format")
        if str(node_type).startswith(("workflow>", "workflow/")) or node_type in group_nodes:
            raise UiWorkflowError(f"node {_describe(node)} is a group node, which this converter does not expand; "
                                  "convert it back to nodes in the editor or export the workflow in API format")
        if node_type in object_info:
            continue
        if key in linked:
            missing.append(_describe(node))
        else:
            log.warning("skipping node %s: its class is unknown to the server and it has no links "
                        "(a frontend-only node?)", _describe(node))
    if missing:
        raise UiWorkflowError(f"the server does not know the class of node(s) {', '.join(missing)}: install the "
                              "custom nodes that provide them (the server's /object_info lists "
                              f"{len(object_info)} classes)")


def _linked_node_keys(graph: _Graph) -> set[str]:
    keys = set()
    for node in graph.nodes.values():
        for socket in node.get("inputs") or []:
            if socket.get("link") is not None:
                keys.add(_node_key(node))
        for socket in node.get("outputs") or []:
            if socket.get("links"):
                keys.add(_node_key(node))
    return keys


# ---------------------------------------------------------------------------------------------------------------
# widget values


def _widget_values(node: dict, node_def: dict) -> list[tuple[str, Any]]:
    """``(input_name, value)`` for every widget of ``node``, by matching ``widgets_values`` to the widget order."""
    stored = node.get("widgets_values")
    specs = _ordered_input_specs(node_def)
    if isinstance(stored, dict):  # some custom nodes save their widget values by name
        return [(name, stored[name]) for name, _, _ in specs if name in stored and _widget_type(_spec(specs, name))]
    stored = list(stored or [])

    slots, slots_with_forced = _widget_slots(specs)
    if len(stored) == len(slots_with_forced) != len(slots):
        # Saved before frontend 1.16, when forceInput inputs still owned a (hidden) widget value.
        slots = slots_with_forced
    known = {name for name, _, _ in specs}
    values = []
    for index, slot in enumerate(slots):
        if slot is None or slot is _FORCED or slot not in known:
            continue  # an extra widget (control, filter, upload button) or one the frontend injected
        if index < len(stored):
            values.append((slot, stored[index]))
        else:  # the node gained an input after the workflow was saved: the frontend shows its default
            values.append((slot, _default_value(_spec(specs, slot))))
    return values


def _ordered_input_specs(node_def: dict) -> list[tuple[str, list, bool]]:
    """``(name, spec, injected)`` in the frontend's widget creation order, with the inputs its extensions add."""
    declared = node_def.get("input") or {}
    required = dict(declared.get("required") or {})
    optional = dict(declared.get("optional") or {})
    injected: dict[str, list] = {}
    # The audio player and the upload buttons are inputs the frontend adds to 'required' (uploadAudio.ts and
    # uploadImage.ts); the player comes first.
    if node_def.get("name") in AUDIO_PLAYER_CLASSES:
        injected["audioUI"] = ["AUDIO_UI", {}]
    if _options(required.get("audio")).get("audio_upload"):
        injected["upload"] = ["AUDIOUPLOAD", {}]
    for spec in required.values():
        options = _options(spec)
        is_combo = isinstance(spec[0], list) or spec[0] == "COMBO"
        if is_combo and any(options.get(k) is True for k in ("image_upload", "video_upload", "animated_image_upload")):
            injected["upload"] = ["IMAGEUPLOAD", {}]
            break

    order = node_def.get("input_order")
    if order:
        names = [(n, required[n], False) for n in order.get("required", []) if n in required]
        names += [(n, optional[n], False) for n in order.get("optional", []) if n in optional and n not in required]
        listed = {n for n, _, _ in names}
        # inputs missing from input_order, then the injected ones, come last
        names += [(n, s, False) for n, s in {**required, **optional}.items() if n not in listed]
        names += [(n, s, True) for n, s in injected.items() if n not in listed and n not in required]
        return names
    return ([(n, s, False) for n, s in required.items()]
            + [(n, s, True) for n, s in injected.items() if n not in required]
            + [(n, s, False) for n, s in optional.items() if n not in required])


def _widget_slots(specs: list[tuple[str, list, bool]]) -> tuple[list, list]:
    """The widget positions: an input name, None for an extra widget; and the same counting forceInput inputs."""
    slots: list = []
    slots_with_forced: list = []
    for name, spec, injected in specs:
        widget_type = _widget_type(spec)
        if widget_type is None:
            continue
        options = _options(spec)
        extras = [None] * _extra_widget_count(name, widget_type, options)
        if options.get("forceInput"):
            # frontend < 1.16 counted a control widget for these whenever the option or a seed name asked for one
            control = bool(options.get("control_after_generate")) or name in SEED_NAMES
            slots_with_forced += [_FORCED] + [None] * int(control)
            continue
        slot = None if injected else name
        slots += [slot] + extras
        slots_with_forced += [slot] + extras
    return slots, slots_with_forced


def _extra_widget_count(name: str, widget_type: str, options: dict) -> int:
    """Widgets the frontend adds right after this one: "control after generate" (INT, COMBO) and, for a COMBO, the
    filter box that goes with it."""
    control = options.get("control_after_generate")
    if widget_type == "INT":
        if control is None:
            control = name in SEED_NAMES
        return 1 if control else 0
    if widget_type == "COMBO" and control:
        return 2
    return 0


def _widget_type(spec: Any) -> str | None:
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):
        return "COMBO"
    widget_type = _options(spec).get("widgetType") or spec[0]
    return widget_type if widget_type in WIDGET_TYPES else None


def _default_value(spec: list) -> Any:
    options = _options(spec)
    widget_type = _widget_type(spec)
    if "default" in options:
        return options["default"]
    if widget_type == "COMBO":
        choices = spec[0] if isinstance(spec[0], list) else options.get("options") or []
        return choices[0] if choices else None
    return {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}.get(widget_type)


def _options(spec: Any) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def _spec(specs: Iterable[tuple[str, list, bool]], name: str) -> list:
    return next(spec for n, spec, _ in specs if n == name)


# ---------------------------------------------------------------------------------------------------------------
# small helpers


def _wrap_value(value: Any) -> Any:
    """A list widget value is boxed so the server does not read it as a link (it unboxes ``__value__``)."""
    return {"__value__": value} if isinstance(value, list) else value


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _node_key(node: dict) -> str:
    return str(node.get("id"))


def _describe(node: dict) -> str:
    title = node.get("title")
    node_type = node.get("type")
    return f"{node.get('id')} ({node_type}{f', {title!r}' if title and title != node_type else ''})"
