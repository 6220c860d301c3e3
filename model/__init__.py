"""The joint audio-video model and inference: configs, the dual-stream DiT, codecs, text encoders, sampling."""

from .checkpoint import infer_config, load_joint_model, save_joint_model
from .config import PRESETS, JointConfig, TowerConfig, audio_rope_scale, get_preset
from .joint import JointModel
from .safetensors_io import CheckpointError

__all__ = ["CheckpointError", "JointConfig", "JointModel", "PRESETS", "TowerConfig", "audio_rope_scale",
           "get_preset", "infer_config", "load_joint_model", "save_joint_model"]
