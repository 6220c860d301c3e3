"""Training the embedded default: the tiny joint model on BounceBench, with the embedded codecs and text encoder.

One command reproduces it (``python -m comfyui_syncav train-default``); the recipe below is what shipped. Clips are
generated fresh every step from the train split's seeds (step k uses seeds k*B .. k*B+B-1), so there is no
dataset to store and a resumed run sees exactly the clips a straight run would.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch

from ..model.checkpoint import load_joint_model, save_joint_model
from ..codecs.embedded import TinyAudioCodec, TinyVideoCodec
from ..model.growth import deepened_state_dict
from ..model.joint import JointModel
from ..generation.pipeline import EMBEDDED_MODEL_FILE, EMBEDDED_TEXT_FILE, embedded_config
from ..model.config import JointConfig
from ..text.interface import EncodedText
from ..text.embedded import TinyTextEncoder
from ..bouncebench.clips import make_batch
from ..bouncebench.config import STANDARD, split_seeds
from ..model.batch import AVBatch
from .flow_loss import FlowLossConfig
from .loop import CHECKPOINT_NAME, StepCallback, TrainConfig, TrainResult, train
from .objectives import make_loss_fn
from .plot import render_curves, write_png
from .value_rules import fraction, whole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedRecipe:
    batch_size: int = 32
    caption_dropout: float = 0.1          # rows trained with the empty prompt, so text CFG has an unconditional
    data_start_step: int = 0              # a continued run starts here so it sees clips the first run did not
    cross_modal_window_frames: float | None = None   # JointConfig's: None = global fusion, w = Harmony's window
    num_blocks: int | None = None         # fusion blocks; None: the init network's, else the tiny preset's. An
                                          # init network with fewer is deepened (model/growth.py), so training
                                          # starts from what it computes
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=4000, lr=1e-3, warmup_steps=200,
                                                                   ema_decay=0.998, save_every=250, log_every=25))
    loss: FlowLossConfig = FlowLossConfig()

    def __post_init__(self):
        whole("EmbeddedRecipe.batch_size", self.batch_size, 1)
        whole("EmbeddedRecipe.data_start_step", self.data_start_step, 0)
        if self.num_blocks is not None:
            whole("EmbeddedRecipe.num_blocks", self.num_blocks, 1)
        fraction("EmbeddedRecipe.caption_dropout", self.caption_dropout)
        self.joint_config()                     # JointConfig checks the window

    def joint_config(self) -> JointConfig:
        """The network this recipe trains: the embedded default's, with the recipe's depth and cross-modal
        interaction."""
        config = embedded_config().replace(cross_modal_window_frames=self.cross_modal_window_frames)
        return config if self.num_blocks is None else config.with_num_blocks(self.num_blocks)

    def with_steps(self, steps: int) -> "EmbeddedRecipe":
        return replace(self, train=replace(self.train, steps=steps))

    def keeping_depth_of(self, init_model: JointModel | None) -> "EmbeddedRecipe":
        """This recipe with the init network's depth where it asks for none: continuing the shipped weights (6
        blocks, the preset has 4) needs no --blocks."""
        if self.num_blocks is not None or init_model is None:
            return self
        return replace(self, num_blocks=init_model.config.num_blocks)


class BounceBatches:
    """make_batch for the loop: BounceBench clips -> codec latents + encoded captions (cached per caption)."""

    def __init__(self, batch_size: int, caption_dropout: float, text_encoder: TinyTextEncoder,
                 video_codec: TinyVideoCodec, audio_codec: TinyAudioCodec, bench_config=STANDARD,
                 data_start_step: int = 0):
        self.batch_size, self.caption_dropout = batch_size, caption_dropout
        self.data_start_step = data_start_step
        self.text_encoder, self.video_codec, self.audio_codec = text_encoder, video_codec, audio_codec
        self.bench_config = bench_config
        self._captions: dict[str, torch.Tensor] = {}

    def _caption_rows(self, captions: list[str]) -> torch.Tensor:
        for caption in dict.fromkeys(captions):
            if caption not in self._captions:
                # Each caption on its own: a batch's padding changes the products' shapes and, without MKL's
                # reproducible mode, their last bits, so a resumed process (which meets the captions in other
                # batches) would train on slightly different embeddings than the straight run.
                with torch.no_grad():
                    encoded: EncodedText = self.text_encoder.encode([caption])
                self._captions[caption] = encoded.embeddings[0].float().cpu()
        return torch.stack([self._captions[c] for c in captions])

    def __call__(self, step: int, generator: torch.Generator) -> AVBatch:
        seeds = split_seeds("train", self.batch_size, start=(self.data_start_step + step) * self.batch_size)
        frames, waveform, captions = make_batch(seeds, self.bench_config)
        drop = torch.rand(self.batch_size, generator=generator) < self.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.no_grad():
            video = self.video_codec.encode(torch.as_tensor(frames))
            audio = self.audio_codec.encode(torch.as_tensor(waveform))
        text = self._caption_rows(captions)
        return AVBatch(video=video, audio=audio, text_video=text, text_audio=text)


def train_embedded_default(out_dir: str | os.PathLike, recipe: EmbeddedRecipe = EmbeddedRecipe(), *,
                           init_weights: str | os.PathLike | None = None, resume: bool = True,
                           export: bool = True, progress: bool = True, seed: int = 0,
                           callback: StepCallback | None = None) -> TrainResult:
    """Train (or resume) the embedded default in ``out_dir``; with ``export`` write the EMA weights, the text
    encoder and the loss curve to ``out_dir`` (embedded_default.safetensors, embedded_text_encoder.safetensors,
    loss.png, recipe.json). ``init_weights``: start from these weights (e.g. the shipped ones) instead of seed."""
    init_model = check_embedded_training_args(out_dir, recipe, init_weights)   # before anything is written
    recipe = recipe.keeping_depth_of(init_model)
    out_dir = Path(out_dir)
    video_codec, audio_codec = TinyVideoCodec(), TinyAudioCodec()      # the encoders: training needs no decoder
    config = recipe.joint_config()
    if init_model is not None:
        # The window adds no parameter: weights trained with either interaction start the other one too. A
        # shallower init network is deepened to the recipe's blocks first, computing what it computed.
        model = JointModel(config)
        model.load_state_dict(deepened_state_dict(init_model, config.num_blocks))
    else:
        torch.manual_seed(seed)
        model = JointModel(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_encoder = TinyTextEncoder.from_file(EMBEDDED_TEXT_FILE) if EMBEDDED_TEXT_FILE.is_file() else TinyTextEncoder()
    batches = BounceBatches(recipe.batch_size, recipe.caption_dropout, text_encoder, video_codec, audio_codec,
                            data_start_step=recipe.data_start_step)
    result = train(model, batches, make_loss_fn(recipe.loss), recipe.train, out_dir, resume=resume, progress=progress,
                   callback=callback)
    if export:
        export_embedded(model, result, text_encoder, recipe, out_dir)
    return result


# How train_embedded_default's arguments are named in check_embedded_training_args's messages; the command line
# passes its flags instead (and names the recipe's own value errors with them, ``value_rules.named_as``).
ARGUMENT_NAMES = {"out_dir": "out_dir", "init_weights": "init_weights", "batch_size": "recipe.batch_size",
                  "steps": "recipe.train.steps", "data_start_step": "recipe.data_start_step",
                  "num_blocks": "recipe.num_blocks"}
# The files train_embedded_default writes in its folder.
WRITTEN_FILES = (EMBEDDED_MODEL_FILE.name, EMBEDDED_TEXT_FILE.name, "loss.png", "history.json", CHECKPOINT_NAME)


def check_embedded_training_args(out_dir, recipe: EmbeddedRecipe, init_weights=None,
                                 names: Mapping[str, str] | None = None) -> JointModel | None:
    """Refuse what ``train_embedded_default`` cannot train with, before anything is written or trained; returns
    the ``init_weights`` model (loaded on the CPU and checked to be the embedded default's network) or None.

    names: how each argument is called in messages (``ARGUMENT_NAMES`` keys; the CLI passes its flags).
    The recipe's own values (batch size, learning rate, noise shift, ...) were checked when it was made; here, what
    depends on more than one value or on the machine: that the steps' clips fit in the BounceBench train split (step
    k reads seeds (data_start_step + k) * B ..); that one batch of clips fits in memory
    (``generation.generate.clip_host_bytes``); the output folder (``files.atomic.check_output_path``: writable, no
    folder where a file goes, no written file that is the init file or a shipped one); and the init weights.
    """
    from ..files.atomic import check_output_path
    from ..generation.generate import check_fits_memory, clip_host_bytes
    from ..files.safetensors_io import CheckpointError
    from ..bouncebench.config import SPLITS

    name = {**ARGUMENT_NAMES, **(names or {})}
    batch, start, steps = recipe.batch_size, recipe.data_start_step, recipe.train.steps
    low, high = SPLITS["train"]
    if (start + steps) * batch > high - low:
        raise ValueError(f"{name['steps']} / {name['batch_size']} / {name['data_start_step']}: ({start} + {steps} "
                         f"steps) x {batch} clips = {(start + steps) * batch} clips, more than the BounceBench train "
                         f"split's {high - low}; expected fewer steps or a smaller batch")
    bench = STANDARD
    check_fits_memory(clip_host_bytes(bench.seconds, bench.size_px, bench.size_px, bench.fps, bench.sample_rate_hz,
                                      clips=batch), name["batch_size"],
                      f"the frames and sound of a batch of {batch} BounceBench clips")
    # The text encoder is read from the package's weights/ (and re-written); its shipped weights must not be lost.
    check_output_path(out_dir, name["out_dir"], folder=True, writes=WRITTEN_FILES,
                      inputs={name["init_weights"]: init_weights, "shipped text encoder": EMBEDDED_TEXT_FILE,
                              "shipped weights": EMBEDDED_MODEL_FILE})
    if init_weights is None:
        return None
    try:
        model = load_joint_model(init_weights)
    except CheckpointError as error:
        raise CheckpointError(f"{name['init_weights']}: {error}") from None
    blocks = recipe.keeping_depth_of(model).joint_config().num_blocks
    if model.config.replace(cross_modal_window_frames=None).with_num_blocks(blocks) != embedded_config(
            ).with_num_blocks(blocks):
        raise CheckpointError(f"{name['init_weights']} {init_weights}: holds another network than the embedded "
                              "default (another configuration); expected weights saved by train-default or the "
                              "shipped weights/embedded_default.safetensors")
    if model.config.num_blocks > blocks:
        raise ValueError(f"{name['num_blocks']}: {name['init_weights']} {init_weights} has "
                         f"{model.config.num_blocks} fusion blocks, more than the {blocks} asked for; expected "
                         f"{name['num_blocks']} of at least {model.config.num_blocks} (a network is deepened, never "
                         "cut)")
    return model


def export_embedded(model: JointModel, result: TrainResult, text_encoder: TinyTextEncoder, recipe: EmbeddedRecipe,
                    out_dir: Path) -> Path:
    """Write the shippable files: EMA weights (+ recipe in metadata), the text encoder, the loss curve PNG."""
    if result.ema is not None:
        result.ema.copy_to(model)
    meta = {"recipe": json.dumps(asdict(recipe)), "steps": str(result.state.step),
            "train_seconds": f"{result.state.seconds:.0f}"}
    weights = out_dir / EMBEDDED_MODEL_FILE.name
    save_joint_model(model, weights, meta)
    text_encoder.save(out_dir / EMBEDDED_TEXT_FILE.name)
    history = result.state.history
    curves = {name: [(h["step"], h[name]) for h in history] for name in ("video", "audio", "audio_driven_video",
                                                                        "video_driven_audio")}
    write_png(out_dir / "loss.png", render_curves(curves))
    (out_dir / "history.json").write_text(json.dumps(history))
    return weights
