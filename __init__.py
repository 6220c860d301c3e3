"""ComfyUI-SyncAV: synchronized audio-video generation and sync post-training.

This folder is both a ComfyUI custom-node package (ComfyUI imports it by file path and calls ``comfy_entrypoint``, the
V3 node API's entry) and the importable library ``comfyui_syncav``. Importing it never needs ComfyUI: nodes/ is
imported only when ComfyUI asks for the nodes.
"""

if __package__:
    # Before anything computes: MKL fixes its summation mode at its first product (runtime/reproducible_blas.py).
    from .runtime.reproducible_blas import enable_reproducible_blas

    enable_reproducible_blas()

    async def comfy_entrypoint():
        """ComfyUI's V3 entry: the extension listing this package's nodes."""
        from .nodes import SyncAVExtension

        return SyncAVExtension()

    __all__ = ["comfy_entrypoint"]
# Imported as a lone file, outside any package (pytest does this to the folder above tests/ when the folder's name
# is not a valid module name, a clone named ComfyUI-SyncAV): nothing to register then.
