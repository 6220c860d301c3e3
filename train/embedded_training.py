"""Training the embedded default: the tiny joint model on BounceBench, with the embedded codecs and text encoder.

One command reproduces it (``python -m comfyui_syncav train-default``); the recipe below is what shipped. Clips are
generated fresh every step from the train split's seeds (step k uses seeds k*B .. k*B+B-1), so there is no
dataset to store and a resumed run sees exactly the clips a straight run would.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..model.checkpoint import load_joint_model, save_joint_model
from ..model.codec_tiny import TinyAudioCodec, TinyVideoCodec
from ..model.joint import JointModel
from ..model.pipeline import EMBEDDED_MODEL_FILE, EMBEDDED_TEXT_FILE, embedded_config
from ..model.text import EncodedText
from ..model.text_tiny import TinyTextEncoder
from .bouncebench import STANDARD, make_batch, split_seeds
from .flow_loss import AVBatch, FlowLossConfig, av_flow_loss
from .loop import TrainConfig, TrainResult, train
from .plot import render_curves, write_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedRecipe:
    batch_size: int = 32
    caption_dropout: float = 0.1          # rows trained with the empty prompt, so text CFG has an unconditional
    data_start_step: int = 0              # a continued run starts here so it sees clips the first run did not
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=4000, lr=1e-3, warmup_steps=200,
                                                                   ema_decay=0.998, save_every=250, log_every=25))
    loss: FlowLossConfig = FlowLossConfig()

    def with_steps(self, steps: int) -> "EmbeddedRecipe":
        import dataclasses
        return dataclasses.replace(self, train=dataclasses.replace(self.train, steps=steps))


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
        missing = [c for c in dict.fromkeys(captions) if c not in self._captions]
        if missing:
            with torch.no_grad():
                encoded: EncodedText = self.text_encoder.encode(missing)
            for caption, row in zip(missing, encoded.embeddings):
                self._captions[caption] = row.float().cpu()
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
                           export: bool = True, progress: bool = True, seed: int = 0) -> TrainResult:
    """Train (or resume) the embedded default in ``out_dir``; with ``export`` write the EMA weights, the text
    encoder and the loss curve to ``out_dir`` (embedded_default.safetensors, embedded_text_encoder.safetensors,
    loss.png, recipe.json). ``init_weights``: start from these weights (e.g. the shipped ones) instead of seed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video_codec, audio_codec = TinyVideoCodec(), TinyAudioCodec()
    config = embedded_config(video_codec, audio_codec)
    if init_weights is not None:
        model = load_joint_model(init_weights)
        if model.config != config:
            raise ValueError(f"init_weights: {init_weights} holds another configuration than the embedded default")
    else:
        torch.manual_seed(seed)
        model = JointModel(config)
    text_encoder = TinyTextEncoder.from_file(EMBEDDED_TEXT_FILE) if EMBEDDED_TEXT_FILE.is_file() else TinyTextEncoder()
    batches = BounceBatches(recipe.batch_size, recipe.caption_dropout, text_encoder, video_codec, audio_codec,
                            data_start_step=recipe.data_start_step)
    loss = lambda m, batch, g: av_flow_loss(m, batch, g, recipe.loss)  # noqa: E731
    result = train(model, batches, loss, recipe.train, out_dir, resume=resume, progress=progress)
    if export:
        export_embedded(model, result, text_encoder, recipe, out_dir)
    return result


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
