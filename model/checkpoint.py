"""Loading and saving joint models: Ovi's checkpoints as they are published, and our own files.

Our files carry their ``JointConfig`` as JSON in the safetensors metadata (key ``syncav_config``). Ovi's files
carry no config, so it is read off the tensor shapes; the one thing shapes cannot tell, the number of heads,
comes from the known Ovi geometry (head width 128) or from the caller.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import torch

from .config import OVI_ROPE_SCALE, JointConfig, TowerConfig, get_preset
from ..runtime.fp8 import FP8_OPS, is_fp8, layer_weight_keys
from .joint import JointModel
from ..files.safetensors_io import (CheckpointError, describe_key_mismatch, load_weights, read_header,
                             save_tensors_atomic, shape_of)

CONFIG_METADATA_KEY = "syncav_config"
_REQUIRED = ("video_model.patch_embedding.weight", "audio_model.patch_embedding.0.weight",
             "video_model.head.head.weight", "audio_model.head.head.weight")
_FP8 = {"F8_E4M3", "F8_E5M2"}


def _count_blocks(keys, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}\.blocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(shapes: dict[str, list[int]], num_heads: int | None = None, path: str = "checkpoint"
                 ) -> JointConfig:
    """Read a JointConfig off the tensor shapes of an Ovi-layout state dict."""
    absent = [k for k in _REQUIRED if k not in shapes]
    if absent:
        sample = ", ".join(sorted(shapes)[:5])
        raise CheckpointError(f"{path}: not a joint audio-video (Ovi-layout) checkpoint: missing {', '.join(absent)}; "
                              f"its first keys are: {sample}")
    dim, video_in, *patch = shape_of(shapes, "video_model.patch_embedding.weight", 5, path)
    _, audio_in, audio_kernel = shape_of(shapes, "audio_model.patch_embedding.0.weight", 3, path)
    ffn_dim = shape_of(shapes, "video_model.blocks.0.ffn.0.weight", 2, path)[0]
    text_dim = shape_of(shapes, "video_model.text_embedding.0.weight", 2, path)[1]
    freq_dim = shape_of(shapes, "video_model.time_embedding.0.weight", 2, path)[1]
    if min(dim, video_in, audio_in, audio_kernel, ffn_dim, text_dim, freq_dim, *patch) < 1:
        raise CheckpointError(f"{path}: the patch / text / time embeddings have a size-0 dimension")
    video_out = shape_of(shapes, "video_model.head.head.weight", 2, path)[0] // (patch[0] * patch[1] * patch[2])
    audio_out = shape_of(shapes, "audio_model.head.head.weight", 2, path)[0]
    layers = _count_blocks(shapes, "video_model")
    if num_heads is None:
        # Wan and Ovi use 128-wide heads at every released size (1536 and up); below that there is no convention.
        if dim < 1536 or dim % 128:
            raise CheckpointError(f"{path}: cannot tell the number of attention heads of a {dim}-wide model from "
                                  "its weights (it carries no config metadata); pass num_heads")
        num_heads = dim // 128
    is_ovi_geometry = (dim, video_in, audio_in, text_dim) == (3072, 48, 20, 4096)
    if num_heads < 1 or dim % num_heads or (dim // num_heads) % 2:
        raise CheckpointError(f"{path}: a {dim}-wide model does not split into {num_heads} attention heads of even "
                              "width")
    common = dict(dim=dim, ffn_dim=ffn_dim, num_heads=num_heads, num_layers=layers, freq_dim=freq_dim,
                  text_dim=text_dim, text_len=512, qk_norm="video_model.blocks.0.self_attn.norm_q.weight" in shapes,
                  cross_attn_norm="video_model.blocks.0.norm3.weight" in shapes)
    return JointConfig(
        name="ovi" if is_ovi_geometry else "ovi-layout",
        video=TowerConfig(modality="video", in_channels=video_in, out_channels=video_out, patch_size=tuple(patch),
                          **common),
        audio=TowerConfig(modality="audio", in_channels=audio_in, out_channels=audio_out, patch_size=(1,),
                          rope_scale=OVI_ROPE_SCALE, audio_embed_kernel=audio_kernel, **common),
    )


def config_from_metadata(text: str, shapes: dict[str, list[int]], path) -> JointConfig:
    """The ``syncav_config`` a file carries, checked against its tensors before any network is built from it."""
    try:
        config = JointConfig.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as error:
        # json's errors are ValueErrors; a missing / extra field is a TypeError or KeyError
        raise CheckpointError(f"{path}: metadata {CONFIG_METADATA_KEY!r} is not a joint model config ({error}); "
                              f"found {text[:120]!r}") from None
    _check_config_values(config, path)
    # A config that disagrees with the weights would build a network of its own size first (a corrupted config
    # can ask for millions of blocks): compare the depth and width the tensors show.
    blocks = _count_blocks(shapes, "video_model")
    stored = shapes.get("video_model.patch_embedding.weight", [None])
    if config.video.num_layers != blocks or stored[:1] != [config.video.dim]:
        raise CheckpointError(f"{path}: metadata {CONFIG_METADATA_KEY!r} describes {config.video.num_layers} blocks "
                              f"of width {config.video.dim}, the tensors {blocks} blocks of width "
                              f"{stored[0] if stored[:1] else 'unknown'}: a corrupted or edited file")
    return config


# Fields a file's config sets that no tensor shape can check: numbers that must be finite and positive (eps and the
# x0 floor also below 1). A wrong one would not fail at load but make every generation garbage (a negative eps, a
# timestep scale of 0, a string where a number belongs fails only at the first forward).
_POSITIVE_FIELDS = {"eps", "rope_scale", "timestep_scale", "x0_sigma_floor", "text_len", "num_heads", "freq_dim",
                    "dim", "ffn_dim", "num_layers", "in_channels", "out_channels", "text_dim", "audio_embed_kernel"}
_BELOW_ONE_FIELDS = {"eps", "x0_sigma_floor"}
MAX_TEXT_ROWS = 1 << 16     # text_len pads every prompt to this many rows; Ovi uses 512
_FIELD_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_config_values(config, path, where: str = CONFIG_METADATA_KEY) -> None:
    """Every field of a config read from a file has its declared type and, where it must, a finite positive value."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        name = f"{where}.{field.name}"
        if dataclasses.is_dataclass(value):
            _check_config_values(value, path, name)
            continue
        types = _FIELD_TYPES.get(str(field.type))
        if field.name == "patch_size":
            ok = all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
        elif types is None:
            continue
        else:
            ok = isinstance(value, types) and (bool not in types) == (not isinstance(value, bool))
            if ok and field.name in _POSITIVE_FIELDS:
                ok = math.isfinite(value) and 0 < value and (value < 1 or field.name not in _BELOW_ONE_FIELDS)
            if ok and field.name == "text_len" and value > MAX_TEXT_ROWS:
                raise CheckpointError(f"{path}: metadata {name} is {value}; expected at most {MAX_TEXT_ROWS} rows")
        if not ok:
            bound = " below 1" if field.name in _BELOW_ONE_FIELDS else ""
            raise CheckpointError(f"{path}: metadata {name} is {value!r}; expected a "
                                  f"{'positive ' if field.name in _POSITIVE_FIELDS else ''}{field.type}{bound}")


def key_mismatch_error(path, expected: dict, found: dict) -> CheckpointError:
    """The error for a file whose ``{key: shape}`` layout is not the network's."""
    return CheckpointError(f"{path}: checkpoint of another architecture: {describe_key_mismatch(expected, found, 5)}")


def load_joint_model(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                     *, config: JointConfig | None = None, preset: str | None = None, num_heads: int | None = None,
                     operations=None) -> JointModel:
    """Load a joint model from a safetensors file (Ovi's fusion checkpoint or one of ours).

    dtype: the dtype of the weights in memory. None: as stored; for an fp8 file (float8 Linear / Conv weights, as
        the public Ovi conversion stores them) those weights stay in fp8 and are cast per layer to the compute
        dtype, bf16 (``model.compute_dtype``), and every other tensor is loaded in bf16. A dtype given: every
        tensor is converted to it (fp8 weights upcast).
    operations: the layer namespace (ComfyUI's ``comfy.ops.manual_cast`` inside ComfyUI). When None and fp8
        storage is kept, the layers of runtime/fp8.py, which cast their weights per call.
    config / preset: override what the file says or what its shapes imply.
    """
    path = os.fspath(path)
    header, metadata = read_header(path)
    shapes = {k: v["shape"] for k, v in header.items()}
    if config is None and preset is not None:
        config = get_preset(preset)
    if config is None and CONFIG_METADATA_KEY in metadata:
        config = config_from_metadata(metadata[CONFIG_METADATA_KEY], shapes, path)
    if config is None:
        config = infer_config(shapes, num_heads, path)

    stored = {v["dtype"] for v in header.values()}
    keep_fp8 = dtype is None and bool(stored & _FP8)
    if keep_fp8 and operations is None:
        operations = FP8_OPS  # torch.nn layers cannot multiply an fp8 weight with a bf16 input
    try:
        with torch.device("meta"):
            model = JointModel(config, operations)
    except (ValueError, TypeError, ZeroDivisionError) as error:
        raise CheckpointError(f"{path}: its config does not make a joint model: {error}") from None
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    if expected != shapes:
        raise key_mismatch_error(path, expected, shapes)

    if dtype is None:
        dtype = torch.bfloat16 if stored & _FP8 else (torch.bfloat16 if stored == {"BF16"} else
                                                      torch.float16 if stored == {"F16"} else torch.float32)
    fp8_keys = layer_weight_keys(model) if keep_fp8 else set()

    def converted(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point() or (key in fp8_keys and is_fp8(tensor.dtype)):
            return tensor
        return tensor.to(dtype)

    # Read straight onto the target device: the NaN/inf check and the dtype conversion run there, per tensor.
    state = load_weights(path, device=device, cast=converted)
    model.load_state_dict(state, strict=True, assign=True)
    if keep_fp8:
        model.compute_dtype = torch.bfloat16
    return model.to(device).eval()


def save_joint_model(model: JointModel, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None
                     ) -> None:
    """Write the model's weights and config to one safetensors file, atomically."""
    metadata = {CONFIG_METADATA_KEY: model.config.to_json(), **(extra_metadata or {})}
    save_tensors_atomic(model.state_dict(), path, metadata)
