"""Lazy access to ComfyUI, with stand-ins so every node also runs without it (unit tests, scripts).

This is the only module of the package that imports ComfyUI (``comfy``, ``folder_paths``), and it does so inside
functions: importing the package never needs ComfyUI. When ComfyUI is not importable:

* ``wrap_model`` returns a ``StandInPatcher`` (same ``.model`` / ``load_device`` / ``offload_device`` attributes
  as ``comfy.model_patcher.ModelPatcher``, no-op loading);
* ``step_progress`` shows a tqdm bar (or nothing if tqdm is missing) instead of ComfyUI's ProgressBar;
* ``operations`` is None (the library's torch.nn layers) instead of ``comfy.ops.manual_cast``;
* ``diffusion_model_names`` lists nothing and ``diffusion_model_path`` only resolves existing paths.

Set the environment variable ``SYNCAV_NO_COMFYUI=1`` to force the stand-ins even where ComfyUI is importable.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Callable, Optional

import torch
from torch import nn

DIFFUSION_MODELS = "diffusion_models"   # ComfyUI's folder name (models/diffusion_models and models/unet)
_COMFY_MODULES = ("comfy.model_management", "comfy.model_patcher", "comfy.ops", "comfy.utils", "folder_paths")


@functools.lru_cache(maxsize=1)
def comfy_available() -> bool:
    """True when ComfyUI's modules import (always inside a running ComfyUI). Cached for the process."""
    if os.environ.get("SYNCAV_NO_COMFYUI", "").strip() not in ("", "0"):
        return False
    try:
        for name in _COMFY_MODULES:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def _comfy(name: str):
    return importlib.import_module(name)


# ------------------------------------------------------------------------------------------------ devices

def load_device() -> torch.device:
    """Where the model runs: ComfyUI's torch device, else the CPU."""
    if comfy_available():
        return _comfy("comfy.model_management").get_torch_device()
    return torch.device("cpu")


def offload_device() -> torch.device:
    """Where the model waits between runs (and is built): ComfyUI's unet offload device, else the CPU."""
    if comfy_available():
        return _comfy("comfy.model_management").unet_offload_device()
    return torch.device("cpu")


def operations():
    """Layer namespace for the joint model: ``comfy.ops.manual_cast`` inside ComfyUI (its layers cast weights to the
    input's dtype and device per forward, so ComfyUI can store them in another dtype and stream them in lowvram
    mode; they skip weight init, so weights must be loaded into them), None (torch.nn) outside."""
    if comfy_available():
        return _comfy("comfy.ops").manual_cast
    return None


def compute_dtype(weight_dtype: torch.dtype) -> Optional[torch.dtype]:
    """The dtype to compute in when the load device cannot run ``weight_dtype`` natively (e.g. bf16 weights on a
    CPU or an old GPU), None when it can. Outside ComfyUI: None (compute in the weight dtype)."""
    if comfy_available():
        return _comfy("comfy.model_management").unet_manual_cast(weight_dtype, load_device())
    return None


# ------------------------------------------------------------------------------------------------ patcher

class SyncAVModel(nn.Module):
    """What the patcher wraps: a module whose ``diffusion_model`` is the JointModel.

    State-dict keys therefore read ``diffusion_model.<module path>``, ComfyUI's convention for LoRA key maps.
    ModelPatcher assigns ``.device`` itself, so it is a plain attribute here.
    """

    def __init__(self, diffusion_model: nn.Module, device: torch.device | None = None):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.device = device

    def get_dtype(self) -> torch.dtype:
        """Dtype the weights are stored in (ModelPatcher.model_dtype reads it)."""
        return next(self.diffusion_model.parameters()).dtype

    def forward(self, *args, **kwargs):
        return self.diffusion_model(*args, **kwargs)


class StandInPatcher:
    """Minimal stand-in for ``comfy.model_patcher.ModelPatcher`` outside ComfyUI: holds ``.model``, loads nothing."""

    def __init__(self, model: nn.Module, load_device: torch.device, offload_device: torch.device):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        if getattr(model, "device", None) is None:
            model.device = offload_device

    def clone(self) -> "StandInPatcher":
        return StandInPatcher(self.model, self.load_device, self.offload_device)

    def model_size(self) -> int:
        return sum(t.nelement() * t.element_size() for t in self.model.state_dict().values())

    def __repr__(self) -> str:
        return f"StandInPatcher({type(self.model).__name__}, load_device={self.load_device})"


def wrap_model(diffusion_model: nn.Module):
    """Wrap a JointModel for ComfyUI: ``ModelPatcher(SyncAVModel(model))`` inside it, a StandInPatcher outside.
    The model must already be on ``offload_device()``."""
    module = SyncAVModel(diffusion_model)
    if comfy_available():
        patcher_cls = _comfy("comfy.model_patcher").ModelPatcher
        return patcher_cls(module, load_device=load_device(), offload_device=offload_device())
    return StandInPatcher(module, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def load_for_sampling(patcher, memory_required: int = 0) -> torch.device:
    """Load the patched model onto its load device (ComfyUI frees VRAM as needed); returns that device."""
    if comfy_available() and not isinstance(patcher, StandInPatcher):
        _comfy("comfy.model_management").load_models_gpu([patcher], memory_required=memory_required)
    return torch.device(patcher.load_device)


# ------------------------------------------------------------------------------------------------ progress

class StepProgress:
    """Step callback for ``sample_av``: ``callback(step_index, total_steps, video, audio)``.

    Inside ComfyUI it updates a ProgressBar (the node's bar in the browser) and raises ComfyUI's
    InterruptProcessingException when the user pressed Cancel, which stops sampling at once. Outside it shows a
    tqdm bar, or nothing. Use as a context manager so the tqdm bar is closed.
    """

    def __init__(self, total: int, description: str = "SyncAV"):
        self.total = int(total)
        self._interrupt_check: Optional[Callable[[], None]] = None
        self._bar = None
        self._tqdm = None
        if comfy_available():
            self._bar = _comfy("comfy.utils").ProgressBar(self.total)
            self._interrupt_check = _comfy("comfy.model_management").throw_exception_if_processing_interrupted
        else:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency, but progress is optional
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=self.total, desc=description, leave=False)

    def __call__(self, step_index: int, total_steps: int, video=None, audio=None) -> None:
        if self._bar is not None:
            self._bar.update_absolute(step_index + 1, total_steps)
        if self._tqdm is not None:
            self._tqdm.update(1)
        if self._interrupt_check is not None:
            self._interrupt_check()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ files

def diffusion_model_names() -> list[str]:
    """Files in ComfyUI's models/diffusion_models (and models/unet) folders; empty outside ComfyUI."""
    if comfy_available():
        return list(_comfy("folder_paths").get_filename_list(DIFFUSION_MODELS))
    return []


def diffusion_model_folders() -> list[str]:
    """The folders ComfyUI searches for diffusion models (for error messages)."""
    if comfy_available():
        try:
            return list(_comfy("folder_paths").get_folder_paths(DIFFUSION_MODELS))
        except Exception:  # noqa: BLE001 - only used to word an error message
            return []
    return []


def diffusion_model_path(name: str) -> Optional[str]:
    """Full path of a file listed by ``diffusion_model_names``, None if there is no such file.

    Outside ComfyUI ``name`` may be a path to an existing file (scripts and tests)."""
    if comfy_available():
        found = _comfy("folder_paths").get_full_path(DIFFUSION_MODELS, name)
        if found:
            return found
    return name if os.path.isfile(name) else None
