"""The house rules of the source tree, checked on the files themselves (no imports executed).

* Imports point down: a folder may import from its own level or a lower one of ``LAYERS``, never a higher one.
* No circles between modules.
* Nodes only translate: no node module imports another; they share only ``comfy_bridge`` (ComfyUI's runtime)
  and ``comfy_types`` (the values they pass each other), which import no node module.
* One concept per file: no product file over 450 lines (data tables listed in ``DATA_TABLES`` excepted).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_syncav"

# Lowest first. A module of layer i may import modules of layers 0..i.
LAYERS = ("files", "metrics", "runtime", "model", "text", "codecs", "guidance", "generation", "ovi", "negatives",
          "bouncebench", "data", "train", "headless", "cli", "nodes", "")
NODES_SHARED = {"nodes.comfy_bridge", "nodes.comfy_types"}   # what node modules share: not nodes
MAX_LINES = 450
DATA_TABLES: dict[str, str] = {}     # path -> why it may be longer


def product_files() -> list[Path]:
    files = [p for p in ROOT.glob("*.py")]
    for layer in LAYERS:
        if layer and (ROOT / layer).is_dir():
            files += sorted((ROOT / layer).rglob("*.py"))
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    top = module.split(".")[0] if module else ""
    return top if top in LAYERS else ""


def internal_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (relative or absolute), resolved to module names."""
    module = module_name(path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = [p for p in module.split(".") if p]
                base = base if is_package else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module[len(PACKAGE) + 1:]
            else:
                continue
            targets = [target] + [f"{target}.{alias.name}".lstrip(".") for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name[len(PACKAGE) + 1:] for a in node.names if a.name.startswith(PACKAGE + ".")]
        found |= {t for t in targets if t in modules and t != module}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = product_files()
    modules = {module_name(p) for p in files}
    return {module_name(p): internal_imports(p, modules) for p in files}


def test_imports_point_down(graph):
    upward = [f"{src} -> {dst}" for src, dsts in graph.items() for dst in dsts
              if LAYERS.index(layer_of(dst)) > LAYERS.index(layer_of(src))]
    assert not upward, "imports from a lower folder to a higher one:\n" + "\n".join(sorted(upward))


def test_the_check_sees_imports(graph):
    # The checker itself: a known downward import is found, so an empty upward list means something.
    assert "files.safetensors_io" in graph["model.checkpoint"]
    assert "guidance.sync_cfg" in graph["generation.generate"]


def test_no_circles(graph):
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dst in sorted(graph.get(module, ())):
            if dst.startswith(module + ".") or module == "":
                continue      # a package importing its own submodules is not a circle
            if state.get(dst) == 1:
                cycles.append(" -> ".join(stack[stack.index(dst):] + [dst]))
            elif dst not in state:
                visit(dst, stack + [dst])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_no_node_module_imports_another(graph):
    offending = [f"{src} -> {dst}" for src, dsts in graph.items() if src.startswith("nodes.")
                 for dst in dsts if dst.startswith("nodes.") and dst not in NODES_SHARED]
    assert not offending, "node modules importing node modules:\n" + "\n".join(sorted(offending))


def test_the_shared_node_modules_import_no_node_module(graph):
    for shared in NODES_SHARED:
        assert not {d for d in graph[shared] if d.startswith("nodes") and d not in NODES_SHARED}, shared


def test_files_stay_small():
    long = {str(p.relative_to(ROOT)): n for p in product_files()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(ROOT)) not in DATA_TABLES}
    assert not long, f"product files over {MAX_LINES} lines: {long}"


def test_every_subpackage_is_packaged():
    """pyproject lists the packages (the repository root maps onto the import name): a new folder left out of the list
    would be missing from a wheel, though an editable install still finds it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {PACKAGE} | {f"{PACKAGE}.{layer}" for layer in LAYERS if layer and (ROOT / layer / "__init__.py").is_file()}
    assert listed == folders
