"""SyncAV DPO Trainer: post-trains a LoRA for audio-video sync (train/dpo_training.train_dpo) from a graph.

Files: the LoRA in ``output/syncav_lora/<output_name>.safetensors``; the run (resumable training state, curves,
history) in ``output/syncav_lora_runs/<output_name>/``. Training runs on a deep copy of the joint model (the input
MODEL is never changed); the output MODEL is the input with the trained LoRA as a patch.
"""

from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

from ..files.atomic import check_file_stem
from ..generation.pipeline import AVPipeline
from ..train.dpo_inputs import (LORA_TOWERS, check_dataset, check_run_folder, check_text_encoder, logging_schedule,
                                lora_spec)
from ..train.dpo_loss import DPOConfig
from ..train.dpo_training import OBJECTIVES, DPOTrainingConfig, train_dpo
from ..train.loop import MemoryConfig
from ..train.noise_mix import NoiseMix
from ..train.value_rules import named_as
from . import comfy_bridge, comfy_types

log = logging.getLogger(__name__)

RUNS_FOLDER = "syncav_lora_runs"      # sibling of output/syncav_lora: run state that must not be listed as LoRAs
# The node's inputs by the config fields they set: the library's errors come out under the input's name.
INPUT_NAMES = {**{name: name for name in ("objective", "steps", "batch_size", "lr", "beta_video", "beta_audio",
                                          "save_every", "seed", "base_fp8", "blocks_on_gpu")},
               "shift": "noise_shift"}


def run_paths(name: str) -> tuple[str, str]:
    """(LoRA file, run folder) of an output name."""
    lora_file = os.path.join(comfy_bridge.lora_train_folder(), f"{name}.safetensors")
    run_dir = os.path.join(comfy_bridge.output_directory(), RUNS_FOLDER, name)
    return lora_file, run_dir


def curves_image(rgb) -> torch.Tensor:
    """uint8 [H, W, 3] -> IMAGE [1, H, W, 3] float32 in 0..1."""
    return (torch.from_numpy(rgb.copy()).float() / 255.0)[None].contiguous()


def _beta(name: str, tooltip: str):
    return io.Float.Input(name, default=0.0, min=0.0, max=100000.0, step=10.0, tooltip=tooltip)


class SyncAVDPOTrainer(io.ComfyNode):
    """Trains a LoRA that makes the joint model prefer real clips over their temporally broken copies."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVDPOTrainer", display_name="SyncAV DPO Trainer", category=comfy_types.CATEGORY,
            description="Post-trains a LoRA for audio-video sync with DPO: each real clip is preferred over the same "
                        "clip with its timing broken (the negatives), coarse to subtle. Reports progress per step; "
                        "Cancel stops it with a resumable checkpoint (queue again with resume on to continue).",
            inputs=[
                io.Model.Input("model", tooltip="The joint model from SyncAV Loader (it is not changed: training "
                                                "runs on a copy)."),
                comfy_types.CODECS.Input("codecs", tooltip="The codecs from SyncAV Loader."),
                comfy_types.TEXT_ENCODER.Input("text_encoder", tooltip="The text encoder from SyncAV Loader."),
                comfy_types.NEGATIVES.Input("negatives", tooltip="The temporal negatives and their curriculum (SyncAV "
                                                                 "Temporal Negative Builder)."),
                io.Combo.Input("objective", options=list(OBJECTIVES), default="dpo",
                               tooltip="dpo: prefer each real clip over its broken copy (Diffusion-DPO per "
                                       "modality). sft: fine-tune the same LoRA on the real clips alone (the "
                                       "baseline; negatives unused)."),
                io.Int.Input("steps", default=300, min=1, max=1_000_000,
                             tooltip="Optimizer steps in total (a resumed run counts the steps already done)."),
                io.Int.Input("batch_size", default=4, min=1, max=256,
                             tooltip="Real clips per step (DPO runs each with its negative: twice the rows, twice "
                                     "over for the reference)."),
                io.Float.Input("lr", default=2e-4, min=1e-7, max=1e-1, step=1e-5, round=False,
                               tooltip="LoRA learning rate (1e-4 .. 5e-4 is the usual range)."),
                io.Int.Input("rank", default=16, min=1, max=512,
                             tooltip="LoRA rank (alpha = rank) on attention, cross-modal fusion and FFN layers of "
                                     "both towers."),
                _beta("beta_video", "DPO beta of the video term (how far the LoRA may drift). 0: the default for the "
                                    "model's prediction head (1000 velocity, 3000 x0)."),
                _beta("beta_audio", "DPO beta of the audio term. 0: the default for the model's prediction head."),
                io.Int.Input("save_every", default=100, min=1, max=1_000_000,
                             tooltip="Write the LoRA, the curves and the resumable state every this many steps "
                                     "(also at the end and when cancelled)."),
                io.String.Input("output_name", default="syncav_dpo", multiline=False,
                                tooltip="The LoRA is written to output/syncav_lora/<name>.safetensors, the run state "
                                        "to output/syncav_lora_runs/<name>/."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue the run of this output_name where it stopped (after Cancel, or "
                                         "with more steps). Off: start over, refused while a run of this name "
                                         "exists (nothing written is overwritten)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the run: noise levels, negatives, the LoRA's initial weights."),
                comfy_types.DATASET.Input("dataset", optional=True,
                                          tooltip="Real clips (SyncAV AV Dataset). Not connected: BounceBench train "
                                                  "clips, generated on the fly."),
                io.Combo.Input("lora_towers", options=list(LORA_TOWERS), default="both", optional=True,
                               tooltip="Which tower gets the LoRA. audio: only the sound learns to follow the "
                                       "picture; the video tower stays the base model's (the shipped sync LoRA: "
                                       "with SyncCFG a LoRA on the video tower moved the tones off their pitch)."),
                io.Float.Input("noise_shift", default=1.0, min=0.1, max=20.0, step=0.1, optional=True,
                               tooltip="Timestep shift of the training noise levels. Above 1 trains mostly at high "
                                       "noise, where the timing of a clip is decided (the shipped sync LoRA: 3)."),
                io.Boolean.Input("base_fp8", default=False, optional=True,
                                 tooltip="Keep the frozen base model's matrices in fp8 while training (half the "
                                         "memory of bf16, slightly rounded; the LoRA keeps its precision)."),
                io.Int.Input("blocks_on_gpu", default=-1, min=-1, max=1000, optional=True,
                             tooltip="Block swap while training: keep this many fusion blocks on the GPU and copy "
                                     "the others in per block (slower, far less memory; recomputes blocks in the "
                                     "backward). -1: off, every block on the GPU."),
            ],
            outputs=[
                comfy_types.output(io.Model, "model", "The input model with the trained LoRA applied (strength 1 on "
                                                      "both towers)."),
                comfy_types.output(io.String, "lora_path", "The LoRA file (for SyncAV Load LoRA's lora_path or "
                                                           "SyncAV Save LoRA)."),
                comfy_types.output(io.Image, "curves", "Loss (log scale) and, for DPO, the implicit accuracy per "
                                                       "modality over the steps."),
            ])

    @classmethod
    def execute(cls, model, codecs, text_encoder, negatives, objective: str, steps: int, batch_size: int, lr: float,
                rank: int, beta_video: float, beta_audio: float, save_every: int, output_name: str, resume: bool,
                seed: int = 0, dataset=None, lora_towers: str = "both", noise_shift: float = 1.0,
                base_fp8: bool = False, blocks_on_gpu: int = -1) -> io.NodeOutput:
        joint = comfy_types.joint_model_of(model)
        check_text_encoder(text_encoder, joint)
        log_every, warmup_steps = logging_schedule(steps)
        with named_as(INPUT_NAMES):
            config = DPOTrainingConfig(
                steps=steps, batch_size=batch_size, lr=lr, lora=lora_spec(rank, lora_towers),
                dpo=DPOConfig(beta_video=beta_video or None, beta_audio=beta_audio or None,   # 0: the default
                              noise=NoiseMix(shift=noise_shift)),
                curriculum=negatives.curriculum, objective=objective, save_every=save_every,
                log_every=log_every, warmup_steps=warmup_steps, seed=seed,
                memory=MemoryConfig(base_fp8=base_fp8, blocks_on_gpu=None if blocks_on_gpu == -1 else blocks_on_gpu))
        batches = None
        if dataset is not None:
            batches = check_dataset(dataset, codecs.video_codec, codecs.audio_codec, joint).batch_source(batch_size)
        name = check_file_stem(output_name, "output_name")
        lora_file, run_dir = run_paths(name)
        check_run_folder(run_dir, name, config.lora, bool(resume), published_lora=lora_file)
        comfy_bridge.lora_folders()                          # registers output/syncav_lora with ComfyUI
        trained = comfy_bridge.trainable_copy(model)
        pipeline = AVPipeline(model=trained, video_codec=codecs.video_codec, audio_codec=codecs.audio_codec,
                              text_encoder=text_encoder, name=f"{codecs.pipeline.name}+{name}")
        progress = comfy_bridge.StepProgress(steps, "SyncAV DPO")

        def on_step(step: int, logs: dict) -> None:
            progress(step - 1, steps)        # inside ComfyUI: raises when the user pressed Cancel

        try:
            # The published LoRA is rewritten with every checkpoint (and on Cancel), so even a killed server
            # leaves the LoRA of the last saved step where Load LoRA lists it.
            result = train_dpo(pipeline, run_dir, config, batches=batches, resume=bool(resume), callback=on_step,
                               progress=False, publish_lora_to=lora_file)
        finally:
            progress.close()
            del pipeline, trained
        tensors, _ = comfy_bridge.read_lora(lora_file, "lora_path")
        patched = comfy_bridge.patch_with_lora(model, tensors, 1.0, 1.0)
        log.info("SyncAV DPO trainer: %d steps, LoRA written to %s", result.state.step, lora_file)
        return io.NodeOutput(patched, lora_file, curves_image(result.curves_rgb))
