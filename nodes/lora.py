"""SyncAV Load LoRA and SyncAV Save LoRA: LoRA files of the joint model (runtime/lora.py) in and out of graphs.

Files live in the ``syncav_lora`` model folder: ``models/syncav_lora`` (Save LoRA writes there) and
``output/syncav_lora`` (the DPO trainer writes there); Load LoRA lists both.
"""

from __future__ import annotations

import os
import re
import shutil

from ..files.atomic import atomic_path, is_hidden_or_temporary
from ..runtime.lora import check_lora_fits, load_lora
from ..files.safetensors_io import CheckpointError
from . import comfy_bridge
from .sampler import joint_model_of

NO_LORA = "none"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_file_name(name, what: str) -> str:
    """A plain file name for a LoRA (letters, digits, '.', '_', '-'; '.safetensors' optional) -> without suffix."""
    if isinstance(name, str) and name.strip().endswith(".safetensors"):
        name = name.strip()[:-len(".safetensors")]
    if not isinstance(name, str) or not _NAME.fullmatch(name.strip()) or name.strip() in (".", ".."):
        raise ValueError(f"{what}: expected a file name of letters, digits, '.', '_' and '-' (no folders), "
                         f"received {name!r}")
    return name.strip()


def copy_atomic(source: str, target: str) -> None:
    """Copy ``source`` to ``target`` through a temporary file beside it (never a half-written file)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def listed_lora_names() -> list[str]:
    """The LoRA files the node offers: ``comfy_bridge.lora_names()`` without hidden or temporary files (a write
    cut short leaves a hidden ``.NAME.XXXX.tmp``; older versions left ``.NAME.XXXX.tmp.safetensors``)."""
    return [name for name in comfy_bridge.lora_names() if not is_hidden_or_temporary(name)]


def read_lora(path: str, what: str):
    """(tensors, metadata) of a SyncAV LoRA file; errors name the input."""
    try:
        return load_lora(path)
    except CheckpointError as error:
        raise CheckpointError(f"{what}: {error}") from None


def resolve_lora(lora: str, lora_path: str = "") -> tuple[str, str]:
    """(path, display name) of the LoRA chosen by the combo or, when connected and not empty, by ``lora_path``."""
    if isinstance(lora_path, str) and lora_path.strip():
        path = lora_path.strip()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"lora_path: no such file {path!r} (expected the lora_path output of SyncAV DPO "
                                    f"Trainer or SyncAV Save LoRA)")
        return path, os.path.basename(path)
    if not isinstance(lora, str) or lora == NO_LORA or not lora:
        raise ValueError(f"lora: choose a LoRA file (from {' or '.join(comfy_bridge.lora_folders())}) or connect "
                         f"lora_path (e.g. from SyncAV DPO Trainer), received {lora!r}")
    path = comfy_bridge.lora_path(lora)
    if path is None and os.path.isfile(lora):
        path = lora                      # outside ComfyUI a path works too (scripts, tests)
    if path is None:
        raise FileNotFoundError(f"lora: {lora!r} not found in {' or '.join(comfy_bridge.lora_folders())}")
    return path, lora


class SyncAVLoadLoRA:
    """Applies a SyncAV LoRA to the joint model with separate strengths for the video and the audio tower."""

    @classmethod
    def INPUT_TYPES(cls):
        def strength(tooltip: str):
            return ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.01, "tooltip": tooltip})

        return {"required": {
            "model": ("MODEL", {"tooltip": "The joint model from SyncAV Loader (or another LoRA node)."}),
            "lora": ([NO_LORA] + listed_lora_names(), {
                "default": NO_LORA,
                "tooltip": "A LoRA from models/syncav_lora (SyncAV Save LoRA) or output/syncav_lora (SyncAV DPO "
                           "Trainer). 'none': use the lora_path input."}),
            "strength_video": strength("Strength on the video tower (0 = the base video tower exactly)."),
            "strength_audio": strength("Strength on the audio tower (0 = the base audio tower exactly)."),
        }, "optional": {
            "lora_path": ("STRING", {"default": "", "forceInput": True,
                                     "tooltip": "A LoRA file path, e.g. the trainer's lora_path output; when "
                                                "connected it is used instead of the lora list."}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The joint model with the LoRA (a new MODEL; the input is unchanged).",)
    FUNCTION = "load"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Applies a SyncAV LoRA (e.g. from the DPO trainer) to the joint model, with one strength per "
                   "tower. Inside ComfyUI it is a native LoRA patch (ComfyUI patches the weights when sampling).")

    def load(self, model, lora: str, strength_video: float, strength_audio: float, lora_path: str = ""):
        joint = joint_model_of(model)
        for name, value in (("strength_video", strength_video), ("strength_audio", strength_audio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -2.0 <= value <= 2.0:
                raise ValueError(f"{name}: expected a number in [-2, 2], received {value!r}")
        path, display = resolve_lora(lora, lora_path)
        tensors, _ = read_lora(path, "lora")
        try:
            check_lora_fits(joint, tensors, where=f"lora {display!r}")
        except CheckpointError as error:
            raise CheckpointError(f"lora: {error}") from None
        return (comfy_bridge.patch_with_lora(model, tensors, float(strength_video), float(strength_audio)),)


class SyncAVSaveLoRA:
    """Keeps a LoRA (e.g. the DPO trainer's) in models/syncav_lora under a name of your choice."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora_path": ("STRING", {"default": "", "forceInput": True,
                                     "tooltip": "The LoRA file to keep: the lora_path output of SyncAV DPO Trainer."}),
            "name": ("STRING", {"default": "syncav_dpo", "multiline": False,
                                "tooltip": "File name in models/syncav_lora ('.safetensors' is added)."}),
            "overwrite": ("BOOLEAN", {"default": False,
                                      "tooltip": "Replace a file of that name (otherwise it is an error)."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora_path",)
    OUTPUT_TOOLTIPS = ("Where the LoRA was saved.",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Copies a SyncAV LoRA into models/syncav_lora/<name>.safetensors, where SyncAV Load LoRA lists "
                   "it (the trainer's own copy in the output folder may be cleaned up with the outputs).")

    def save(self, lora_path: str, name: str, overwrite: bool = False):
        if not isinstance(lora_path, str) or not os.path.isfile(lora_path.strip()):
            raise FileNotFoundError(f"lora_path: expected an existing LoRA file (the lora_path output of SyncAV DPO "
                                    f"Trainer), received {lora_path!r}")
        source = lora_path.strip()
        read_lora(source, "lora_path")                       # refuse anything that is not a SyncAV LoRA
        stem = check_file_name(name, "name")
        comfy_bridge.lora_folders()                          # registers the folder with ComfyUI
        target = os.path.join(comfy_bridge.lora_save_folder(), f"{stem}.safetensors")
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"name: {stem}.safetensors already exists in models/syncav_lora; set overwrite to "
                                  f"true or choose another name")
        if os.path.abspath(source) != os.path.abspath(target):
            copy_atomic(source, target)
        return {"ui": {"text": [f"saved models/syncav_lora/{stem}.safetensors"]}, "result": (target,)}
