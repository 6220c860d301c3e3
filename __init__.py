"""ComfyUI-SyncAV: synchronized audio-video generation and sync post-training.

This folder is both a ComfyUI custom-node package (ComfyUI imports it by file path and reads
NODE_CLASS_MAPPINGS) and the importable library ``comfyui_syncav`` (model/, train/). Importing it never
needs ComfyUI: nodes/ imports ComfyUI's modules lazily, inside the functions that use them.
"""

if __package__:
    # Before anything computes: MKL fixes its summation mode at its first product (runtime/reproducible_blas.py).
    from .runtime.reproducible_blas import enable_reproducible_blas

    enable_reproducible_blas()
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a lone file, outside any package: pytest does this to the folder above tests/ when the folder's
    # name is not a valid module name (a clone named ComfyUI-SyncAV). Nothing to register then.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
