"""ComfyUI-style model folders on disk: ``<models>/<folder>/**/<file>``, the one lookup scripts and tests use.

Inside ComfyUI the nodes ask ComfyUI's ``folder_paths`` first (extra_model_paths.yaml included) and fall back to
these functions for folder names ComfyUI does not know.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

MODELS_DIR_VARIABLE = "SYNCAV_MODELS_DIR"


def default_models_dir() -> str:
    """Where scripts look for ComfyUI-style model folders: ``$SYNCAV_MODELS_DIR``, else ``./models``."""
    return os.path.abspath(os.environ.get(MODELS_DIR_VARIABLE) or "models")


# finder(folders, names) -> full path of the first file found, or None
FileFinder = Callable[[Sequence[str], Sequence[str]], Optional[str]]


def folder_tree_finder(models_dir: str | os.PathLike) -> FileFinder:
    """A finder over a ComfyUI-style ``models`` folder on disk: ``<models_dir>/<folder>/**/<name>``."""
    root = os.fspath(models_dir)

    def find(folders: Sequence[str], names: Sequence[str]) -> Optional[str]:
        for folder in folders:
            base = os.path.join(root, folder)
            if not os.path.isdir(base):
                continue
            for name in names:
                direct = os.path.join(base, name)
                if os.path.isfile(direct):
                    return direct
            for directory, _, files in sorted(os.walk(base)):
                for name in names:
                    if name in files:
                        return os.path.join(directory, name)
        return None

    return find


# describe(folders) -> the directories searched for them, for error messages
FolderDescriber = Callable[[Sequence[str]], Sequence[str]]


def folder_tree_paths(models_dir: str | os.PathLike) -> FolderDescriber:
    """The describer that goes with ``folder_tree_finder(models_dir)``: the folders it searches."""
    root = os.fspath(models_dir)
    return lambda folders: [os.path.join(root, folder) for folder in folders]
