"""ComfyUI-SyncAV: synchronized audio-video generation and sync post-training.

This folder is both a ComfyUI custom-node package (ComfyUI imports it by file path and reads
NODE_CLASS_MAPPINGS) and the importable library ``comfyui_syncav`` (model/, train/). Importing it never
needs ComfyUI: nodes/ imports ComfyUI's modules lazily, inside the functions that use them.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
