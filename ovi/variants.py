"""Ovi's published models: which files each needs, where they go, their clip geometry, and how to tell them apart.

Files and folders (ComfyUI's ``models/`` layout; the first name of each list is the one error messages ask for,
the others are names the same weights are published under):

=================  ==================  ==============================================================
role               folder              file names
=================  ==================  ==============================================================
joint model        diffusion_models    per variant: Ovi's own ``model.safetensors`` (720x720 5s),
                                       ``model_960x960.safetensors``, ``model_960x960_10s.safetensors``,
                                       ``model_fp8_e4m3fn.safetensors`` (720x720 5s in fp8)
video VAE          vae                 ``wan2.2_vae.safetensors`` (Wan2.2 VAE, 48 channels)
audio VAE          vae (or mmaudio)    ``mmaudio_vae_16k_fp32.safetensors`` (MMAudio 16 kHz VAE)
vocoder            vae (or mmaudio)    ``mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors`` (BigVGAN 16 kHz)
text encoder       text_encoders       ``umt5_xxl_fp16.safetensors`` (UMT5-XXL encoder; inside ComfyUI its
                                       CLIP loader reads it) and, for loading it outside ComfyUI through
                                       transformers, its ``config.json`` and tokenizer in
                                       ``text_encoders/umt5-xxl/``
=================  ==================  ==============================================================

The audio VAE and vocoder go in ``models/vae`` beside the Wan VAE, where other ComfyUI Ovi integrations keep them
too; a ``models/mmaudio`` folder (used by ComfyUI's MMAudio nodes) is searched as well. Files may sit in
subfolders of these folders (``diffusion_models/Ovi/model.safetensors``).

Telling variants apart: every Ovi checkpoint has the same keys and shapes (the 720 and 960 models differ only in
their weights), so the shapes say "Ovi" but not which one. An fp8 file (float8_e4m3fn matrices) is the 720x720
5s conversion; otherwise the file name decides (``960`` / ``10s`` in it), and a name that says nothing is taken
for the 720x720 5s model, the original release.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from ..files.model_folders import FileFinder, FolderDescriber
from .prompt import STYLE_AUDCAP, STYLE_AUDIO_PREFIX
from .sizes import OVI_FPS, latent_lengths


@dataclass(frozen=True)
class ModelFile:
    """One file a pipeline needs: what it is, the ComfyUI model folders searched (in order), accepted names."""

    role: str
    folders: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.names[0]

    def where(self) -> str:
        return " or ".join(f"models/{folder}" for folder in self.folders)


VIDEO_VAE = ModelFile("video VAE (Wan2.2)", ("vae",),
                      ("wan2.2_vae.safetensors", "Wan2_2_VAE_bf16.safetensors", "Wan2.2_VAE.safetensors"))
AUDIO_VAE = ModelFile("audio VAE (MMAudio 16 kHz)", ("vae", "mmaudio"),
                      ("mmaudio_vae_16k_fp32.safetensors", "mmaudio_vae_16k_bf16.safetensors",
                       "mmaudio_vae_16k.safetensors", "v1-16.safetensors"))
VOCODER = ModelFile("vocoder (BigVGAN 16 kHz)", ("vae", "mmaudio"),
                    ("mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors",
                     "mmaudio_vocoder_bigvgan_best_netG_bf16.safetensors", "bigvgan_16k.safetensors",
                     "best_netG.safetensors"))
TEXT_ENCODER = ModelFile("text encoder (UMT5-XXL)", ("text_encoders",),
                         ("umt5_xxl_fp16.safetensors", "umt5-xxl-enc-bf16.safetensors", "umt5_xxl_bf16.safetensors",
                          "umt5_xxl_fp8_e4m3fn_scaled.safetensors"))   # fp8: ComfyUI's CLIP loader only
# config.json and tokenizer files of google/umt5-xxl, for the transformers encoder (ComfyUI's CLIP loader needs none).
TEXT_ENCODER_CONFIG_FOLDERS = ("umt5-xxl", "google/umt5-xxl", "umt5_xxl")
# The text guidance the CLI generates Ovi clips with when none is given (Ovi's own video scale).
OVI_TEXT_SCALE = 4.0


@dataclass(frozen=True)
class OviVariant:
    """One published Ovi model and the clip it was trained to make."""

    key: str                 # Ovi's model name (plus _fp8)
    label: str               # the Loader's preset name
    preset: str              # JointConfig preset (model/config.py)
    model_file: ModelFile
    height_px: int           # Ovi's default frame size
    width_px: int
    seconds: float
    prompt_style: str        # how the sound description is marked (ovi/prompt.py)
    fp8: bool = False
    fps: float = OVI_FPS

    @property
    def area_px(self) -> int:
        """The pixel area the model was trained at; requested sizes are rescaled to it (ovi/sizes.py)."""
        return self.height_px * self.width_px

    @property
    def frames(self) -> int:
        return latent_lengths(self.seconds, self.fps)[0]

    @property
    def video_latent_frames(self) -> int:
        return latent_lengths(self.seconds, self.fps)[1]

    @property
    def audio_latents(self) -> int:
        return latent_lengths(self.seconds, self.fps)[2]

    @property
    def files(self) -> tuple[ModelFile, ...]:
        """Every file the pipeline needs except the text encoder (loaded at its first encode, if at all)."""
        return (self.model_file, VIDEO_VAE, AUDIO_VAE, VOCODER)


def _joint(*names: str) -> ModelFile:
    return ModelFile("joint model", ("diffusion_models",), names)


VARIANTS: dict[str, OviVariant] = {v.key: v for v in (
    OviVariant("720x720_5s", "Ovi 720x720 5s", "ovi-720-5s", _joint("model.safetensors", "ovi_720x720_5s.safetensors"),
               720, 720, 5.0, STYLE_AUDCAP),
    OviVariant("960x960_5s", "Ovi 960x960 5s", "ovi-960-5s",
               _joint("model_960x960.safetensors", "ovi_960x960_5s.safetensors"), 960, 960, 5.0, STYLE_AUDIO_PREFIX),
    OviVariant("960x960_10s", "Ovi 960x960 10s", "ovi-960-10s",
               _joint("model_960x960_10s.safetensors", "ovi_960x960_10s.safetensors"), 960, 960, 10.0,
               STYLE_AUDIO_PREFIX),
    OviVariant("720x720_5s_fp8", "Ovi 720x720 5s fp8", "ovi-720-5s",
               _joint("model_fp8_e4m3fn.safetensors", "ovi_720x720_5s_fp8_e4m3fn.safetensors"), 720, 720, 5.0,
               STYLE_AUDCAP, fp8=True),
)}
VARIANTS_BY_LABEL: dict[str, OviVariant] = {v.label: v for v in VARIANTS.values()}
PRESET_LABELS: tuple[str, ...] = tuple(VARIANTS_BY_LABEL)


def get_variant(name: str) -> OviVariant:
    """A variant by key (``720x720_5s``) or preset label (``Ovi 720x720 5s``)."""
    variant = VARIANTS.get(name) or VARIANTS_BY_LABEL.get(name)
    if variant is None:
        raise ValueError(f"unknown Ovi variant {name!r}; known: {', '.join(VARIANTS)} "
                         f"(or {', '.join(repr(label) for label in VARIANTS_BY_LABEL)})")
    return variant


# ------------------------------------------------------------------------------------------------ recognition

_FP8_DTYPES = {"F8_E4M3", "F8_E5M2"}
_OVI_CODEC_WIDTHS = {  # key -> (axis, width): what Ovi's codecs and text encoder fix, whatever the model's size
    "video_model.patch_embedding.weight": (1, 48),      # Wan2.2 VAE latent channels
    "audio_model.patch_embedding.0.weight": (1, 20),    # MMAudio 16 kHz latent channels
    "video_model.text_embedding.0.weight": (1, 4096),   # UMT5-XXL width
}


def uses_ovi_codecs(header: Mapping[str, Mapping]) -> bool:
    """Whether a joint checkpoint's header (``{key: {"dtype", "shape"}}``) has the latent and text widths of Ovi's
    codecs and text encoder (48-channel video, 20-channel audio, 4096-wide text): such a model takes Ovi's codecs,
    whatever its size."""
    for key, (axis, width) in _OVI_CODEC_WIDTHS.items():
        entry = header.get(key)
        if entry is None or len(entry["shape"]) <= axis or entry["shape"][axis] != width:
            return False
    return True


def is_fp8_checkpoint(header: Mapping[str, Mapping]) -> bool:
    return any(entry["dtype"] in _FP8_DTYPES for entry in header.values())


def variant_from_name(file_name: str) -> Optional[OviVariant]:
    """The variant a file name points to (published names and names with 720/960/10s in them), None if it says
    nothing."""
    base = os.path.basename(file_name).lower()
    for variant in VARIANTS.values():
        if base in (n.lower() for n in variant.model_file.names):
            return variant
    if "960" in base:
        return VARIANTS["960x960_10s"] if re.search(r"10\s*s", base) else VARIANTS["960x960_5s"]
    if "720" in base:
        return VARIANTS["720x720_5s_fp8"] if "fp8" in base else VARIANTS["720x720_5s"]
    return None


def recognise_variant(file_name: str, header: Mapping[str, Mapping]) -> tuple[OviVariant, str]:
    """(variant, how it was decided) for an Ovi-codec checkpoint. Shapes cannot separate the variants (see the
    module docstring): the file name decides, then the dtype (fp8 -> the 720x720 5s conversion), else 720x720 5s."""
    by_name = variant_from_name(file_name)
    fp8 = is_fp8_checkpoint(header)
    if by_name is not None:
        if fp8 and by_name.key == "720x720_5s":
            return VARIANTS["720x720_5s_fp8"], "file name and fp8 weights"
        return by_name, "file name"
    if fp8:
        return VARIANTS["720x720_5s_fp8"], "fp8 weights (the published fp8 file is the 720x720 5s model)"
    return VARIANTS["720x720_5s"], "default: the file name names no variant, taken for the 720x720 5s model"


# ------------------------------------------------------------------------------------------------ files

def missing_file_error(spec: ModelFile, label: str, describe: FolderDescriber | None = None) -> FileNotFoundError:
    others = f" (also accepted: {', '.join(spec.names[1:])})" if len(spec.names) > 1 else ""
    searched = f"; searched {', '.join(describe(spec.folders))}" if describe is not None else ""
    return FileNotFoundError(f"{label}: {spec.role} file {spec.name!r} not found in {spec.where()}{others}"
                             f"{searched}. Put the .safetensors file there.")


def find_file(spec: ModelFile, finder: FileFinder, label: str, describe: FolderDescriber | None = None) -> str:
    """Full path of ``spec``'s file, or a FileNotFoundError naming the file and the folder."""
    path = finder(spec.folders, spec.names)
    if path is None:
        raise missing_file_error(spec, label, describe)
    return path


@dataclass(frozen=True)
class OviFiles:
    model: str
    video_vae: str
    audio_vae: str
    vocoder: str


def find_variant_files(variant: OviVariant, finder: FileFinder, model_path: str | None = None,
                       describe: FolderDescriber | None = None) -> OviFiles:
    """The files of ``variant`` (``model_path`` given: that joint model instead of the variant's own file).
    Raises FileNotFoundError for the first file missing, naming it and its folder."""
    model = model_path or find_file(variant.model_file, finder, variant.label, describe)
    return OviFiles(model=model, video_vae=find_file(VIDEO_VAE, finder, variant.label, describe),
                    audio_vae=find_file(AUDIO_VAE, finder, variant.label, describe),
                    vocoder=find_file(VOCODER, finder, variant.label, describe))


def find_text_encoder_files(finder: FileFinder, describe: FolderDescriber | None = None) -> tuple[str, str]:
    """(UMT5 weights file, folder with its config.json and tokenizer) for the transformers encoder."""
    weights = find_file(TEXT_ENCODER, finder, "Ovi text encoder", describe)
    beside = os.path.dirname(weights)
    for candidate in [os.path.join(beside, c) for c in TEXT_ENCODER_CONFIG_FOLDERS] + [beside]:
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return weights, candidate
    raise FileNotFoundError(
        f"Ovi text encoder: no config.json and tokenizer for {os.path.basename(weights)!r}: expected a folder "
        f"{TEXT_ENCODER_CONFIG_FOLDERS[0]!r} beside it in models/text_encoders holding google/umt5-xxl's config.json "
        "and tokenizer files (inside ComfyUI the weights file alone is enough: ComfyUI's CLIP loader reads it).")
