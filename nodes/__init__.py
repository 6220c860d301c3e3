"""ComfyUI nodes (V3 schema): thin translators between ComfyUI's types and the library.

Every node module imports ComfyUI's node API (``comfy_api.latest``) and ``comfy_bridge`` (the types and helpers nodes
share, and lazy access to the rest of ComfyUI), never another node module. Imports here are relative: ComfyUI loads
this folder under a mangled module name, so ``import comfyui_syncav`` would load a second copy of the package.
"""

from comfy_api.latest import ComfyExtension, io

from .dataset import SyncAVDataset
from .decode import SyncAVDecode
from .dpo_trainer import SyncAVDPOTrainer
from .guider import SyncAVGuider
from .latent import SyncAVEmptyLatent
from .loader import SyncAVLoader
from .lora import SyncAVLoadLoRA, SyncAVSaveLoRA
from .metrics import SyncAVBounceBench, SyncAVSyncMetric
from .negatives import SyncAVNegatives
from .sampler import SyncAVSampler
from .schedule import SyncAVNoise, SyncAVSigmas
from .text_encode import SyncAVTextEncode

NODES: tuple[type[io.ComfyNode], ...] = (
    SyncAVLoader, SyncAVTextEncode, SyncAVEmptyLatent, SyncAVSampler, SyncAVDecode, SyncAVSyncMetric,
    SyncAVBounceBench, SyncAVDataset, SyncAVNegatives, SyncAVDPOTrainer, SyncAVSaveLoRA, SyncAVLoadLoRA,
    SyncAVGuider, SyncAVSigmas, SyncAVNoise)


class SyncAVExtension(ComfyExtension):
    """What ComfyUI's loader asks a V3 node package for."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


__all__ = ["NODES", "SyncAVExtension"]
