"""Lazy access to ComfyUI's runtime for the nodes, with stand-ins outside a server (unit tests, scripts).

Node modules import ComfyUI's node API (``comfy_api.latest``, the V3 schema), this module and ``comfy_types``, never
each other. The rest of ComfyUI (``comfy``, ``folder_paths``) is imported here only, inside functions. When
ComfyUI's runtime is not importable (unit tests and scripts, with ComfyUI's source on the path for the node API):

* ``wrap_model`` returns a ``StandInPatcher`` (ModelPatcher's ``.model`` / ``load_device`` / ``offload_device``);
* ``StepProgress`` shows a tqdm bar (or nothing if tqdm is missing) instead of ComfyUI's ProgressBar;
* ``operations`` is None (the library's torch.nn layers) instead of ``comfy.ops.manual_cast``;
* ``diffusion_model_names`` lists nothing and ``diffusion_model_path`` only resolves existing paths;
  ``find_model_file`` searches ``$SYNCAV_MODELS_DIR`` (default ``./models``);
* ``load_text_encoder_clip`` has no stand-in: outside ComfyUI text encoders load through transformers.

Set the environment variable ``SYNCAV_NO_COMFYUI=1`` to force the stand-ins even where ComfyUI is importable.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Callable, Optional

import torch
from torch import nn

from ..files.atomic import is_hidden_or_temporary
from ..files.model_folders import default_models_dir, folder_tree_finder, folder_tree_paths
from ..files.safetensors_io import CheckpointError
from ..runtime.lora import load_lora
from ..runtime.trainable_copy import trainable_deep_copy
from ..text.comfy_clip import ComfyClipTextEncoder, check_umt5_xxl_file
from .comfy_types import PackedLatentFormat, StandInPatcher, SyncAVModel

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


def read_lora(path: str, what: str):
    """(tensors, metadata) of a SyncAV LoRA file; errors name the node input ``what``."""
    try:
        return load_lora(path)
    except CheckpointError as error:
        raise CheckpointError(f"{what}: {error}") from None


# ComfyUI's IMAGE and AUDIO conventions, checked where they enter the library (any node pack can produce them).
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
    mode; they skip weight init, so weights must be loaded into them), None (torch.nn) outside. Where the load
    device has fp8 tensor cores, manual_cast whose Linear multiplies fp8 weights in fp8 (``fp8_compute_operations``)."""
    if comfy_available():
        from ..runtime.fp8_matmul import fp8_compute_operations, fp8_matmul_supported
        ops = _comfy("comfy.ops")
        fp8 = fp8_matmul_supported(load_device())
        return fp8_compute_operations(ops.manual_cast, ops.cast_bias_weight) if fp8 else ops.manual_cast
    return None


def compute_dtype(weight_dtype: torch.dtype, supported_dtypes: Optional[list] = None) -> Optional[torch.dtype]:
    """The dtype to compute in when the load device cannot run ``weight_dtype`` natively (e.g. bf16 weights on a
    CPU or an old GPU, or fp8 weights anywhere), None when it can. ``supported_dtypes``: the compute dtypes the model
    takes, preferred first (ComfyUI's default prefers fp16; Ovi models pass bf16 first, the dtype they were trained
    and run in). Outside ComfyUI: None (compute in the weight dtype)."""
    if comfy_available():
        management = _comfy("comfy.model_management")
        if supported_dtypes is None:
            return management.unet_manual_cast(weight_dtype, load_device())
        return management.unet_manual_cast(weight_dtype, load_device(), supported_dtypes=list(supported_dtypes))
    return None


# ------------------------------------------------------------------------------------------------ patcher

def wrap_model(pipeline):
    """Wrap a pipeline's JointModel for ComfyUI: ``ModelPatcher(SyncAVModel(model))`` inside it, a StandInPatcher
    outside. The model must already be on ``offload_device()``. Inside ComfyUI the module also carries what its
    samplers read: flow-matching ``model_sampling`` at the pipeline's shift (sigma nodes, ModelSamplingSD3 and
    the guider's first step) and a ``latent_format`` for the packed audio-video latent (previews)."""
    rgb = pipeline.video_codec.preview_rgb_factors()
    if rgb is None and comfy_available() and pipeline.video_codec.latent_channels == 48:
        wan22 = _comfy("comfy.latent_formats").Wan22     # Ovi's video latent is the Wan2.2 VAE's
        rgb = (wan22.latent_rgb_factors, getattr(wan22, "latent_rgb_factors_bias", None))
    latent_format = PackedLatentFormat(pipeline.video_codec.latent_channels, *(rgb or (None, None)))
    module = SyncAVModel(pipeline.model, shift=pipeline.default_shift, latent_format=latent_format)
    if comfy_available():
        sampling = _comfy("comfy.model_sampling")

        class FlowModelSampling(sampling.ModelSamplingDiscreteFlow, sampling.CONST):
            """ComfyUI's flow-matching sampling (SD3/Wan's): x = (1 - sigma) x0 + sigma noise, shifted sigmas."""

        module.model_sampling = FlowModelSampling(module.model_config)
        patcher_cls = _comfy("comfy.model_patcher").ModelPatcher
        return patcher_cls(module, load_device=load_device(), offload_device=offload_device())
    return StandInPatcher(module, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def comfy_module(name: str):
    """A ComfyUI module, for nodes that work only inside a ComfyUI server (a clear error elsewhere)."""
    if not comfy_available():
        raise RuntimeError(f"this node needs a running ComfyUI ({name} is part of it)")
    return _comfy(name)


def nested_tensor_class():
    """Current ComfyUI's ``NestedTensor`` (how it carries an audio-video latent), None where it has none (0.3.64)."""
    try:
        return _comfy("comfy.nested_tensor").NestedTensor if comfy_available() else None
    except ImportError:
        return None


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

    def __init__(self, total: int, description: str = "SyncAV", preview: Optional[Callable] = None):
        self.total = int(total)
        self._preview = preview     # video latent -> colours [H, W, 3] in 0..1 or None (the node's live preview)
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
            self._bar.update_absolute(step_index + 1, total_steps, self._preview_image(video))
        if self._tqdm is not None:
            self._tqdm.update(1)
        if self._interrupt_check is not None:
            self._interrupt_check()

    def _preview_image(self, video):
        """ComfyUI's preview format, ("JPEG", PIL image, largest side), or None."""
        colours = None if self._preview is None or video is None else self._preview(video)
        if colours is None:
            return None
        from PIL import Image
        return "JPEG", Image.fromarray((colours * 255).round().to(torch.uint8).numpy()), 512

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


def find_model_file(folders, names) -> Optional[str]:
    """Full path of the first of ``names`` found in ComfyUI's model folders ``folders`` (e.g. ``("vae",)``), in
    their subfolders too, or None. Inside ComfyUI this follows folder_paths (extra_model_paths.yaml included); a
    folder name ComfyUI does not know (``mmaudio``) is looked up as ``models/<name>``. Outside ComfyUI:
    ``$SYNCAV_MODELS_DIR/<folder>`` (default ``./models``)."""
    if not comfy_available():
        return folder_tree_finder(models_directory())(folders, names)
    folder_paths = _comfy("folder_paths")
    for folder in folders:
        try:
            folder_paths.get_folder_paths(folder)
        except KeyError:
            found = folder_tree_finder(folder_paths.models_dir)([folder], names)
            if found:
                return found
            continue
        for name in names:
            found = folder_paths.get_full_path(folder, name)
            if found:
                return found
        listed = folder_paths.get_filename_list(folder)
        for name in names:
            for relative in listed:
                if os.path.basename(relative) == name:
                    return folder_paths.get_full_path(folder, relative)
    return None


def model_folder_paths(folders) -> list[str]:
    """The directories ``find_model_file`` searches for ``folders`` (for error messages)."""
    if not comfy_available():
        return folder_tree_paths(models_directory())(folders)
    folder_paths = _comfy("folder_paths")
    paths = []
    for folder in folders:
        try:
            paths += folder_paths.get_folder_paths(folder)
        except KeyError:
            paths.append(os.path.join(folder_paths.models_dir, folder))
    return paths


def load_text_encoder_clip(path: str, clip_type: str):
    """ComfyUI's CLIP for one text-encoder file, loaded as its Load CLIP node loads it: ``comfy.sd.load_clip`` with
    the CLIPType named ``clip_type`` (``"wan"``: UMT5-XXL) and the embeddings folder. ComfyUI then manages its
    memory (weights on the load device while encoding, offloaded after). Only inside ComfyUI."""
    if not comfy_available():
        raise RuntimeError(f"{path}: loading a text encoder as a ComfyUI CLIP needs ComfyUI; outside it the text "
                           "encoder loads through transformers")
    sd = _comfy("comfy.sd")
    kind = getattr(sd.CLIPType, clip_type.upper(), None)
    if kind is None:
        raise ValueError(f"clip_type: {clip_type!r} is not a CLIP type of this ComfyUI")
    embeddings = _comfy("folder_paths").get_folder_paths("embeddings")
    return sd.load_clip(ckpt_paths=[path], embedding_directory=embeddings, clip_type=kind)


def load_umt5_xxl_clip(path: str, dim: int, max_length: int) -> ComfyClipTextEncoder:
    """UMT5-XXL from ``path`` through ComfyUI's CLIP loader (type wan, as Load CLIP loads it), as a text encoder of
    ``dim``-wide embeddings and ``max_length`` rows. Only inside ComfyUI; the file is checked before it is read."""
    check_umt5_xxl_file(path, dim)
    clip = load_text_encoder_clip(path, "wan")
    return ComfyClipTextEncoder(clip, dim, max_length, label=f"Ovi text encoder {os.path.basename(path)}",
                                path=path)


# ------------------------------------------------------------------------------------------------ folders

LORA_FOLDER = "syncav_lora"          # ComfyUI model-folder name of SyncAV LoRAs (models/ and output/ subfolders)
LORA_EXTENSIONS = {".safetensors"}


def output_directory() -> str:
    """ComfyUI's output folder; outside ComfyUI ``$SYNCAV_OUTPUT_DIR``, else ``./output``."""
    if comfy_available():
        return _comfy("folder_paths").get_output_directory()
    return os.path.abspath(os.environ.get("SYNCAV_OUTPUT_DIR") or "output")


def models_directory() -> str:
    """ComfyUI's models folder; outside ComfyUI ``$SYNCAV_MODELS_DIR``, else ``./models``."""
    if comfy_available():
        return _comfy("folder_paths").models_dir
    return default_models_dir()


def input_directory() -> str:
    """Where relative dataset folders are looked up: ComfyUI's input folder; outside ComfyUI the current folder."""
    if comfy_available():
        return _comfy("folder_paths").get_input_directory()
    return os.getcwd()


def lora_save_folder() -> str:
    """Where SyncAV Save LoRA writes: ``models/syncav_lora``."""
    return os.path.join(models_directory(), LORA_FOLDER)


def lora_train_folder() -> str:
    """Where the DPO trainer writes its LoRA: ``output/syncav_lora``."""
    return os.path.join(output_directory(), LORA_FOLDER)


def lora_folders() -> list[str]:
    """Folders searched for SyncAV LoRAs, in order: models/syncav_lora, output/syncav_lora (plus any folder an
    extra_model_paths.yaml added under the name ``syncav_lora``). Inside ComfyUI they are registered with
    folder_paths (safetensors only), so other nodes and the file list see them too."""
    wanted = [lora_save_folder(), lora_train_folder()]
    if not comfy_available():
        return wanted
    folder_paths = _comfy("folder_paths")
    paths, _ = folder_paths.folder_names_and_paths.get(LORA_FOLDER, ([], set()))
    paths = list(paths)
    for folder in wanted:
        if folder not in paths:
            paths.append(folder)
    folder_paths.folder_names_and_paths[LORA_FOLDER] = (paths, set(LORA_EXTENSIONS))
    return paths


def lora_names() -> list[str]:
    """LoRA files in ``lora_folders()`` (relative names, sorted; a name in two folders is listed once)."""
    folders = lora_folders()
    if comfy_available():
        return list(_comfy("folder_paths").get_filename_list(LORA_FOLDER))
    names = set()
    for folder in folders:
        if os.path.isdir(folder):
            for root, _, files in os.walk(folder):
                for name in files:
                    if os.path.splitext(name)[1] in LORA_EXTENSIONS:
                        names.add(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(names)


NO_LORA = "none"


def listed_lora_names() -> list[str]:
    """The LoRA files a node offers: ``lora_names()`` without hidden or temporary files (a write cut short leaves a
    hidden ``.NAME.XXXX.tmp``; older versions left ``.NAME.XXXX.tmp.safetensors``)."""
    return [name for name in lora_names() if not is_hidden_or_temporary(name)]


def resolve_lora(lora: str, lora_file: str = "") -> tuple[str, str]:
    """(path, display name) of the LoRA chosen by the combo or, when connected and not empty, by ``lora_path``."""
    if isinstance(lora_file, str) and lora_file.strip():
        path = lora_file.strip()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"lora_path: no such file {path!r} (expected the lora_path output of SyncAV DPO "
                                    f"Trainer or SyncAV Save LoRA)")
        return path, os.path.basename(path)
    if not isinstance(lora, str) or lora == NO_LORA or not lora:
        raise ValueError(f"lora: choose a LoRA file (from {' or '.join(lora_folders())}) or connect "
                         f"lora_path (e.g. from SyncAV DPO Trainer), received {lora!r}")
    path = lora_path(lora)
    if path is None and os.path.isfile(lora):
        path = lora                      # outside ComfyUI a path works too (scripts, tests)
    if path is None:
        raise FileNotFoundError(f"lora: {lora!r} not found in {' or '.join(lora_folders())}")
    return path, lora


def lora_path(name: str) -> Optional[str]:
    """Full path of a file listed by ``lora_names`` (the first folder that has it), None if none has it."""
    folders = lora_folders()
    if comfy_available():
        return _comfy("folder_paths").get_full_path(LORA_FOLDER, name)
    for folder in folders:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


# ------------------------------------------------------------------------------------------------ LoRA and training

def patch_with_lora(patcher, lora_tensors, strength_video: float, strength_audio: float):
    """A new MODEL: ``patcher`` with a LoRA (``{comfy key: tensor}``, already checked to fit) at per-tower strengths.

    Inside ComfyUI: ``patcher.clone()`` with ``add_patches`` per tower (``comfy.lora.load_lora`` with the joint
    model's key map); ComfyUI patches the weights when the model is loaded for sampling and restores them after.
    Outside: a StandInPatcher around a deep copy of the joint model with the LoRA merged into its weights. Either
    way the input MODEL is untouched, and a tower at strength 0 gets no patch at all (exactly the base output).
    """
    from ..runtime.lora import apply_lora, comfy_lora_key_map, split_by_tower

    joint = patcher.model.diffusion_model
    strengths = {"video": float(strength_video), "audio": float(strength_audio)}
    if comfy_available() and not isinstance(patcher, StandInPatcher):
        comfy_lora = _comfy("comfy.lora")
        key_map = comfy_lora_key_map(joint)
        patched = patcher.clone()
        for tower, tensors in split_by_tower(lora_tensors).items():
            if tensors and strengths[tower] != 0.0:
                patched.add_patches(comfy_lora.load_lora(tensors, key_map), strengths[tower])
        return patched
    import copy

    with torch.inference_mode(False), torch.no_grad():
        merged = copy.deepcopy(joint)
        apply_lora(merged, lora_tensors, strengths["video"], strengths["audio"])
    return StandInPatcher(SyncAVModel(merged), patcher.load_device, patcher.offload_device)


def trainable_copy(patcher) -> nn.Module:
    """A trainable deep copy (runtime/trainable_copy.py) of the joint model inside ``patcher`` with the weights this
    MODEL samples with (inside ComfyUI it is loaded first, fully, so LoRA patches it carries are in the weights), on
    the load device. The MODEL itself is never changed."""
    if comfy_available() and not isinstance(patcher, StandInPatcher):
        _comfy("comfy.model_management").load_models_gpu([patcher], force_full_load=True)
    return trainable_deep_copy(patcher.model.diffusion_model, torch.device(patcher.load_device))
