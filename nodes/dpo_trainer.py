"""SyncAV DPO Trainer: post-trains a LoRA for audio-video sync (train/dpo_training.train_dpo) from a graph.

Files: the LoRA in ``output/syncav_lora/<output_name>.safetensors``; the run (resumable training state, curves,
history) in ``output/syncav_lora_runs/<output_name>/``. Training runs on a deep copy of the joint model (the input
MODEL is never changed); the output MODEL is the input with the trained LoRA as a patch.
"""

from __future__ import annotations

import logging
import math
import os

import torch

from ..runtime.lora import LoraSpec
from ..generation.pipeline import AVPipeline
from ..files.safetensors_io import read_header
from ..data.av_dataset import AVClipDataset
from ..train.dpo_loss import DPOConfig
from ..train.dpo_training import LORA_FILE, OBJECTIVES, DPOTrainingConfig, train_dpo
from ..train.loop import CHECKPOINT_NAME
from . import comfy_bridge
from .dataset import check_text_encoder
from .latent import check_codecs
from .lora import check_file_name, read_lora
from .negatives import check_negatives
from .sampler import joint_model_of

log = logging.getLogger(__name__)

# The trainer's lora_towers choice -> LoraSpec.towers.
LORA_TOWERS = {"both": ("video", "audio"), "video": ("video",), "audio": ("audio",)}
RUNS_FOLDER = "syncav_lora_runs"      # sibling of output/syncav_lora: run state that must not be listed as LoRAs


def run_paths(name: str) -> tuple[str, str]:
    """(LoRA file, run folder) of an output name."""
    lora_file = os.path.join(comfy_bridge.lora_train_folder(), f"{name}.safetensors")
    run_dir = os.path.join(comfy_bridge.output_directory(), RUNS_FOLDER, name)
    return lora_file, run_dir


def _whole(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected a whole number >= {low}, received {value!r}")
    return value


def _check_dataset(dataset, codecs, joint) -> AVClipDataset:
    if not isinstance(dataset, AVClipDataset) or not dataset.encoded:
        raise ValueError(f"dataset: expected the output of SyncAV AV Dataset, received {type(dataset).__name__}")
    probe = dataset.latents([0])
    cv, ca = codecs.video_codec.latent_channels, codecs.audio_codec.latent_channels
    if probe.video.shape[1] != cv or probe.audio.shape[2] != ca:
        raise ValueError(f"dataset: encoded with other codecs ({probe.video.shape[1]} video / {probe.audio.shape[2]} "
                         f"audio latent channels, these codecs use {cv} / {ca}); build it from the same SyncAV Loader")
    text_dim = joint.config.video.text_dim
    if probe.text_video.shape[-1] != text_dim:
        raise ValueError(f"dataset: captions encoded {probe.text_video.shape[-1]} wide, the model reads {text_dim}; "
                         "build it with the text encoder of the same SyncAV Loader")
    return dataset


def _check_resumable(run_dir: str, spec: LoraSpec, name: str) -> None:
    """A run can only resume with the LoRA shape it was started with: say so before any weight is loaded."""
    previous = os.path.join(run_dir, LORA_FILE)
    if not os.path.isfile(previous):
        return
    try:
        saved = LoraSpec.from_json(read_header(previous)[1]["lora_spec"])
    except Exception:  # noqa: BLE001 - an unreadable spec is left to the loop's own checks
        return
    if saved.rank != spec.rank:
        raise ValueError(f"rank: the run {name!r} was started with rank {saved.rank} (targets "
                         f"{', '.join(saved.targets)}), received rank {spec.rank}; set rank to {saved.rank} to resume "
                         f"it, turn resume off with another output_name to start a new run")
    if saved != spec:
        raise ValueError(f"lora_towers: the run {name!r} was started with a LoRA on {_towers_choice(saved.towers)}, "
                         f"received {_towers_choice(spec.towers)}; set it back to resume the run, turn resume off "
                         "with another output_name to start a new run")


def _towers_choice(towers) -> str:
    """The node's lora_towers choice for a LoraSpec's towers."""
    return "both" if set(towers) == {"video", "audio"} else towers[0]


def curves_image(rgb) -> torch.Tensor:
    """uint8 [H, W, 3] -> IMAGE [1, H, W, 3] float32 in 0..1."""
    return (torch.from_numpy(rgb.copy()).float() / 255.0)[None].contiguous()


class SyncAVDPOTrainer:
    """Trains a LoRA that makes the joint model prefer real clips over their temporally broken copies."""

    @classmethod
    def INPUT_TYPES(cls):
        def beta(tooltip: str):
            return ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100000.0, "step": 10.0, "tooltip": tooltip})

        return {"required": {
            "model": ("MODEL", {"tooltip": "The joint model from SyncAV Loader (it is not changed: training runs on "
                                           "a copy)."}),
            "codecs": ("SYNCAV_CODECS", {"tooltip": "The codecs from SyncAV Loader."}),
            "text_encoder": ("SYNCAV_TEXT_ENCODER", {"tooltip": "The text encoder from SyncAV Loader."}),
            "negatives": ("SYNCAV_NEGATIVES", {"tooltip": "The temporal negatives and their curriculum (SyncAV "
                                                          "Temporal Negative Builder)."}),
            "objective": (list(OBJECTIVES), {"default": "dpo",
                                             "tooltip": "dpo: prefer each real clip over its broken copy (Diffusion-"
                                                        "DPO per modality). sft: fine-tune the same LoRA on the real "
                                                        "clips alone (the baseline; negatives unused)."}),
            "steps": ("INT", {"default": 300, "min": 1, "max": 1_000_000,
                              "tooltip": "Optimizer steps in total (a resumed run counts the steps already done)."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 256,
                                   "tooltip": "Real clips per step (DPO runs each with its negative: twice the "
                                              "rows, twice over for the reference)."}),
            "lr": ("FLOAT", {"default": 2e-4, "min": 1e-7, "max": 1e-1, "step": 1e-5, "round": False,
                             "tooltip": "LoRA learning rate (1e-4 .. 5e-4 is the usual range)."}),
            "rank": ("INT", {"default": 16, "min": 1, "max": 512,
                             "tooltip": "LoRA rank (alpha = rank) on attention, cross-modal fusion and FFN layers "
                                        "of both towers."}),
            "beta_video": beta("DPO beta of the video term (how far the LoRA may drift). 0: the default for the "
                               "model's prediction head (1000 velocity, 3000 x0)."),
            "beta_audio": beta("DPO beta of the audio term. 0: the default for the model's prediction head."),
            "save_every": ("INT", {"default": 100, "min": 1, "max": 1_000_000,
                                   "tooltip": "Write the LoRA, the curves and the resumable state every this many "
                                              "steps (also at the end and when cancelled)."}),
            "output_name": ("STRING", {"default": "syncav_dpo", "multiline": False,
                                       "tooltip": "The LoRA is written to output/syncav_lora/<name>.safetensors, the "
                                                  "run state to output/syncav_lora_runs/<name>/."}),
            "resume": ("BOOLEAN", {"default": True,
                                   "tooltip": "Continue the run of this output_name where it stopped (after Cancel, "
                                              "or with more steps). Off: start over, refused while a run of this "
                                              "name exists (nothing written is overwritten)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                             "tooltip": "Seed of the run: noise levels, negatives, the LoRA's initial weights."}),
        }, "optional": {
            "dataset": ("SYNCAV_DATASET", {"tooltip": "Real clips (SyncAV AV Dataset). Not connected: BounceBench "
                                                      "train clips, generated on the fly."}),
            "lora_towers": (list(LORA_TOWERS), {"default": "both",
                                                "tooltip": "Which tower gets the LoRA. audio: only the sound "
                                                           "learns to follow the picture; the video tower stays the "
                                                           "base model's (the shipped sync LoRA: with SyncCFG a LoRA "
                                                           "on the video tower moved the tones off their pitch)."}),
            "noise_shift": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 20.0, "step": 0.1,
                                      "tooltip": "Timestep shift of the training noise levels. Above 1 trains mostly "
                                                 "at high noise, where the timing of a clip is decided (the shipped "
                                                 "sync LoRA: 3)."}),
        }}

    RETURN_TYPES = ("MODEL", "STRING", "IMAGE")
    RETURN_NAMES = ("model", "lora_path", "curves")
    OUTPUT_TOOLTIPS = ("The input model with the trained LoRA applied (strength 1 on both towers).",
                       "The LoRA file (for SyncAV Load LoRA's lora_path or SyncAV Save LoRA).",
                       "Loss (log scale) and, for DPO, the implicit accuracy per modality over the steps.")
    FUNCTION = "train"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Post-trains a LoRA for audio-video sync with DPO: each real clip is preferred over the same clip "
                   "with its timing broken (the negatives), coarse to subtle. Reports progress per step; Cancel "
                   "stops it with a resumable checkpoint (queue again with resume on to continue).")

    def train(self, model, codecs, text_encoder, negatives, objective: str, steps: int, batch_size: int, lr: float,
              rank: int, beta_video: float, beta_audio: float, save_every: int, output_name: str, resume: bool,
              seed: int = 0, dataset=None, lora_towers: str = "both", noise_shift: float = 1.0):
        joint = joint_model_of(model)
        codecs = check_codecs(codecs)
        text_encoder = check_text_encoder(text_encoder)
        spec = check_negatives(negatives)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {', '.join(OBJECTIVES)}, received {objective!r}")
        steps, batch_size = _whole(steps, "steps", 1), _whole(batch_size, "batch_size", 1)
        rank, save_every, seed = _whole(rank, "rank", 1), _whole(save_every, "save_every", 1), _whole(seed, "seed", 0)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a positive learning rate, received {lr!r}")
        for name, value in (("beta_video", beta_video), ("beta_audio", beta_audio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0 (0 = the model's default), received {value!r}")
        if lora_towers not in LORA_TOWERS:
            raise ValueError(f"lora_towers: expected one of {', '.join(LORA_TOWERS)}, received {lora_towers!r}")
        if (isinstance(noise_shift, bool) or not isinstance(noise_shift, (int, float))
                or not (math.isfinite(noise_shift) and noise_shift > 0)):
            raise ValueError(f"noise_shift: expected a number > 0 (1 = no shift), received {noise_shift!r}")
        if text_encoder.dim != joint.config.video.text_dim:
            raise ValueError(f"text_encoder: {text_encoder.dim} wide, the model reads {joint.config.video.text_dim}; "
                             "connect the text encoder of the same SyncAV Loader")
        batches = None
        if dataset is not None:
            batches = _check_dataset(dataset, codecs, joint).batch_source(batch_size)
        name = check_file_name(output_name, "output_name")
        lora_file, run_dir = run_paths(name)
        if not resume and (os.path.exists(os.path.join(run_dir, CHECKPOINT_NAME)) or os.path.exists(lora_file)):
            raise FileExistsError(f"output_name: a run named {name!r} already exists; turn resume on to continue it "
                                  f"or choose another output_name (resume off never overwrites a run)")

        config = DPOTrainingConfig(
            steps=steps, batch_size=batch_size, lr=float(lr),
            lora=LoraSpec(rank=rank, alpha=float(rank), towers=LORA_TOWERS[lora_towers]),
            dpo=DPOConfig(beta_video=float(beta_video) or None, beta_audio=float(beta_audio) or None,
                          shift=float(noise_shift)),
            curriculum=spec.curriculum, objective=objective, save_every=save_every,
            log_every=max(1, min(25, steps // 50)), warmup_steps=min(25, steps // 10), seed=seed)
        if resume:
            _check_resumable(run_dir, config.lora, name)
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
        tensors, _ = read_lora(lora_file, "lora_path")
        patched = comfy_bridge.patch_with_lora(model, tensors, 1.0, 1.0)
        log.info("SyncAV DPO trainer: %d steps, LoRA written to %s", result.state.step, lora_file)
        return (patched, lora_file, curves_image(result.curves_rgb))
