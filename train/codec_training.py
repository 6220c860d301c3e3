"""Training the embedded video codec's decoder (``codecs/learned_video.py``) on BounceBench clips.

One command reproduces it (``python -m comfyui_syncav train-codec``). Clips are made fresh every step from the
train split (step k uses seeds k*B .. k*B+B-1), half of each batch the standard one-ball clips and half one of the
other variants in turn (two and three balls, fast, small, large), so the decoder draws every scene the benchmark
has. The encoder is the fixed DCT codec; only the decoder learns. The loop is ``train/loop.py``'s (resumable,
nothing lost on interruption).

The loss is a per-pixel squared error weighted towards the balls (they cover a few % of the frame, and what the
metrics read is their position, count and colour), on frames decoded from the clips' latents, a quarter of them
with noise added, so the decoder also draws clean balls from the imperfect latents a diffusion model samples.

A decoder with a refinement (``VideoDecoderConfig.refine_width``) trains in two stages with that loss: the block
network alone (``out_dir/first_stage``, or an earlier decoder given as the first stage), then the refinement on top
of it with the block network frozen, on clips the first stage never saw. The refinement is cheap to train and only
has to learn to flatten what the first stage draws; trained together from the start it would chase the first
stage's moving output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..bouncebench.clips import make_batch
from ..bouncebench.config import STANDARD, VARIANTS, BounceBenchConfig, split_seeds
from ..codecs.embedded import TinyVideoCodec
from ..codecs.learned_video import VideoDecoder, VideoDecoderConfig, load_video_decoder, save_video_decoder
from .loop import TrainConfig, TrainResult, train
from .value_rules import fraction, positive, whole

# The scenes the second half of each batch cycles through (the first half is always STANDARD).
CODEC_VARIANTS: tuple[str, ...] = ("two_balls", "three_balls", "fast", "small", "large")
DECODER_FILE_NAME = "embedded_video_decoder.safetensors"
FIRST_STAGE_FOLDER = "first_stage"


@dataclass(frozen=True)
class CodecRecipe:
    decoder: VideoDecoderConfig = VideoDecoderConfig(width=96, hidden_layers=2, refine_width=32, refine_layers=2)
    batch_size: int = 16
    ball_weight: float = 10.0          # loss weight of pixels that differ from the background
    max_latent_noise: float = 0.1      # decoder input noise: up to this standard deviation (latents have ~unit)
    noisy_fraction: float = 0.25       # share of the clips decoded from noisy latents
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=9000, lr=2e-3, warmup_steps=100,
                                                                   ema_decay=0.995, save_every=250, log_every=25,
                                                                   weight_decay=0.0))
    # The refinement stage (decoders with refine_width > 0), on the clips after the first stage's.
    refine_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, lr=2e-3, warmup_steps=50,
                                                                          ema_decay=0.995, save_every=250,
                                                                          log_every=25, weight_decay=0.0))

    def __post_init__(self):
        whole("CodecRecipe.batch_size", self.batch_size, 2)
        positive("CodecRecipe.ball_weight", self.ball_weight)
        fraction("CodecRecipe.max_latent_noise", self.max_latent_noise)
        fraction("CodecRecipe.noisy_fraction", self.noisy_fraction)


def codec_batch(step: int, batch_size: int) -> torch.Tensor:
    """Frames [B, F, H, W, 3] of step ``step``: half STANDARD, half the step's variant (``CODEC_VARIANTS``)."""
    seeds = split_seeds("train", batch_size, start=step * batch_size)
    variant: BounceBenchConfig = VARIANTS[CODEC_VARIANTS[step % len(CODEC_VARIANTS)]]
    half = batch_size // 2
    standard, _, _ = make_batch(seeds[:half], STANDARD)
    other, _, _ = make_batch(seeds[half:], variant)
    return torch.cat([torch.as_tensor(standard), torch.as_tensor(other)]).float()


def ball_weights(frames: torch.Tensor, ball_weight: float) -> torch.Tensor:
    """[B, F, H, W, 1]: ``ball_weight`` where a pixel differs from its clip's background colour (the per-channel
    median over the clip: balls cover a few % of it) by more than 0.05, else 1."""
    flat = frames.flatten(1, 3)                                           # [B, F*H*W, 3]
    background = flat.median(dim=1).values[:, None, None, None]           # [B, 1, 1, 1, 3]
    ball = (frames - background).abs().amax(dim=-1, keepdim=True) > 0.05
    return 1.0 + (ball_weight - 1.0) * ball.float()


def decoder_loss(decoder: VideoDecoder, encoder: TinyVideoCodec, frames: torch.Tensor, generator: torch.Generator,
                 recipe: CodecRecipe) -> tuple[torch.Tensor, dict[str, float]]:
    """Ball-weighted squared error of frames [B, F, H, W, 3] decoded from their (partly noised) DCT latents."""
    with torch.no_grad():
        latent = encoder.encode(frames)                                   # [B, 16, Fv, Hv, Wv], ~unit variance
    rows = frames.shape[0]
    level = torch.rand(rows, generator=generator) * recipe.max_latent_noise
    level = torch.where(torch.rand(rows, generator=generator) < recipe.noisy_fraction, level, 0.0)
    noise = torch.randn(latent.shape, generator=generator)
    decoded = decoder(latent + level[:, None, None, None, None] * noise)
    squared = (decoded - frames) ** 2
    loss = (ball_weights(frames, recipe.ball_weight) * squared).mean()
    logs = {"loss": float(loss.detach()), "mse": float(squared.detach().mean())}
    clean = level == 0
    if bool(clean.any()):
        logs["psnr_db"] = float(-10 * torch.log10(squared.detach()[clean].clamp(0, 1).mean()))
    return loss, logs


def _train_stage(decoder: VideoDecoder, out_dir: Path, config: TrainConfig, data_start_step: int,
                 recipe: CodecRecipe, resume: bool, progress: bool) -> tuple[Path, TrainResult]:
    """Train ``decoder``'s trainable parameters on the batches from ``data_start_step`` on; write its EMA weights
    to ``out_dir/DECODER_FILE_NAME``."""
    encoder = TinyVideoCodec()

    def loss_fn(model, frames, generator):
        return decoder_loss(model, encoder, frames, generator, recipe)

    result = train(decoder, lambda step, _: codec_batch(data_start_step + step, recipe.batch_size), loss_fn, config,
                   out_dir, resume=resume, progress=progress)
    if result.ema is not None:
        result.ema.copy_to(decoder)
    path = out_dir / DECODER_FILE_NAME
    save_video_decoder(decoder.eval(), path, {"steps": str(result.state.step),
                                              "train_seconds": f"{result.state.seconds:.0f}"})
    return path, result


def train_video_decoder(out_dir: str | os.PathLike, recipe: CodecRecipe = CodecRecipe(), *,
                        first_stage: str | os.PathLike | None = None, resume: bool = True, progress: bool = True,
                        seed: int = 0) -> tuple[Path, TrainResult]:
    """Train (or resume) the decoder in ``out_dir``; writes its EMA weights to ``out_dir/DECODER_FILE_NAME`` and
    returns that path with the last stage's result.

    A decoder with a refinement trains its block network first (in ``out_dir/FIRST_STAGE_FOLDER``) unless
    ``first_stage`` names a decoder file to start from: its config must be ``recipe.decoder`` without the
    refinement, and it stays frozen.
    """
    config = recipe.decoder
    blocks = None
    if first_stage is not None:
        if not config.refine_width:
            raise ValueError(f"first stage {first_stage}: the recipe's decoder has no refinement to train on it")
        blocks = load_video_decoder(first_stage)
        if blocks.config != config.without_refinement():
            raise ValueError(f"first stage {first_stage}: expected a decoder of config "
                             f"{config.without_refinement()}, got {blocks.config}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if not config.refine_width:
        return _train_stage(VideoDecoder(config), out_dir, recipe.train, 0, recipe, resume, progress)
    if blocks is None:
        path, _ = _train_stage(VideoDecoder(config.without_refinement()), out_dir / FIRST_STAGE_FOLDER, recipe.train,
                               0, recipe, resume, progress)
        blocks = load_video_decoder(path)
    decoder = VideoDecoder(config)
    decoder.layers.load_state_dict(blocks.layers.state_dict())
    decoder.layers.requires_grad_(False)
    return _train_stage(decoder, out_dir, recipe.refine_train, recipe.train.steps, recipe, resume, progress)
