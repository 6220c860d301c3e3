"""The cache of scored pairs (data/scored_pairs.py).

Sampling is the expensive part, so everything is cached in ``cache_dir/pairs.safetensors`` (atomic write): the
pairs of every prompt (before the ``min_gap`` filter, which is applied on load), the text embeddings, every
sample's score and metrics, and the metadata (prompts, config JSON, model names). The cache is keyed by a hash of
the prompts, the config (all but ``min_gap``), the prompts' text embeddings and a fingerprint of the model's
weights (``model_fingerprint``), so a call with the same prompts and config loads it and a changed model
(e.g. after a DPO round trained its LoRA) samples again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ..files.safetensors_io import CheckpointError, load_tensors, read_header, save_tensors_atomic
from ..text.interface import EncodedText
from .pair_scoring import CHANCE_SHIFTS, SCORING_VERSION

log = logging.getLogger(__name__)

__all__ = ["CACHE_FILE", "CACHE_FORMAT", "model_fingerprint", "model_names", "cache_key", "load_cache", "save_cache"]

CACHE_FILE = "pairs.safetensors"
CACHE_FORMAT = "syncav-scored-pairs-v1"
_PROBES = 16     # elements read from every tensor for the fingerprint (besides its sum and sum of squares)


def model_fingerprint(module: torch.nn.Module) -> str:
    """A hex fingerprint of a module's weights: names, shapes and dtypes of every state-dict tensor, plus its sum,
    sum of squares and 16 evenly spaced elements. Not a full hash (that would read every byte through the CPU),
    but any training step, LoRA update or edited weight changes it. Computed on the tensors' device, one transfer.
    """
    hasher = hashlib.sha256()
    readings = []
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            hasher.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            if tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()
                                           or tensor.dtype in (torch.int64, torch.int32, torch.bool)):
                continue
            flat = tensor.detach().reshape(-1)
            flat = flat.float() if not tensor.is_complex() else torch.view_as_real(flat).reshape(-1).float()
            index = torch.linspace(0, flat.numel() - 1, min(_PROBES, flat.numel()), device=flat.device).long()
            readings.append(torch.cat([flat.sum().view(1), flat.square().sum().view(1), flat[index]]))
    if readings:
        device = readings[0].device
        hasher.update(torch.cat([r.to(device) for r in readings]).cpu().numpy().tobytes())
    return hasher.hexdigest()


def _tensor_digest(*tensors: torch.Tensor) -> str:
    hasher = hashlib.sha256()
    for t in tensors:
        t = t.detach().float().cpu().contiguous()
        hasher.update(f"{tuple(t.shape)};".encode())
        hasher.update(t.numpy().tobytes())
    return hasher.hexdigest()


def model_names(pipeline) -> tuple[str, str]:
    """(the pipeline's name, its model config's name), as the cache records them."""
    model_config = getattr(getattr(pipeline, "model", None), "config", None)
    return str(getattr(pipeline, "name", type(pipeline).__name__)), str(getattr(model_config, "name", ""))


def cache_key(prompts: list[str], config, pipeline, text: EncodedText, video_shape, audio_shape
              ) -> tuple[str, str]:
    """(the cache key, the model fingerprint) of a ``ScoredPairsConfig`` run on ``pipeline``: a hash of what decides
    the samples, so another ``min_gap`` or batching reuses them."""
    sampling = config.to_dict()
    sampling.pop("min_gap")                      # applied on load: another min_gap reuses the samples
    sampling.pop("sample_batch_size")            # how the rows were batched, not what they are
    fingerprint = model_fingerprint(pipeline.model)
    pipeline_name, config_name = model_names(pipeline)
    identity = {
        "format": CACHE_FORMAT, "scoring": [SCORING_VERSION, list(CHANCE_SHIFTS)], "prompts": prompts,
        "config": sampling, "model": fingerprint,
        "pipeline": pipeline_name, "model_config": config_name,
        "codecs": [type(pipeline.video_codec).__name__, type(pipeline.audio_codec).__name__],
        "shapes": [list(video_shape), list(audio_shape)],
        "text": _tensor_digest(text.embeddings, text.lengths),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(), fingerprint


def load_cache(path: Path, key: str) -> tuple[dict[str, torch.Tensor], list[list[dict]]] | None:
    """(tensors, per-sample details) of the cache at ``path`` when it was made under ``key``; else None."""
    if not path.is_file():
        return None
    try:
        _, metadata = read_header(path)
        if metadata.get("format") != CACHE_FORMAT or metadata.get("key") != key:
            log.info("scored pairs: %s was made for other prompts, settings or weights; sampling again", path)
            return None
        return load_tensors(path), json.loads(metadata["details"])
    except (CheckpointError, KeyError, json.JSONDecodeError, OSError) as error:
        log.warning("scored pairs: ignoring the unreadable cache %s (%s); sampling again", path, error)
        return None


def save_cache(path: Path, store: dict[str, torch.Tensor], details: list[list[dict]], key: str, fingerprint: str,
               prompts: list[str], config, pipeline) -> None:
    """Write the pairs of every prompt (``store``), every sample's details and the metadata, atomically."""
    model_name, config_name = model_names(pipeline)
    metadata = {"format": CACHE_FORMAT, "key": key, "prompts": json.dumps(prompts),
                "config": config.to_json(), "model": model_name, "model_config": config_name,
                "model_fingerprint": fingerprint, "details": json.dumps(details, allow_nan=False)}
    save_tensors_atomic(store, path, metadata)
