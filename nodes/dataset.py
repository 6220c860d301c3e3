"""SyncAV AV Dataset: a folder of clips + captions, decoded and encoded once, for the DPO trainer (train/av_dataset)."""

from __future__ import annotations

import hashlib
import os

from ..text.interface import TextEncoder
from ..data.av_dataset import VIDEO_EXTENSIONS, AVClipDataset
from . import comfy_bridge
from .latent import check_codecs
from .loader import EMBEDDED_PIXEL_MULTIPLE

CACHE_SUBFOLDER = ".syncav_cache"


def check_text_encoder(text_encoder) -> TextEncoder:
    if not isinstance(text_encoder, TextEncoder):
        raise ValueError(f"text_encoder: expected the text encoder output of SyncAV Loader, received "
                         f"{type(text_encoder).__name__}")
    return text_encoder


def resolve_folder(folder) -> str:
    """A dataset folder as typed: absolute, or relative to ComfyUI's input folder (the current folder outside)."""
    if not isinstance(folder, str) or not folder.strip():
        raise ValueError(f"folder: expected the path of a folder of clips (absolute, or relative to ComfyUI's "
                         f"input folder), received {folder!r}")
    path = os.path.expanduser(folder.strip())
    if not os.path.isabs(path):
        path = os.path.join(comfy_bridge.input_directory(), path)
    return os.path.normpath(path)


class _LazyProgress:
    """progress(index, total) for AVClipDataset -> a StepProgress made once the total is known."""

    def __init__(self):
        self.bar = None

    def __call__(self, index: int, total: int) -> None:
        if self.bar is None:
            self.bar = comfy_bridge.StepProgress(total, "SyncAV dataset")
        self.bar(index, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SyncAVDataset:
    """A folder of video clips with sound and same-name .txt captions, ready for the SyncAV DPO Trainer."""

    @classmethod
    def INPUT_TYPES(cls):
        m = EMBEDDED_PIXEL_MULTIPLE
        return {"required": {
            "folder": ("STRING", {"default": "", "multiline": False,
                                  "tooltip": "Folder of clips (" + ", ".join(VIDEO_EXTENSIONS) + ", each with "
                                             "video and audio) and same-name .txt captions. Absolute, or "
                                             "relative to ComfyUI's input folder."}),
            "codecs": ("SYNCAV_CODECS", {"tooltip": "The codecs from SyncAV Loader: clips are encoded once with "
                                                    "them (and resampled to their frame and sample rates)."}),
            "text_encoder": ("SYNCAV_TEXT_ENCODER", {"tooltip": "The text encoder from SyncAV Loader: captions "
                                                                "are encoded once with it."}),
            "seconds": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 60.0, "step": 0.1,
                                  "tooltip": "Training length: the first seconds of every clip are used (frames "
                                             "rounded to what the codec takes); shorter clips are skipped."}),
            "size": ("INT", {"default": 32, "min": m, "max": 4096, "step": m,
                             "tooltip": f"Frame size in pixels (square): frames are resized to cover it and "
                                        f"center-cropped. A multiple of {m} for the embedded default."}),
            "cache": ("BOOLEAN", {"default": True,
                                  "tooltip": f"Also keep the encoded latents on disk ({CACHE_SUBFOLDER} inside the "
                                             "folder, one file per clip keyed by its size and modification "
                                             "time), so the next run reads no video."}),
        }}

    RETURN_TYPES = ("SYNCAV_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "report")
    OUTPUT_TOOLTIPS = ("The encoded clips, for the SyncAV DPO Trainer (and the negative builder's preview).",
                       "What was loaded, and every skipped file with its reason.")
    FUNCTION = "load"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Loads a folder of clips with sound and same-name .txt captions: decodes them (PyAV), resizes and "
                   "center-crops the frames, resamples the audio to the codecs' rate, cuts them to the training "
                   "length and encodes them once. Clips without audio, too short, unreadable, or with a missing, "
                   "empty or non-UTF-8 caption are skipped with a warning; the report names each with its reason.")

    @classmethod
    def IS_CHANGED(cls, folder="", **kwargs):
        """Re-run when the folder's files change (names, sizes, modification times), not only the inputs."""
        try:
            path = resolve_folder(folder)
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)
                             if e.is_file() and not e.name.startswith("."))
        except (OSError, ValueError):
            return "unreadable"
        return hashlib.sha1(repr(entries).encode()).hexdigest()

    def load(self, folder: str, codecs, text_encoder, seconds: float, size: int, cache: bool = True):
        codecs = check_codecs(codecs)
        text_encoder = check_text_encoder(text_encoder)
        path = resolve_folder(folder)
        if not os.path.isdir(path):
            raise ValueError(f"folder: {folder!r} is not a folder (looked for {path!r}); expected a folder of clips "
                             f"with same-name .txt captions")
        if not seconds > 0:
            raise ValueError(f"seconds: expected a positive training length, received {seconds!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % codecs.pixel_multiple:
            raise ValueError(f"size: expected a positive multiple of {codecs.pixel_multiple} px for this model, "
                             f"received {size!r}")
        progress = _LazyProgress()
        try:
            dataset = AVClipDataset.from_pipeline(
                path, codecs.pipeline, float(seconds), int(size), text_encoder=text_encoder,
                cache_dir=os.path.join(path, CACHE_SUBFOLDER) if cache else None,
                device=comfy_bridge.load_device(), progress=progress)
        finally:
            progress.close()
        return (dataset, dataset.summary())
