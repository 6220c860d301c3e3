"""Convert the published pickled checkpoints Ovi uses (``.pth`` / ``.pt``) to safetensors, the only format this
package loads.

The pickle is read with ``torch.load(weights_only=True)``: only tensors and plain containers are rebuilt, and a
file that needs anything else (a class, a function) is refused rather than run. Wrappers such as
``{"generator": state_dict}`` are unwrapped, the kind of network is recognised from the key names, and the state
dict is written in the layout the loaders here expect:

- ``mmaudio-vae`` (MMAudio's ``v1-16.pth``): keys and raw weights as published (the loader applies EDM2's forced
  weight normalisation, which must run exactly once, so it is not baked in here).
- ``bigvgan`` (MMAudio's ``best_netG.pt``): the generator, weight norm folded into plain ``.weight`` tensors.
- ``wan-vae`` (``Wan2.2_VAE.pth``): keys and tensors as published.

Tensors keep their stored dtype. The output is written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field

import torch

from ..model.checkpoint import key_mismatch_error
from ..codecs.bigvgan import BigVGANGenerator, bigvgan_state_dict_for_loading, infer_bigvgan_config
from ..codecs.wan import (VAE_CONFIG_METADATA_KEY, WAN22_LATENT_CHANNELS, WAN22_VAE_CONFIG, check_wan22_vae,
                        wan22_vae_widths)
from ..codecs.mmaudio_vae import MMAudioVAE, infer_mmaudio_vae_config
from ..files.safetensors_io import CheckpointError, check_weights, save_tensors_atomic

CHECKPOINT_KINDS = ("mmaudio-vae", "bigvgan", "wan-vae")
# Keys that wrap a state dict in training checkpoints, tried in this order.
WRAPPER_KEYS = ("generator", "state_dict", "model", "module")
FORMAT_METADATA_KEY = "syncav_format"


@dataclass
class ConversionReport:
    kind: str
    num_tensors: int
    notes: list[str] = field(default_factory=list)


def load_pickled_tensors(path: str | os.PathLike) -> object:
    """``torch.load`` restricted to tensors and plain containers, with errors that name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        detail = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), first_line)
        raise CheckpointError(
            f"{path}: refused: the pickle holds objects other than tensors and plain containers ({detail}). It is "
            "read with torch.load(weights_only=True), which never runs code from the file; re-save its state dict "
            "(torch.save(model.state_dict(), ...)) in a trusted environment and convert that") from None
    except (EOFError, RuntimeError, ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or another format?): "
                              f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
                              ) from None


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: object, path: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Find the state dict inside a loaded checkpoint -> (state dict, notes on what was unwrapped or dropped)."""
    notes: list[str] = []
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise CheckpointError(f"{path}: no state dict found: a dict without tensors and without any of the keys "
                                  f"{', '.join(WRAPPER_KEYS)} (its keys: {keys})")
        notes.append(f"took the state dict under {wrapper!r}")
        obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (a dict of tensors), found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    dropped = [repr(k) for k in obj if k not in state]
    if dropped:
        notes.append(f"dropped {len(dropped)} entries that are not tensors: {', '.join(dropped[:5])}")
    return state, notes


def detect_kind(shapes: dict[str, list[int]], path: str = "checkpoint") -> str:
    """Which supported network a state dict belongs to, from its key names."""
    if "data_mean" in shapes and "encoder.conv_in.weight" in shapes:
        return "mmaudio-vae"
    keys = [k[len("generator."):] if k.startswith("generator.") else k for k in shapes]
    if any(k.startswith("conv_pre.") for k in keys) and any(k.startswith("conv_post.") for k in keys):
        return "bigvgan"
    if {"encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight", "conv2.weight"} <= set(shapes):
        return "wan-vae"
    sample = ", ".join(sorted(shapes)[:6])
    raise CheckpointError(f"{path}: not a checkpoint this command knows ({', '.join(CHECKPOINT_KINDS)}); its first "
                          f"keys are: {sample}")


def _expect_keys(path: str, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    found = {k: list(v.shape) for k, v in state.items()}
    if expected != found:
        raise key_mismatch_error(path, expected, found)


def prepare_state_dict(state: dict[str, torch.Tensor], kind: str, path: str = "checkpoint"
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Check ``state`` is a ``kind`` checkpoint and put it in the layout the loader takes -> (state, notes)."""
    shapes = {k: list(v.shape) for k, v in state.items()}
    if kind == "mmaudio-vae":
        config = infer_mmaudio_vae_config(shapes, path)
        with torch.device("meta"):
            _expect_keys(path, MMAudioVAE(config), state)
        return state, ["raw conv weights kept: the loader normalises them"]
    if kind == "bigvgan":
        folded = bigvgan_state_dict_for_loading(state, path)
        config = infer_bigvgan_config({k: list(v.shape) for k, v in folded.items()}, path)
        with torch.device("meta"):
            _expect_keys(path, BigVGANGenerator(config), folded)
        pairs = (len(state) - len(folded))
        return folded, [f"folded weight norm of {pairs} convolutions" if pairs else "weight norm already folded"]
    if kind == "wan-vae":
        missing = [k for k in ("encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight", "conv2.weight")
                   if k not in shapes]
        if missing:
            raise CheckpointError(f"{path}: not a Wan VAE (missing {', '.join(missing)})")
        latent_channels = (shapes["conv2.weight"] or [0])[0]
        if latent_channels != WAN22_LATENT_CHANNELS:
            raise CheckpointError(f"{path}: a Wan VAE with {latent_channels} latent channels (Wan2.1's has 16); Ovi "
                                  f"needs the Wan2.2 VAE ({WAN22_LATENT_CHANNELS} channels, Wan2.2_VAE.pth)")
        # Every key and shape of the network, so a partial or fake file is refused here, not when a video decodes.
        check_wan22_vae(shapes, path)
        return state, []
    raise ValueError(f"kind: expected auto or one of {', '.join(CHECKPOINT_KINDS)}, got {kind!r}")


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, kind: str = "auto") -> ConversionReport:
    """Read the pickled checkpoint ``src`` safely, check and lay it out for ``kind`` (auto: recognised from the
    keys), and write ``dst`` as safetensors, atomically."""
    src, dst = os.fspath(src), os.fspath(dst)
    if kind != "auto" and kind not in CHECKPOINT_KINDS:
        raise ValueError(f"--kind: expected auto or one of {', '.join(CHECKPOINT_KINDS)}, got {kind!r}")
    if not dst.endswith(".safetensors"):
        raise ValueError(f"output {dst}: expected a .safetensors file name")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"output {dst}: is the input file")
    state, notes = unwrap_state_dict(load_pickled_tensors(src), src)
    if not state:
        raise CheckpointError(f"{src}: the state dict holds no tensors")
    detected = detect_kind({k: list(v.shape) for k, v in state.items()}, src)
    if kind == "auto":
        kind = detected
    elif kind != detected:
        raise CheckpointError(f"{src}: --kind {kind} was asked, but the keys are those of a {detected} checkpoint")
    state, layout_notes = prepare_state_dict(state, kind, src)
    check_weights(state, src)                 # floating point, no NaN/inf: what the loaders would refuse
    metadata = {FORMAT_METADATA_KEY: kind, "syncav_converted_from": os.path.basename(src)}
    if kind == "wan-vae":
        widths = wan22_vae_widths({k: list(v.shape) for k, v in state.items()}, src)
        if any(widths[k] != WAN22_VAE_CONFIG[k] for k in widths):
            # Not the published size (a small model): the loader builds these widths from the metadata.
            metadata[VAE_CONFIG_METADATA_KEY] = json.dumps(widths, sort_keys=True)
            layout_notes.append(f"widths {widths} (not the published Wan2.2 VAE's) stored in the metadata")
    # safetensors refuses tensors that are views into a larger storage (as some pickles hold): copy those out.
    state = {k: v.clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v
             for k, v in state.items()}
    save_tensors_atomic(state, dst, metadata=metadata)
    return ConversionReport(kind=kind, num_tensors=len(state), notes=notes + layout_notes)
