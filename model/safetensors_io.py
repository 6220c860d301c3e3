"""Reading and writing safetensors files with clear errors and atomic writes (never pickle)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic_files import atomic_path


class CheckpointError(ValueError):
    """A weights file that cannot be used, with a message that names the file and what was wrong."""


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse a safetensors header without loading tensors -> ({key: {"dtype", "shape"}}, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len <= 0 or header_len > min(size - 8, 100 * 2 ** 20):
            raise CheckpointError(f"{path}: not a safetensors file (expected an 8-byte header length and a JSON "
                                  "header; .ckpt/.pt/.pth pickles are not loaded, convert them to safetensors)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    metadata = header.pop("__metadata__", None) or {}
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(f"{path}: truncated: the header describes {8 + header_len + end} bytes, the file has "
                              f"{size} (an interrupted download or copy?)")
    return {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items()}, metadata


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    read_header(path)  # clear errors for files that are not safetensors or are truncated
    return load_file(str(path), device=str(device))


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict[str, str] | None = None) -> None:
    """Write to a temporary file beside ``path`` and rename it over: an interrupted write never leaves a
    half-written file under the final name."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def describe_key_mismatch(expected: dict, found: dict, examples: int = 4) -> str:
    """What differs between two ``{key: shape}`` layouts: missing keys, unexpected keys, other shapes (a few of
    each), for the error raised when a file holds another network than the one being loaded."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k])} (expected {list(expected[k])})" for k in expected
             if k in found and list(found[k]) != list(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:examples])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:examples])}")
    if wrong:
        parts.append(f"{len(wrong)} tensors of another shape, e.g. {'; '.join(wrong[:3])}")
    return "; ".join(parts)

