"""ComfyUI nodes: thin translators between ComfyUI's types and the model/ and train/ library.

Only nodes/comfy_bridge.py touches ComfyUI, lazily; every import here is relative (ComfyUI loads this folder under a
mangled module name, so ``import comfyui_syncav`` would load a second copy of the package).
"""

from .dataset import SyncAVDataset
from .decode import SyncAVDecode
from .dpo_trainer import SyncAVDPOTrainer
from .latent import SyncAVEmptyLatent
from .loader import SyncAVLoader
from .lora import SyncAVLoadLoRA, SyncAVSaveLoRA
from .metrics import SyncAVBounceBench, SyncAVSyncMetric
from .negatives import SyncAVNegatives
from .sampler import SyncAVSampler
from .text_encode import SyncAVTextEncode

NODE_CLASS_MAPPINGS: dict = {
    "SyncAVLoader": SyncAVLoader,
    "SyncAVTextEncode": SyncAVTextEncode,
    "SyncAVEmptyLatent": SyncAVEmptyLatent,
    "SyncAVSampler": SyncAVSampler,
    "SyncAVDecode": SyncAVDecode,
    "SyncAVSyncMetric": SyncAVSyncMetric,
    "SyncAVBounceBench": SyncAVBounceBench,
    "SyncAVDataset": SyncAVDataset,
    "SyncAVNegatives": SyncAVNegatives,
    "SyncAVDPOTrainer": SyncAVDPOTrainer,
    "SyncAVSaveLoRA": SyncAVSaveLoRA,
    "SyncAVLoadLoRA": SyncAVLoadLoRA,
}

NODE_DISPLAY_NAME_MAPPINGS: dict = {
    "SyncAVLoader": "SyncAV Loader",
    "SyncAVTextEncode": "SyncAV Text Encode",
    "SyncAVEmptyLatent": "SyncAV Empty AV Latent",
    "SyncAVSampler": "SyncAV SyncCFG Sampler",
    "SyncAVDecode": "SyncAV Decode",
    "SyncAVSyncMetric": "SyncAV Sync Metric",
    "SyncAVBounceBench": "SyncAV BounceBench Clip",
    "SyncAVDataset": "SyncAV AV Dataset",
    "SyncAVNegatives": "SyncAV Temporal Negative Builder",
    "SyncAVDPOTrainer": "SyncAV DPO Trainer",
    "SyncAVSaveLoRA": "SyncAV Save LoRA",
    "SyncAVLoadLoRA": "SyncAV Load LoRA",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
