"""SyncDPO: post-train a joint audio-video pipeline for synchronization with a LoRA and temporal negatives.

The trainer assembles library pieces; nothing here is a new loss or a new loop (TRL style: the loss lives in
``dpo_loss`` / ``flow_loss``, the loop in ``loop``):

* **pairs** (``PreferencePairs``): at step k the winners are real clips (BounceBench's train split through
  ``embedded_training.BounceBatches`` by default, or any ``batches(step, generator) -> AVBatch``), and the losers
  are the same latents with their timing broken by the rules the curriculum draws at step k
  (``negatives.build.build_negatives`` at the codecs' latent rates). A loser keeps its winner's text, so a pair
  differs in timing only. The rule of each row travels with the batch for per-rule logs.
* **model**: peft LoRA adapters on the pipeline's joint model (``model.lora.add_lora``, base frozen); the DPO
  reference is the same network with its adapters off, so there is no second copy of the weights.
* **loss**: ``objective="dpo"``: Diffusion-DPO per modality (``dpo_loss.av_dpo_loss``); ``objective="sft"``: the
  baseline the SyncDPO / V2A-DPO papers compare against, the same LoRA fine-tuned on the winners alone with the
  flow-matching loss (``flow_loss.av_flow_loss``), same noise-level distribution and task mix.
* **loop**: ``loop.train`` (per-step seeded generator, atomic resumable ``train_state.safetensors``). With LoRA the
  loop's trainable parameters are exactly the adapter factors, so its ``param.*`` / ``optim.*`` entries are the
  adapters under their peft names; resuming in a fresh process re-creates the adapters and loads them from there.

Files in ``out_dir``: ``lora.safetensors`` (ComfyUI key convention, ``model.lora.save_lora``; written every
``save_every`` steps, at the end, and on an interruption after at least one step of the call), ``curves.png``
(loss and per-modality accuracy), ``history.json`` (the loop's averaged logs, per-rule ones included) and the
loop's ``train_state.safetensors``. All writes are atomic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..files.atomic import write_text_atomic
from ..runtime.lora import LoraSpec, add_lora, lora_layers, save_lora
from ..files.safetensors_io import read_header
from ..negatives.curriculum import DEFAULT_CURRICULUM, MODES, Curriculum
from ..model.batch import AVBatch, PreferenceBatch
from . import objectives
from .dpo_loss import DPOConfig
from .flow_loss import FlowLossConfig
from .loop import CHECKPOINT_NAME, LossFn, MemoryConfig, TrainConfig, TrainState, train
from .distributed import RowShard, current_world, shard_frozen_base
from .plot import render_curves, write_png
from .value_rules import ValueRuleError, fraction, one_of, whole
from ..negatives.build import build_negatives
from ..negatives.time_axes import TimeAxes

log = logging.getLogger(__name__)

__all__ = ["OBJECTIVES", "LORA_FILE", "CURVES_FILE", "HISTORY_FILE", "DPOTrainingConfig", "PreferencePairs",
           "make_loss_fn", "render_training_curves", "DPOTrainingResult", "train_dpo"]

OBJECTIVES = ("dpo", "sft")
LORA_FILE = "lora.safetensors"
CURVES_FILE = "curves.png"
HISTORY_FILE = "history.json"

# winners(step, generator) -> AVBatch: the same contract as the loop's make_batch.
WinnerFn = Callable[[int, torch.Generator], AVBatch]
PairFn = Callable[[int, torch.Generator], PreferenceBatch]


@dataclass(frozen=True)
class DPOTrainingConfig:
    steps: int = 1000
    batch_size: int = 8                   # pairs per step (the DPO forward runs 2 x batch_size rows, twice)
    lr: float = 2e-4                      # LoRA learning rate; 1e-4 .. 5e-4 is the usual range for rank 8-32
    lora: LoraSpec = field(default_factory=LoraSpec)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    # A Curriculum, its JSON text or its dict form (see negatives/curriculum.py).
    curriculum: Curriculum | str | dict | list = DEFAULT_CURRICULUM
    curriculum_mode: str | None = None    # ablation override of the curriculum's mode ("none": all rules from step 0)
    families: tuple[str, ...] | None = None   # ablation: keep only these rule families (None: as the curriculum says)
    objective: str = "dpo"                # "dpo" | "sft" (LoRA fine-tuned on the winners alone: the baseline)
    save_every: int = 100
    log_every: int = 10
    warmup_steps: int = 25
    weight_decay: float = 0.0             # LoRA factors: no decay (B starts at 0; decay would only pull it back)
    grad_clip: float = 1.0
    precision: str = "fp32"               # "fp32" | "bf16" (autocast)
    gradient_checkpointing: bool = False
    memory: MemoryConfig = field(default_factory=MemoryConfig)   # the frozen base in fp8, block swap
    caption_dropout: float = 0.0          # of the default BounceBench source; DPO pairs keep their captions
    seed: int = 0

    def __post_init__(self):
        # The values this config owns are checked here; the loop's (steps, lr, save_every, log_every, warmup_steps,
        # seed, precision) by the TrainConfig they make.
        whole("DPOTrainingConfig.batch_size", self.batch_size, 1)
        one_of("DPOTrainingConfig.objective", self.objective, OBJECTIVES)
        one_of("DPOTrainingConfig.curriculum_mode", self.curriculum_mode, MODES, none_allowed=True)
        fraction("DPOTrainingConfig.caption_dropout", self.caption_dropout, below_one=True)
        if isinstance(self.memory, dict):
            object.__setattr__(self, "memory", MemoryConfig(**self.memory))
        self.train_config()
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSpec(**self.lora))
        if isinstance(self.dpo, dict):
            object.__setattr__(self, "dpo", DPOConfig.from_dict(self.dpo))
        # One Curriculum from whatever form came (a node widget gives JSON text), overrides applied, so the rest of
        # the trainer and the saved metadata see the curriculum that actually runs.
        curriculum = self.curriculum
        if isinstance(curriculum, str):
            curriculum = Curriculum.from_json(curriculum)
        elif not isinstance(curriculum, Curriculum):
            curriculum = Curriculum.from_dict(curriculum)
        if self.curriculum_mode is not None:
            curriculum = curriculum.with_mode(self.curriculum_mode)
        if self.families is not None:
            families = (self.families,) if isinstance(self.families, str) else tuple(self.families)
            object.__setattr__(self, "families", families)
            curriculum = curriculum.only_families(families)
        object.__setattr__(self, "curriculum", curriculum)

    def train_config(self) -> TrainConfig:
        """The loop's config. No EMA: a LoRA is used as trained (and an EMA of adapters buys little)."""
        return TrainConfig(steps=self.steps, lr=self.lr, weight_decay=self.weight_decay,
                           warmup_steps=self.warmup_steps, grad_clip=self.grad_clip, ema_decay=None,
                           precision=self.precision, gradient_checkpointing=self.gradient_checkpointing,
                           memory=self.memory, save_every=self.save_every, log_every=self.log_every, seed=self.seed)

    def loss_config(self) -> DPOConfig | FlowLossConfig:
        """The loss of ``objective``: dpo: ``self.dpo``; sft: the baseline's flow-matching loss on the winners, with
        the DPO run's noise mix (the same object) and modality weights."""
        if self.objective == "dpo":
            return self.dpo
        return FlowLossConfig(weight_video=self.dpo.weight_video, weight_audio=self.dpo.weight_audio,
                              noise=self.dpo.noise)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(lora=asdict(self.lora), dpo=self.dpo.to_dict(), curriculum=self.curriculum.to_dict(),
                   memory=asdict(self.memory),
                   families=None if self.families is None else list(self.families))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_changes(self, **changes) -> "DPOTrainingConfig":
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------ pairs

class PreferencePairs:
    """make_batch for the loop: step k -> ``PreferenceBatch(winner, loser, rules)``.

    winners(step, generator) -> AVBatch of clean latents: video [B, Cv, Fv, Hv, Wv], audio [B, La, Ca].
    The losers are those latents distorted by the rules ``curriculum`` draws at ``step`` of ``total_steps``, at the
    codecs' latent rates (and the audio codec's own silence latent for mutes); text and lengths are the winner's.
    Everything is drawn from the step's generator, after the winners, so a resumed run rebuilds the same pairs.
    """

    def __init__(self, winners: WinnerFn, video_codec, audio_codec, curriculum: Curriculum, total_steps: int,
                 device: str | torch.device | None = None):
        self.winners, self.curriculum, self.total_steps = winners, curriculum, total_steps
        self.video_codec, self.audio_codec = video_codec, audio_codec
        self.device = None if device is None else torch.device(device)
        self._axes: dict[tuple[int, int], TimeAxes] = {}

    def axes_for(self, video: torch.Tensor, audio: torch.Tensor) -> TimeAxes:
        """Time axes of latents of this clip length (cached per length: the silence latent is an encode)."""
        key = (int(video.shape[2]), int(audio.shape[1]))
        if key not in self._axes:
            with torch.no_grad():
                self._axes[key] = TimeAxes.latent(self.video_codec, self.audio_codec,
                                                  num_frames=self.video_codec.num_frames(key[0]),
                                                  audio_latents=key[1])
        return self._axes[key]

    def __call__(self, step: int, generator: torch.Generator) -> PreferenceBatch:
        winner = self.winners(step, generator)
        if not isinstance(winner, AVBatch):
            raise TypeError(f"batches: expected batches(step, generator) to return an AVBatch, got "
                            f"{type(winner).__name__}")
        axes = self.axes_for(winner.video, winner.audio)
        negatives = build_negatives(winner.video, winner.audio, axes, self.curriculum.sampler(step, self.total_steps),
                                    generator)
        loser = winner._replace(video=negatives.video, audio=negatives.audio)
        pairs = PreferenceBatch(winner, loser, tuple(negatives.rules))
        return pairs if self.device is None else pairs.to(self.device)


def _pairs_on(pairs: "PairFn", device: torch.device | None, winners_only: bool):
    def make(step: int, generator: torch.Generator):
        batch = pairs(step, generator)
        if not isinstance(batch, PreferenceBatch):
            raise TypeError(f"pairs: expected pairs(step, generator) to return a PreferenceBatch, got "
                            f"{type(batch).__name__}")
        batch = batch if device is None else batch.to(device)
        return batch.winner if winners_only else batch
    return make


def _winners_on(winners: WinnerFn, device: torch.device | None) -> WinnerFn:
    def make(step: int, generator: torch.Generator) -> AVBatch:
        batch = winners(step, generator)
        if not isinstance(batch, AVBatch):
            raise TypeError(f"batches: expected batches(step, generator) to return an AVBatch, got "
                            f"{type(batch).__name__}")
        return batch if device is None else batch.to(device)
    return make


# ------------------------------------------------------------------------------------------------ loss

def make_loss_fn(config: DPOTrainingConfig, shard: RowShard | None = None) -> LossFn:
    """The loop's loss for ``config.objective`` (``objectives.make_loss_fn`` of ``config.loss_config()``).

    dpo: batch is a ``PreferenceBatch``; logs add ``rule/<rule>/share`` for every rule of the curriculum.
    sft: batch is the winners' ``AVBatch``. shard: the rows this process computes (one of several).
    """
    rule_names = {choice.rule for stage in config.curriculum.effective_stages for choice in stage.rules}
    return objectives.make_loss_fn(config.loss_config(), rule_names=rule_names, shard=shard)


# ------------------------------------------------------------------------------------------------ curves

def render_training_curves(history: list[dict], objective: str = "dpo", width_px: int = 640) -> np.ndarray:
    """uint8 [H, W, 3]: the loss panel (log y) and, for DPO, the implicit-accuracy panel (linear y) beneath it.

    Loss panel, in colour order: dpo: loss, video_dpo, audio_dpo; sft: loss, video, audio (winner errors).
    Accuracy panel (0 to 1): video_accuracy, audio_accuracy and the 0.5 chance line.
    """
    def series(names):
        return {name: [(h["step"], h[name]) for h in history if name in h and h[name] is not None]
                for name in names}

    if objective == "sft":
        return render_curves(series(("loss", "video", "audio")), width_px=width_px, height_px=300,
                             title="SFT loss (winner errors)")
    loss_panel = render_curves(series(("loss", "video_dpo", "audio_dpo")), width_px=width_px, height_px=300,
                               title="DPO loss")
    accuracy = series(("video_accuracy", "audio_accuracy"))
    steps = [h["step"] for h in history]
    if steps:
        accuracy["chance"] = [(min(steps), 0.5), (max(steps), 0.5)]
        # One-point series draw nothing but span the axis: accuracies on a fixed 0..1 scale, comparable across runs.
        accuracy["axis_low"], accuracy["axis_high"] = [(min(steps), 0.0)], [(min(steps), 1.0)]
    accuracy_panel = render_curves(accuracy, width_px=width_px, height_px=200, log_y=False,
                                   title="implicit preference accuracy", y_label="accuracy")
    divider = np.full((4, width_px, 3), 160, dtype=np.uint8)
    return np.concatenate([loss_panel, divider, accuracy_panel])


# ------------------------------------------------------------------------------------------------ trainer

@dataclass
class DPOTrainingResult:
    model: nn.Module               # the pipeline's joint model, trained adapters in place (still peft layers)
    lora_path: Path
    curves_path: Path
    history_path: Path
    curves_rgb: np.ndarray         # [H, W, 3] uint8 (a ComfyUI IMAGE is this / 255 with a batch axis)
    state: TrainState              # steps done (in total, over resumed runs), averaged history, seconds



def check_shard_base(shard_base: bool, memory: MemoryConfig) -> None:
    """FSDP2 sharding of the frozen base over processes and fp8 storage / block swap of it are alternatives."""
    if shard_base and (memory.base_fp8 or memory.blocks_on_gpu is not None):
        raise ValueRuleError("shard_base", "False when the frozen base is in fp8 or block-swapped (sharding it over "
                             "the processes is the other way to fit it: choose one)", shard_base)


def _prepare_lora(model: nn.Module, spec: LoraSpec, seed: int) -> None:
    """Give ``model`` adapters of ``spec`` (base frozen). A model that already carries adapters of the same spec
    (e.g. an earlier, interrupted call on the same pipeline) keeps them: resuming then overwrites them from the
    checkpoint, and a fresh run continues from them."""
    if lora_layers(model):
        existing = getattr(getattr(model, "diffusion_model", model), "lora_spec", None)
        if existing != spec:
            raise ValueError(f"train_dpo: the pipeline's model already has LoRA adapters of another spec "
                             f"({existing}) than config.lora ({spec}); start from a model without adapters")
        adapter_params = {id(p) for layer in lora_layers(model).values()
                          for p in list(layer.lora_A.parameters()) + list(layer.lora_B.parameters())}
        for p in model.parameters():
            p.requires_grad_(id(p) in adapter_params)
        return
    # A's Kaiming init draws from the global generator: seed it so two straight runs start from the same adapters
    # (without touching the caller's random state).
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        add_lora(model, spec)


def train_dpo(pipeline, out_dir: str | os.PathLike, config: DPOTrainingConfig = DPOTrainingConfig(), *,
              batches: WinnerFn | None = None, pairs: PairFn | None = None, resume: bool = True,
              callback: Callable[[int, dict], None] | None = None, progress: bool = True,
              publish_lora_to: str | os.PathLike | None = None, shard_base: bool = False) -> DPOTrainingResult:
    """Train a LoRA on ``pipeline.model`` for sync with DPO (or the SFT baseline); files in ``out_dir``.

    pipeline: an ``AVPipeline`` (model, video_codec, audio_codec, text_encoder); its model gets the adapters in place.
    batches: ``batches(step, generator) -> AVBatch`` of winner latents; None: BounceBench's train split encoded
    with the pipeline's codecs and text encoder (``config.batch_size`` clips a step).
    pairs: ``pairs(step, generator) -> PreferenceBatch`` made elsewhere, e.g. ``ScoredPairs.batches`` (V2A-DPO pairs
    of the model's own samples, easy -> hard): they replace the temporal negatives (SFT trains on their winners).
    resume: continue from ``out_dir/train_state.safetensors`` when it exists (bit-identical on a CPU).
    callback(step, logs): after each step (and after that step's files are written); an exception raised there
    stops training with a resumable checkpoint and the LoRA of the last completed step.
    publish_lora_to: a second place the LoRA is written to every time it is (e.g. the folder ComfyUI lists LoRAs
    from), so that copy follows the checkpoint even when the process is killed outright.
    config.memory: the frozen base in fp8 and block swap, applied to the model (in place, for good) once its adapters
    are added (``loop.place_frozen_base``); the model keeps them after training.
    Under torchrun (``distributed``) every rank calls this with the same arguments: each computes its share of a
    step's rows, rank 0 writes every file. shard_base: there, also shard the frozen base over the ranks (FSDP2).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora_path, curves_path, history_path = out_dir / LORA_FILE, out_dir / CURVES_FILE, out_dir / HISTORY_FILE
    checkpoint = out_dir / CHECKPOINT_NAME
    model = pipeline.model
    device = next(model.parameters()).device
    check_shard_base(shard_base, config.memory)
    if pairs is not None and batches is not None:
        raise ValueError("train_dpo: give either batches (winners; losers from the curriculum) or pairs, not both")
    if pairs is not None:
        make_batch = _pairs_on(pairs, device, winners_only=config.objective != "dpo")
    elif batches is None:
        from .embedded_training import BounceBatches
        batches = BounceBatches(config.batch_size, config.caption_dropout, pipeline.text_encoder,
                                pipeline.video_codec, pipeline.audio_codec)
    if pairs is not None:
        pass
    elif config.objective == "dpo":
        make_batch = PreferencePairs(batches, pipeline.video_codec, pipeline.audio_codec, config.curriculum,
                                     config.steps, device)
    else:
        make_batch = _winners_on(batches, device)
    world = current_world()
    loss_fn = make_loss_fn(config, world.shard(config.batch_size) if world.size > 1 else None)
    meta = {"objective": config.objective, "steps": str(config.steps), "training_config": config.to_json()}

    def export(step: int, history: list[dict]) -> np.ndarray:
        curves = render_training_curves(history, config.objective)
        if world.is_main:
            save_lora(model, lora_path, {**meta, "step": str(step)})
            if publish_lora_to is not None:
                save_lora(model, publish_lora_to, {**meta, "step": str(step)})
            write_text_atomic(history_path, json.dumps(history))
            write_png(curves_path, curves)
        return curves

    completed = {"step": None}       # the last step this call completed (None: none yet)

    def on_step(step: int, logs: dict) -> None:
        completed["step"] = step
        if step % config.save_every == 0 and world.is_main:
            # The loop has just written its checkpoint for this step: its history is the one to export.
            export(step, json.loads(read_header(checkpoint)[1].get("history", "[]")))
        if callback is not None:
            callback(step, logs)

    # ComfyUI runs nodes under inference mode: adapters made there could not train.
    with torch.inference_mode(False):
        _prepare_lora(model, config.lora, config.seed)
        if shard_base and world.size > 1:
            held, whole = shard_frozen_base(model)
            log.info("train_dpo: frozen base sharded over %d ranks: %d of %d parameters on rank %d", world.size, held,
                     whole, world.rank)
        try:
            result = train(model, make_batch, loss_fn, config.train_config(), out_dir, resume=resume,
                           callback=on_step, progress=progress)
        except BaseException:
            # Interrupted after some steps of this call: hand out the LoRA of the last completed step, when the
            # checkpoint holds that very step (a failed checkpoint write leaves the older one, and the LoRA file must
            # not run ahead of it). A failure before any step leaves every file as it was: it may be the load of
            # that very checkpoint.
            if completed["step"] is not None and world.is_main:
                try:
                    _, header = read_header(checkpoint)
                    if int(header["step"]) == completed["step"]:
                        export(completed["step"], json.loads(header.get("history", "[]")))
                except Exception as error:  # noqa: BLE001 - the original exception is the one to report
                    log.warning("train_dpo: could not write the LoRA after the interruption: %s", error)
            raise
    curves = export(result.state.step, result.state.history)
    return DPOTrainingResult(model=model, lora_path=lora_path, curves_path=curves_path, history_path=history_path,
                             curves_rgb=curves, state=result.state)
