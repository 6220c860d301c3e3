"""The latent cache of a clip folder: a clip's video latent, audio latent and caption embedding, encoded once and
kept on disk (with a cache folder) as one safetensors file per clip.

A file's key is the clip file's name, size and modification time, its caption, and the dataset's decoding settings
with the codecs and the text encoder (``codec_identity``, ``text_encoder_fingerprint``): a changed file or setting is
a miss, and so is a cache file whose stored key differs or that cannot be read. A cache that cannot be written leaves
the latents in memory only. ``train.av_dataset`` decides what to encode and keeps the latents.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ..files.safetensors_io import load_tensors, read_header, save_tensors_atomic
from .clip_folder import ClipFile

log = logging.getLogger(__name__)

CACHE_FORMAT = "comfyui-syncav clip latents v2"   # v2: frames scaled by libswscale, audio downmix
TEXT_BATCH = 16            # captions per text-encoder call


def text_encoder_fingerprint(text_encoder) -> str:
    """A cheap identity of a text encoder's weights: the hash of one probe encoding (a changed encoder is a miss)."""
    with torch.no_grad():
        probe = text_encoder.encode(["syncav latent cache probe"]).embeddings
    data = probe.detach().float().cpu().contiguous().numpy().tobytes()
    return f"{type(text_encoder).__name__}:{hashlib.sha1(data).hexdigest()[:16]}"


def codec_identity(codec) -> dict:
    keys = ("fps", "latent_channels", "temporal_stride", "spatial_stride", "sample_rate", "samples_per_latent",
            "audio_channels")
    return {"type": type(codec).__name__, **{k: getattr(codec, k) for k in keys if hasattr(codec, k)}}


def encode_captions(text_encoder, captions: list[str]) -> list[tuple[torch.Tensor, int]]:
    """(embedding [L, D] float32 on the CPU, length) per caption, ``TEXT_BATCH`` captions per encoder call."""
    rows = []
    for begin in range(0, len(captions), TEXT_BATCH):
        encoded = text_encoder.encode(captions[begin:begin + TEXT_BATCH])
        for embedding, length in zip(encoded.embeddings, encoded.lengths):
            rows.append((embedding.float().cpu().clone(), int(length)))
    return rows


class LatentCacheFiles:
    """The cache files of one dataset: ``cache_dir`` (None: nothing on disk, every read a miss) and ``settings``,
    the part of every key that the dataset's decoding settings, codecs and text encoder make."""

    def __init__(self, cache_dir: Path | None, settings: dict):
        self.cache_dir = cache_dir
        self.settings = settings

    def key(self, clip: ClipFile) -> str:
        key = {"file": clip.name, "size": clip.size, "mtime_ns": clip.mtime_ns, "caption": clip.caption,
               **self.settings}
        return json.dumps(key, sort_keys=True)

    def path(self, clip: ClipFile, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.cache_dir / f"{clip.name}.{digest}.safetensors"

    def read(self, clip: ClipFile, key: str) -> dict[str, torch.Tensor] | None:
        """The clip's tensors (video, audio, text, text_length) on a hit, None on a miss."""
        if self.cache_dir is None:
            return None
        path = self.path(clip, key)
        if not path.is_file():
            return None
        try:
            _, metadata = read_header(path)
            if metadata.get("key") != key:
                return None
            tensors = load_tensors(path)
            if set(tensors) != {"video", "audio", "text", "text_length"}:
                return None
            return tensors
        except Exception as error:  # noqa: BLE001 - a broken cache file is only a miss
            log.warning("SyncAV dataset: ignoring unreadable cache file %s (%s)", path.name, error)
            return None

    def write(self, clip: ClipFile, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.cache_dir is None:
            return
        try:
            save_tensors_atomic(tensors, self.path(clip, key), {"key": key, "clip": clip.name})
        except OSError as error:
            log.warning("SyncAV dataset: could not write the latent cache for %s to %s (%s); keeping it in memory "
                        "only", clip.name, self.cache_dir, error)
