"""SyncAV Load LoRA and SyncAV Save LoRA: LoRA files of the joint model (runtime/lora.py) in and out of graphs.

Files live in the ``syncav_lora`` model folder: ``models/syncav_lora`` (Save LoRA writes there) and
``output/syncav_lora`` (the DPO trainer writes there); Load LoRA lists both.
"""

from __future__ import annotations

import os

from comfy_api.latest import io, ui

from ..files.atomic import check_file_stem, copy_atomic
from ..files.safetensors_io import CheckpointError
from ..runtime.lora import check_lora_fits
from . import comfy_bridge, comfy_types


def _strength(name: str, tooltip: str):
    return io.Float.Input(name, default=1.0, min=-2.0, max=2.0, step=0.01, tooltip=tooltip)


class SyncAVLoadLoRA(io.ComfyNode):
    """Applies a SyncAV LoRA to the joint model with separate strengths for the video and the audio tower."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVLoadLoRA", display_name="SyncAV Load LoRA", category=comfy_types.CATEGORY,
            description="Applies a SyncAV LoRA (e.g. from the DPO trainer) to the joint model, with one strength "
                        "per tower. Inside ComfyUI it is a native LoRA patch (ComfyUI patches the weights when "
                        "sampling).",
            inputs=[
                io.Model.Input("model", tooltip="The joint model from SyncAV Loader (or another LoRA node)."),
                io.Combo.Input("lora", options=[comfy_bridge.NO_LORA] + comfy_bridge.listed_lora_names(),
                               default=comfy_bridge.NO_LORA,
                               tooltip="A LoRA from models/syncav_lora (SyncAV Save LoRA) or output/syncav_lora "
                                       "(SyncAV DPO Trainer). 'none': use the lora_path input."),
                _strength("strength_video", "Strength on the video tower (0 = the base video tower exactly)."),
                _strength("strength_audio", "Strength on the audio tower (0 = the base audio tower exactly)."),
                io.String.Input("lora_path", default="", force_input=True, optional=True,
                                tooltip="A LoRA file path, e.g. the trainer's lora_path output; when connected it "
                                        "is used instead of the lora list."),
            ],
            outputs=[comfy_types.output(io.Model, "model",
                                         "The joint model with the LoRA (a new MODEL; the input is unchanged).")])

    @classmethod
    def execute(cls, model, lora: str, strength_video: float, strength_audio: float,
                lora_path: str = "") -> io.NodeOutput:
        joint = comfy_types.joint_model_of(model)
        path, display = comfy_bridge.resolve_lora(lora, lora_path)
        tensors, _ = comfy_bridge.read_lora(path, "lora")
        try:
            check_lora_fits(joint, tensors, where=f"lora {display!r}")
        except CheckpointError as error:
            raise CheckpointError(f"lora: {error}") from None
        return io.NodeOutput(comfy_bridge.patch_with_lora(model, tensors, strength_video, strength_audio))


class SyncAVSaveLoRA(io.ComfyNode):
    """Keeps a LoRA (e.g. the DPO trainer's) in models/syncav_lora under a name of your choice."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVSaveLoRA", display_name="SyncAV Save LoRA", category=comfy_types.CATEGORY,
            description="Copies a SyncAV LoRA into models/syncav_lora/<name>.safetensors, where SyncAV Load LoRA "
                        "lists it (the trainer's own copy in the output folder may be cleaned up with the "
                        "outputs). Its lora_path output says where; wire it into Preview Any to see it.",
            is_output_node=True,
            inputs=[
                io.String.Input("lora_path", default="", force_input=True,
                                tooltip="The LoRA file to keep: the lora_path output of SyncAV DPO Trainer."),
                io.String.Input("name", default="syncav_dpo", multiline=False,
                                tooltip="File name in models/syncav_lora ('.safetensors' is added)."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace a file of that name (otherwise it is an error)."),
            ],
            outputs=[comfy_types.output(io.String, "lora_path", "Where the LoRA was saved.")])

    @classmethod
    def execute(cls, lora_path: str, name: str, overwrite: bool = False) -> io.NodeOutput:
        if not isinstance(lora_path, str) or not os.path.isfile(lora_path.strip()):
            raise FileNotFoundError(f"lora_path: expected an existing LoRA file (the lora_path output of SyncAV DPO "
                                    f"Trainer), received {lora_path!r}")
        source = lora_path.strip()
        comfy_bridge.read_lora(source, "lora_path")          # refuse anything that is not a SyncAV LoRA
        stem = check_file_stem(name, "name")
        comfy_bridge.lora_folders()                          # registers the folder with ComfyUI
        target = os.path.join(comfy_bridge.lora_save_folder(), f"{stem}.safetensors")
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"name: {stem}.safetensors already exists in models/syncav_lora; set overwrite to "
                                  f"true or choose another name")
        if os.path.abspath(source) != os.path.abspath(target):
            copy_atomic(source, target)
        return io.NodeOutput(target, ui=ui.PreviewText(f"saved models/syncav_lora/{stem}.safetensors"))
