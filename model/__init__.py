"""The joint audio-video DiT: configs and presets, towers, RoPE, attention, norms, batch types, checkpoint loading."""

from .checkpoint import infer_config, load_joint_model, save_joint_model
from .config import PRESETS, JointConfig, TowerConfig, audio_rope_scale, get_preset
from .joint import JointModel
from ..files.safetensors_io import CheckpointError

__all__ = ["CheckpointError", "JointConfig", "JointModel", "PRESETS", "TowerConfig", "audio_rope_scale",
           "get_preset", "infer_config", "load_joint_model", "save_joint_model"]
