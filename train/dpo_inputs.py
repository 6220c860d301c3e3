"""What a DPO run is given, checked before any weight is loaded or written: the LoRA's towers, a clip dataset, and
the run folder (a new run never overwrites one; a resumed run keeps the LoRA shape it started with).

Messages name the values the way the DPO Trainer node's inputs do (``rank``, ``lora_towers``, ``output_name``,
``dataset``), which are also the parameter names here.
"""

from __future__ import annotations

import os

from ..data.av_dataset import AVClipDataset
from ..files.safetensors_io import read_header
from ..runtime.lora import LoraSpec
from .dpo_training import LORA_FILE
from .loop import CHECKPOINT_NAME
from .value_rules import one_of

# A lora_towers choice -> LoraSpec.towers.
LORA_TOWERS = {"both": ("video", "audio"), "video": ("video",), "audio": ("audio",)}


def lora_spec(rank: int, lora_towers: str = "both") -> LoraSpec:
    """The adapters of a DPO run: ``rank`` (alpha = rank) on the towers ``lora_towers`` names (``LORA_TOWERS``)."""
    one_of("lora_towers", lora_towers, LORA_TOWERS)
    return LoraSpec(rank=rank, alpha=float(rank), towers=LORA_TOWERS[lora_towers])


def towers_choice(towers) -> str:
    """The ``LORA_TOWERS`` choice of a LoraSpec's towers."""
    return "both" if set(towers) == {"video", "audio"} else towers[0]


def check_dataset(dataset, video_codec, audio_codec, model) -> AVClipDataset:
    """``dataset`` as training winners for ``model``: an encoded ``AVClipDataset`` whose latents have the codecs'
    channels and whose captions are as wide as the model reads (one latent probe of clip 0)."""
    if not isinstance(dataset, AVClipDataset) or not dataset.encoded:
        raise ValueError(f"dataset: expected an encoded clip dataset (the output of SyncAV AV Dataset), received "
                         f"{type(dataset).__name__}")
    probe = dataset.latents([0])
    cv, ca = video_codec.latent_channels, audio_codec.latent_channels
    if probe.video.shape[1] != cv or probe.audio.shape[2] != ca:
        raise ValueError(f"dataset: encoded with other codecs ({probe.video.shape[1]} video / {probe.audio.shape[2]} "
                         f"audio latent channels, these codecs use {cv} / {ca}); build it from the same SyncAV Loader")
    text_dim = model.config.video.text_dim
    if probe.text_video.shape[-1] != text_dim:
        raise ValueError(f"dataset: captions encoded {probe.text_video.shape[-1]} wide, the model reads {text_dim}; "
                         "build it with the text encoder of the same SyncAV Loader")
    return dataset


NODE_INPUTS = {"output_name": "output_name", "rank": "rank", "lora_towers": "lora_towers", "resume": "resume"}


def check_run_folder(run_dir: str | os.PathLike, output_name: str, lora: LoraSpec, resume: bool,
                     published_lora: str | os.PathLike | None = None, names=NODE_INPUTS) -> None:
    """May a run named ``output_name`` start (resume off) or continue (resume on) in ``run_dir``?

    Resume off never overwrites a run: refused while its checkpoint or its ``published_lora`` exists. Resume on
    needs the LoRA shape the run was started with (read from its LoRA file; an unreadable spec is left to the
    loop's own checks). ``names``: what the front end calls output_name, rank, lora_towers and resume.
    """
    if not resume:
        published = published_lora is not None and os.path.exists(published_lora)
        if os.path.exists(os.path.join(run_dir, CHECKPOINT_NAME)) or published:
            raise FileExistsError(f"{names['output_name']}: a run named {output_name!r} already exists; turn "
                                  f"{names['resume']} on to continue it or choose another {names['output_name']} "
                                  f"({names['resume']} off never overwrites a run)")
        return
    previous = os.path.join(run_dir, LORA_FILE)
    if not os.path.isfile(previous):
        return
    try:
        saved = LoraSpec.from_json(read_header(previous)[1]["lora_spec"])
    except Exception:  # noqa: BLE001 - an unreadable spec is left to the loop's own checks
        return
    if saved.rank != lora.rank:
        raise ValueError(f"{names['rank']}: the run {output_name!r} was started with rank {saved.rank} (targets "
                         f"{', '.join(saved.targets)}), received rank {lora.rank}; set {names['rank']} to "
                         f"{saved.rank} to resume it, turn {names['resume']} off with another "
                         f"{names['output_name']} to start a new run")
    if saved != lora:
        raise ValueError(f"{names['lora_towers']}: the run {output_name!r} was started with a LoRA on "
                         f"{towers_choice(saved.towers)}, received {towers_choice(lora.towers)}; set it back to "
                         f"resume the run, turn {names['resume']} off with another {names['output_name']} to start "
                         "a new run")


def check_text_encoder(text_encoder, model) -> None:
    """The captions' encoder must give the width the joint model reads (``model.config.video.text_dim``)."""
    text_dim = model.config.video.text_dim
    if text_encoder.dim != text_dim:
        raise ValueError(f"text_encoder: {text_encoder.dim} wide, the model reads {text_dim}; connect the text "
                         "encoder of the same SyncAV Loader")


def logging_schedule(steps: int) -> tuple[int, int]:
    """(log_every, warmup_steps) that suit a run of ``steps``: about 50 log lines (at least every 25 steps) and a
    warm-up of a tenth of the run, at most 25 steps."""
    return max(1, min(25, steps // 50)), min(25, steps // 10)
