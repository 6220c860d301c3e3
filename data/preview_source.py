"""The clips a temporal-negative preview is drawn on, as latents: clips of a dataset, else BounceBench train clips."""

from __future__ import annotations

import torch

from ..bouncebench.clips import make_batch
from ..bouncebench.config import STANDARD, split_seeds
from .av_dataset import AVClipDataset

__all__ = ["preview_latents"]


def preview_latents(codecs, dataset: AVClipDataset | None, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(video ``[B, Cv, Fv, Hv, Wv]``, audio ``[B, La, Ca]``, clip name) of clip ``index`` and the next one (B = 2, so
    a swap has a donor; B = 1 for a dataset of one clip).

    codecs: the encoders (``video_codec``, ``audio_codec``, ``fps``, ``sample_rate``, ``pixel_multiple``, as SyncAV
    Loader's codecs have them). dataset: an encoded ``AVClipDataset`` (``index`` wraps around it), or None for
    BounceBench's train split, whose clips must then fit the codecs' rates and frame size.
    """
    if dataset is not None:
        if not isinstance(dataset, AVClipDataset) or not dataset.encoded:
            raise ValueError(f"dataset: expected the output of SyncAV AV Dataset, received {type(dataset).__name__}")
        n = len(dataset)
        rows = [index % n, (index + 1) % n] if n > 1 else [index % n]
        batch = dataset.latents(rows)
        if (batch.video.shape[1] != codecs.video_codec.latent_channels
                or batch.audio.shape[2] != codecs.audio_codec.latent_channels):
            raise ValueError("dataset: encoded with other codecs than the codecs input (connect both to the same "
                             "SyncAV Loader)")
        return batch.video, batch.audio, dataset.clips[rows[0]].name
    if (abs(codecs.fps - STANDARD.fps) > 1e-6 or codecs.sample_rate != STANDARD.sample_rate_hz
            or STANDARD.size_px % codecs.pixel_multiple):
        raise ValueError(f"dataset: not connected, and the BounceBench clips the preview falls back to "
                         f"({STANDARD.fps:g} fps, {STANDARD.sample_rate_hz} Hz, {STANDARD.size_px} px) do not fit "
                         f"these codecs ({codecs.fps:g} fps, {codecs.sample_rate} Hz); connect a SyncAV AV Dataset")
    seeds = split_seeds("train", 2, start=index)
    frames, waveform, _ = make_batch(seeds, STANDARD)
    with torch.no_grad():
        video = codecs.video_codec.encode(frames.float())
        audio = codecs.audio_codec.encode(waveform.float())
    return video, audio, f"BounceBench train clip {index}"
