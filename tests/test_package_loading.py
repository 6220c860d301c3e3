"""The repository folder loads the way ComfyUI loads a custom node: by file path, under a mangled module name."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_folder_loads_as_a_comfyui_custom_node_without_comfyui():
    # ComfyUI registers the folder under its full path with dots replaced (nodes.py, load_custom_node).
    code = f"""
import importlib.util, sys
name = {str(REPO).replace('.', '_x_')!r}
spec = importlib.util.spec_from_file_location(name, {str(REPO / '__init__.py')!r})
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
assert not any(m == 'comfy' or m.startswith('comfy.') for m in sys.modules), 'imported ComfyUI'
print(sorted(module.NODE_CLASS_MAPPINGS))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = eval(out.stdout.strip().splitlines()[-1])
    from comfyui_syncav.nodes import NODE_CLASS_MAPPINGS
    assert names == sorted(NODE_CLASS_MAPPINGS)
    assert {"SyncAVLoader", "SyncAVTextEncode", "SyncAVEmptyLatent", "SyncAVSampler", "SyncAVDecode"} <= set(names)


def test_lone_file_import_registers_nothing():
    """What pytest does to the folder above tests/ when its name is not a module name (ComfyUI-SyncAV)."""
    spec = importlib.util.spec_from_file_location("__init__", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {}
