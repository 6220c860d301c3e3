"""Reading and writing safetensors files with clear errors and atomic writes (never pickle)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path


class CheckpointError(ValueError):
    """A weights file that cannot be used, with a message that names the file and what was wrong."""


# Bytes per element of every safetensors dtype this package reads (the format's names); F8_E8M0 and the 4/6-bit
# types have no torch dtype that every supported torch version loads, so they are refused by name.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# Network weights are floating point; an integer weight file is another kind of file (or a corrupted header).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
MAX_HEADER_BYTES = 100 * 2 ** 20        # the safetensors library's own limit
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list) -> dict:
    # json.loads keeps the last of two equal keys; in a header that would silently drop a tensor's description.
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(path, key: str, info) -> tuple[int, int]:
    """One tensor's header entry is well formed -> its (begin, end) byte offsets in the data section."""
    if not key or not key.isprintable():
        raise CheckpointError(f"{path}: tensor name {key!r} in the header is empty or holds control characters")
    if not isinstance(info, dict) or set(info) != _ENTRY_FIELDS:
        found = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise CheckpointError(f"{path}: header entry {key!r}: expected the fields dtype, shape, data_offsets, "
                              f"found {found}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{path}: tensor {key!r} has dtype {dtype!r}; expected one of "
                              f"{', '.join(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise CheckpointError(f"{path}: tensor {key!r} has shape {shape!r}; expected a list of sizes >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets) \
            or offsets[0] > offsets[1]:
        raise CheckpointError(f"{path}: tensor {key!r} has data_offsets {offsets!r}; expected [begin, end] with "
                              "0 <= begin <= end")
    numel = 1
    for n in shape:
        numel *= n
    if numel * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise CheckpointError(f"{path}: tensor {key!r}: {dtype} {shape} takes {numel * DTYPE_BYTES[dtype]} bytes, "
                              f"its data_offsets {offsets} span {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


def _check_layout(path, spans: dict[str, tuple[int, int]], data_start: int, size: int) -> None:
    """The tensors tile the data section exactly, as the format requires: no overlap, no gap, nothing past the
    end of the file and nothing after the last tensor."""
    position, previous = 0, None
    for key, (begin, end) in sorted(spans.items(), key=lambda item: item[1]):
        if begin < position:
            raise CheckpointError(f"{path}: tensors {previous!r} and {key!r} overlap in the data section (bytes "
                                  f"{begin}..{position} are claimed twice): a corrupted header")
        if begin > position:
            raise CheckpointError(f"{path}: bytes {position}..{begin} of the data section belong to no tensor "
                                  f"(before {key!r}): a corrupted header")
        position, previous = end, key
    if data_start + position > size:
        raise CheckpointError(f"{path}: truncated: the header describes {data_start + position} bytes, the file has "
                              f"{size} (an interrupted download or copy?)")
    if data_start + position < size:
        raise CheckpointError(f"{path}: {size - data_start - position} bytes after the last tensor's data: a "
                              "corrupted or concatenated file")


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse and check a safetensors header without loading tensors -> ({key: {"dtype", "shape"}}, metadata).

    Everything the safetensors format requires is checked here, so a malformed file gets one ``CheckpointError``
    naming it and the fault, never the library's own error (or a ``KeyError``) later.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
            raw = f.read(min(header_len, MAX_HEADER_BYTES))
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); expected a safetensors file")
    if len(prefix) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
    if header_len == 0 or header_len > MAX_HEADER_BYTES or (header_len > size - 8 and not raw.startswith(b"{")):
        raise CheckpointError(f"{path}: not a safetensors file (expected an 8-byte header length and a JSON "
                              "header; .ckpt/.pt/.pth pickles are not loaded, convert them to safetensors)")
    if header_len > size - 8:
        raise CheckpointError(f"{path}: truncated: its header announces {header_len} bytes, the file has {size} "
                              "in all (an interrupted download or copy?)")
    try:
        header = json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as duplicate:
        raise CheckpointError(f"{path}: the header names {duplicate.args[0]!r} twice: a corrupted header") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is a JSON {type(header).__name__}, "
                              "expected an object)")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: header __metadata__ must map names to strings, found {str(metadata)[:120]}")
    spans = {key: _check_entry(path, key, info) for key, info in header.items()}
    _check_layout(path, spans, 8 + header_len, size)
    return {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items()}, metadata


def _tensors(path, device) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) of a file already checked by ``read_header``, one tensor at a time, on ``device``."""
    try:
        with safe_open(str(path), framework="pt", device=str(torch.device(device))) as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: cannot be read as safetensors ({message})") from None


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (any dtype, values unchecked: caches, training state)."""
    read_header(path)  # clear errors for files that are not safetensors, truncated or malformed
    return dict(_tensors(path, device))


# Bits that are all set in a non-finite fp8 value (e4m3fn: NaN only; e5m2: inf and NaN).
_FP8_NON_FINITE_MASKS = {torch.float8_e4m3fn: 0x7F, torch.float8_e5m2: 0x7C}


def count_non_finite(tensor: torch.Tensor) -> int:
    """How many NaN / inf values ``tensor`` holds (0 for non-float tensors).

    The common, all-finite case costs one min/max pass and no full-size temporary (``isfinite(t).all()`` is ~10x
    slower on a CPU); only a tensor that fails is counted exactly. fp8 has no min/max kernels on every device, so
    its bytes are masked: NaN in e4m3fn is S.1111.111, inf/NaN in e5m2 have the exponent S.11111.xx.
    """
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return 0
    if tensor.dtype in _FP8_NON_FINITE_MASKS:
        mask = _FP8_NON_FINITE_MASKS[tensor.dtype]
        masked = tensor.view(torch.uint8) & mask
        return 0 if int(masked.max()) != mask else int((masked == mask).sum())
    low, high = torch.aminmax(tensor)            # NaN propagates into both, inf shows up in one
    if bool(torch.isfinite(torch.stack([low, high])).all()):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def check_weights(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse weights that are not floating point or hold NaN / inf (names ``where`` and the first bad tensor)."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{where}: tensor {key!r} is {tensor.dtype}; network weights must be floating "
                                  "point")
        bad = count_non_finite(tensor)
        if bad:
            raise CheckpointError(f"{where}: tensor {key!r} holds {bad} NaN/inf values (of {tensor.numel()}); "
                                  "expected finite weights (a corrupted file, or saved from a training run that "
                                  "diverged)")


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu",
                 cast: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a network's weights file, checked as they load: floating point only, every value finite.

    Each tensor is checked once, on ``device`` (a GPU checks in a fraction of the read time), right after it is
    read, and before ``cast(key, tensor)`` (the loader's dtype conversion, so a peak of one extra tensor) is
    applied. Raises ``CheckpointError`` naming the file and the first offending tensor.
    """
    header, _ = read_header(path)
    not_float = [(k, v["dtype"]) for k, v in header.items() if v["dtype"] not in FLOAT_DTYPES]
    if not_float:
        examples = ", ".join(f"{k} ({d})" for k, d in not_float[:3])
        raise CheckpointError(f"{path}: {len(not_float)} tensors are not floating point, e.g. {examples}; network "
                              f"weights are stored as {', '.join(FLOAT_DTYPES)}")
    tensors = {}
    for key, tensor in _tensors(path, device):
        check_weights({key: tensor}, path)
        tensors[key] = cast(key, tensor) if cast is not None else tensor
    return tensors


def shape_of(shapes: Mapping[str, Sequence[int]], key: str, rank: int, path) -> list[int]:
    """``shapes[key]`` when present with ``rank`` dimensions, else a ``CheckpointError`` naming the file."""
    if key not in shapes:
        raise CheckpointError(f"{path}: tensor {key} is missing")
    shape = list(shapes[key])
    if len(shape) != rank:
        raise CheckpointError(f"{path}: tensor {key} has shape {shape}; expected {rank} dimensions")
    return shape


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

