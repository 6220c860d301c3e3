"""The repository folder loads the way ComfyUI loads a custom node: by file path, under a mangled module name, and
offers its nodes through the V3 entry point ``comfy_entrypoint`` (no NODE_CLASS_MAPPINGS, which ComfyUI's loader
would take instead)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LOAD_BY_PATH = f"""
import importlib.util, sys
name = {str(REPO).replace('.', '_x_')!r}
spec = importlib.util.spec_from_file_location(name, {str(REPO / '__init__.py')!r})
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
"""


def test_folder_loads_as_a_custom_node_without_importing_comfyui():
    code = LOAD_BY_PATH + """
assert not any(m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths') for m in sys.modules), 'imported ComfyUI'
assert not hasattr(module, 'NODE_CLASS_MAPPINGS'), 'a V1 mapping would hide comfy_entrypoint from ComfyUI'
print(callable(module.comfy_entrypoint))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_comfy_entrypoint_lists_every_node_with_its_schema():
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("ComfyUI's node API not found (set COMFYUI_DIR)")
    code = LOAD_BY_PATH + f"""
import asyncio
sys.path.append({comfy_dir!r})
extension = asyncio.run(module.comfy_entrypoint())
print(sorted(cls.GET_SCHEMA().node_id for cls in asyncio.run(extension.get_node_list())))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SYNCAV_NO_COMFYUI": "1"})
    assert out.returncode == 0, out.stderr
    names = eval(out.stdout.strip().splitlines()[-1])
    assert len(names) == 15 and all(name.startswith("SyncAV") for name in names)
    assert {"SyncAVLoader", "SyncAVTextEncode", "SyncAVEmptyLatent", "SyncAVSampler", "SyncAVDecode"} <= set(names)


def test_lone_file_import_registers_nothing():
    """What pytest does to the folder above tests/ when its name is not a module name (ComfyUI-SyncAV)."""
    spec = importlib.util.spec_from_file_location("__init__", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not hasattr(module, "comfy_entrypoint") and not hasattr(module, "NODE_CLASS_MAPPINGS")
