"""The package's V3 nodes for unit tests, called directly (no server), with their ComfyUI stand-ins.

``node(name)`` gives a caller whose methods (any name: ``load``, ``sample`` ...) run the node's ``execute`` and
return what a graph would see: the output tuple, or ``{"ui": ..., "result": ...}`` when the node also sends UI data.
``info(name)`` is the node's /object_info entry as ComfyUI builds it from the schema. Needs ComfyUI's node API
(``comfy_api``) importable: tests/conftest.py puts ``$COMFYUI_DIR`` on the path.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("SYNCAV_REQUIRE_COMFYUI"):        # CI: the node tests must run, not skip
    import comfy_api.latest  # noqa: F401
else:
    pytest.importorskip("comfy_api.latest", reason="ComfyUI's node API not found (set COMFYUI_DIR)")

from comfyui_syncav.nodes import NODES  # noqa: E402

NODE_CLASSES = {cls.GET_SCHEMA().node_id: cls for cls in NODES}


def info(name: str) -> dict:
    """The node's /object_info entry (input, input_order, output, output_name, output_tooltips, ...)."""
    return NODE_CLASSES[name].GET_NODE_INFO_V1()


def options(name: str, input_name: str) -> list:
    """The choices of a combo input."""
    inputs = info(name)["input"]
    spec = {**inputs.get("required", {}), **inputs.get("optional", {})}[input_name]
    return list(spec[1]["options"]) if spec[0] == "COMBO" else list(spec[0])


def run(cls, *args, **kwargs):
    out = cls.execute(*args, **kwargs)
    result = tuple(out.args)
    if out.ui is None:
        return result
    ui = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
    return {"ui": {key: list(value) for key, value in ui.items()}, "result": result}


class _Caller:
    def __init__(self, cls):
        self.cls = cls

    def __getattr__(self, method: str):
        return lambda *args, **kwargs: run(self.cls, *args, **kwargs)


def node(name: str) -> _Caller:
    return _Caller(NODE_CLASSES[name])
