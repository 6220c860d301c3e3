"""``train-dpo``: post-train a sync LoRA (DPO on temporal negatives, or V2A-DPO scored pairs) on a folder of your
clips or on BounceBench, with the trainer the DPO Trainer node runs (``train.dpo_training.train_dpo``).

The run folder ``--out`` holds the resumable state, ``lora.safetensors`` (SyncAV's LoRA format, ComfyUI's keys:
SyncAV Load LoRA's ``lora_path`` takes it), ``curves.png`` and ``history.json``. A clip folder's latents are encoded
once with the model's codecs and kept in a cache beside the clips (``--cache-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import os

from .common import OVI_VARIANT_KEYS, build_ovi, shipped_files

# The config fields and check_run_folder's names, as this command's flags (library errors come out under them).
TRAIN_DPO_FLAGS = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "beta_video": "--beta-video",
                   "beta_audio": "--beta-audio", "save_every": "--save-every", "seed": "--seed",
                   "shift": "--noise-shift", "objective": "--objective", "lora_towers": "--lora-towers",
                   "rank": "--rank", "output_name": "--out", "resume": "--resume", "base_fp8": "--base-fp8",
                   "blocks_on_gpu": "--blocks-on-gpu", "shard_base": "--shard-base"}
CACHE_SUBFOLDER = ".syncav_cache"          # the SyncAV AV Dataset node's too: one cache per clip folder
SCORED_PAIRS_SUBFOLDER = "scored_pairs"


def add_train_dpo_arguments(commands) -> None:
    p = commands.add_parser("train-dpo", help="post-train a sync LoRA (DPO) on a clip folder or on BounceBench")
    p.add_argument("--model", default="embedded", choices=("embedded",) + OVI_VARIANT_KEYS,
                   help="the model to post-train: the embedded default or an Ovi variant from --models-dir")
    p.add_argument("--models-dir", default=None,
                   help="ComfyUI-style models folder for Ovi (default: $SYNCAV_MODELS_DIR, else ./models)")
    p.add_argument("--data", default=None, metavar="FOLDER",
                   help="clips with sound and same-name .txt captions; omitted: BounceBench train clips (embedded)")
    p.add_argument("--seconds", type=float, default=None, help="training length of each clip (default: the "
                                                                "model's clip length)")
    p.add_argument("--size", type=int, default=None, help="square frame size in px (default: the model's width)")
    p.add_argument("--cache-dir", default=None, help=f"latent cache of --data (default: FOLDER/{CACHE_SUBFOLDER})")
    p.add_argument("--out", required=True, help="run folder: resumable state, lora.safetensors, curves, history")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps in total (a resumed run counts its own)")
    p.add_argument("--batch-size", type=int, default=4, help="real clips per step (DPO adds a negative for each)")
    p.add_argument("--lr", type=float, default=2e-4, help="LoRA learning rate")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    p.add_argument("--lora-towers", default="both", choices=("both", "video", "audio"),
                   help="which tower gets the LoRA (the shipped sync LoRA: audio)")
    p.add_argument("--beta-video", type=float, default=None, help="DPO beta of the video term (default: the "
                                                                  "model's head's, 1000 velocity / 3000 x0)")
    p.add_argument("--beta-audio", type=float, default=None, help="DPO beta of the audio term")
    p.add_argument("--noise-shift", type=float, default=1.0, help="timestep shift of the training noise levels")
    p.add_argument("--curriculum", default=None, metavar="FILE",
                   help="curriculum JSON (stages of temporal-negative rules; default: the shipped coarse-to-subtle)")
    p.add_argument("--objective", default="dpo", choices=("dpo", "sft"),
                   help="dpo, or sft: the same LoRA fine-tuned on the real clips alone (the baseline)")
    p.add_argument("--pairs", default="negatives", choices=("negatives", "scored"),
                   help="negatives: each clip against its temporally broken copy (SyncDPO); scored: the model's own "
                        "samples of BounceBench captions, best against worst by sync and quality (V2A-DPO)")
    p.add_argument("--prompts", type=int, default=64, help="--pairs scored: BounceBench train captions to sample")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint, LoRA and curves every this many steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (noise, negatives, LoRA init)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue the run in --out (default); --no-resume refuses a folder that holds one")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each block in the backward pass instead of keeping its activations (less memory)")
    p.add_argument("--base-fp8", action="store_true",
                   help="store the frozen base's matrices in fp8 (half the memory of bf16; upcast per layer, the LoRA "
                        "keeps its precision)")
    p.add_argument("--blocks-on-gpu", type=int, default=None, metavar="N",
                   help="block swap: keep N fusion blocks on the device and copy the others' frozen weights in per "
                        "block, forward and backward (turns on --gradient-checkpointing)")
    p.add_argument("--shard-base", action="store_true",
                   help="under torchrun: shard the frozen base model over the processes (FSDP2), for a model too "
                        "large for one device")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")


def _training_config(args):
    """The DPOTrainingConfig of these flags; a value the config refuses is named by its flag."""
    from ..negatives.curriculum import DEFAULT_CURRICULUM, Curriculum
    from ..train.dpo_inputs import logging_schedule, lora_spec
    from ..train.dpo_loss import DPOConfig
    from ..train.dpo_training import DPOTrainingConfig, check_shard_base
    from ..train.loop import MemoryConfig
    from ..train.noise_mix import NoiseMix
    from ..train.value_rules import named_as

    curriculum = DEFAULT_CURRICULUM
    if args.curriculum is not None:
        with open(args.curriculum, encoding="utf-8") as handle:
            try:
                curriculum = Curriculum.from_json(handle.read())
            except ValueError as error:
                raise ValueError(f"--curriculum {args.curriculum}: {error}") from None
    log_every, warmup_steps = logging_schedule(args.steps)
    with named_as(TRAIN_DPO_FLAGS):
        memory = MemoryConfig(base_fp8=args.base_fp8, blocks_on_gpu=args.blocks_on_gpu)
        check_shard_base(args.shard_base, memory)
        return DPOTrainingConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, lora=lora_spec(args.rank, args.lora_towers),
            dpo=DPOConfig(beta_video=args.beta_video, beta_audio=args.beta_audio,
                          noise=NoiseMix(shift=args.noise_shift)),
            curriculum=curriculum, objective=args.objective, save_every=args.save_every, log_every=log_every,
            warmup_steps=warmup_steps, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing,
            memory=memory)


def _clip_batches(args, world, pipeline, batch_size: int):
    """Batches of the clip folder --data, encoded once with the pipeline's codecs (and cached)."""
    from ..data.av_dataset import AVClipDataset
    from ..train.dpo_inputs import check_dataset

    default = pipeline.default_clip
    seconds = default.seconds if args.seconds is None else args.seconds
    size = default.width_px if args.size is None else args.size
    cache_dir = args.cache_dir or os.path.join(args.data, CACHE_SUBFOLDER)
    dataset = AVClipDataset.from_pipeline(args.data, pipeline, seconds, size, cache_dir=cache_dir,
                                          device=args.device, progress=True)
    if world.is_main:
        print(dataset.summary())
    return check_dataset(dataset, pipeline.video_codec, pipeline.audio_codec, pipeline.model).batch_source(batch_size)


def _scored_pairs(args, world, pipeline, batch_size: int):
    """V2A-DPO pairs: the model's own samples of BounceBench train captions, best against worst (cached in --out);
    under torchrun every rank samples its share of them."""
    from ..bouncebench.clips import make_batch
    from ..bouncebench.config import STANDARD, split_seeds
    from ..data.scored_pairs import JobShare, ScoredPairsConfig, build_scored_pairs
    from ..train.distributed import all_gather_objects

    captions = make_batch(split_seeds("train", args.prompts), STANDARD)[2]
    share = JobShare(world.rank, world.size, all_gather_objects) if world.size > 1 else None
    pairs = build_scored_pairs(pipeline, captions, ScoredPairsConfig(seed=args.seed),
                               cache_dir=os.path.join(args.out, SCORED_PAIRS_SUBFOLDER), progress=world.is_main,
                               share=share)
    if world.is_main:
        print(f"{len(pairs)} scored pairs from {len(captions)} captions")
    return pairs.batches(batch_size)


def train_dpo_command(args) -> int:
    """One process, or one rank of ``torchrun --nproc-per-node N -m comfyui_syncav train-dpo ...``."""
    from ..train import distributed

    world = distributed.init_from_environment(args.device)
    try:
        return _train(args, world)
    finally:
        distributed.shutdown()


def _first_on_rank_0(world, make, what: str):
    """``make()`` on rank 0 first (it writes a cache), then on the other ranks (they read it)."""
    from ..train.distributed import barrier

    if not world.is_main:
        barrier(f"waiting for rank 0 to build {what}")
    made = make()
    if world.is_main:
        barrier(f"handing {what} to the other ranks")
    return made


def _train(args, world) -> int:
    from ..files.atomic import check_output_path
    from ..generation.generate import resolve_device
    from ..generation.pipeline import build_embedded_default
    from ..train.distributed import local_device
    from ..train.dpo_inputs import check_run_folder, check_text_encoder
    from ..train.dpo_training import train_dpo

    # Everything that can be checked without the model, before it is loaded (an Ovi load takes minutes).
    config = _training_config(args)
    args.device = str(local_device(resolve_device(args.device, "--device")))
    world.shard(config.batch_size, "--batch-size")   # at least one row per process
    if args.pairs == "scored" and args.data is not None:
        raise ValueError("--pairs scored: the pairs are scored against BounceBench's captions (their balls and "
                         "sounds); with --data use --pairs negatives")
    if args.pairs == "scored" and args.model != "embedded":
        raise ValueError("--pairs scored: the pairs are sampled at BounceBench's clip size, the embedded default's; "
                         "post-train an Ovi model with --pairs negatives and --data")
    if args.pairs == "scored" and args.prompts < 1:
        raise ValueError(f"--prompts: expected at least 1 caption, got {args.prompts}")
    if args.data is None and args.model != "embedded" and args.pairs == "negatives":
        raise ValueError("--data: BounceBench clips are made for the embedded default; give a clip folder to "
                         "post-train an Ovi model")
    if args.data is not None and not os.path.isdir(args.data):
        raise ValueError(f"--data {args.data}: no such folder (expected clips with same-name .txt captions)")
    check_output_path(args.out, "--out", folder=True, inputs={"--data": args.data, **shipped_files()})
    check_run_folder(args.out, args.out, config.lora, args.resume, names=TRAIN_DPO_FLAGS)

    pipeline = build_embedded_default(device=args.device) if args.model == "embedded" else build_ovi(args)
    check_text_encoder(pipeline.text_encoder, pipeline.model)
    batches = pairs = None
    if args.pairs == "scored":
        pairs = _scored_pairs(args, world, pipeline, config.batch_size)      # every rank samples its share
    elif args.data is not None:
        batches = _first_on_rank_0(world, lambda: _clip_batches(args, world, pipeline, config.batch_size),
                                   "the latent cache")
    result = train_dpo(pipeline, args.out, config, batches=batches, pairs=pairs, resume=args.resume,
                       progress=world.is_main, shard_base=args.shard_base)
    if world.is_main:
        last = result.state.history[-1] if result.state.history else {}
        ranks = f" on {world.size} processes" if world.size > 1 else ""
        ranks += ", frozen base sharded" if args.shard_base and world.size > 1 else ""
        print(f"trained {result.state.step} steps ({config.objective}){ranks}; last loss "
              f"{last.get('loss', float('nan')):.4f}; wrote {result.lora_path} and {result.curves_path}")
    return 0
