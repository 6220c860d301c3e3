"""SyncAV AV Dataset: a folder of clips + captions, decoded and encoded once, for the DPO trainer (data/av_dataset)."""

from __future__ import annotations

import hashlib
import os

from comfy_api.latest import io

from ..data.av_dataset import AVClipDataset
from ..data.clip_folder import VIDEO_EXTENSIONS
from ..generation.pipeline import EMBEDDED_CLIP, EMBEDDED_PIXEL_MULTIPLE
from . import comfy_bridge, comfy_types

CACHE_SUBFOLDER = ".syncav_cache"


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


class SyncAVDataset(io.ComfyNode):
    """A folder of video clips with sound and same-name .txt captions, ready for the SyncAV DPO Trainer."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        m = EMBEDDED_PIXEL_MULTIPLE
        return io.Schema(
            node_id="SyncAVDataset", display_name="SyncAV AV Dataset", category=comfy_types.CATEGORY,
            description="Loads a folder of clips with sound and same-name .txt captions: decodes them (PyAV), "
                        "resizes and center-crops the frames, resamples the audio to the codecs' rate, cuts them to "
                        "the training length and encodes them once. Clips without audio, too short, unreadable, or "
                        "with a missing, empty or non-UTF-8 caption are skipped with a warning; the report names "
                        "each with its reason.",
            inputs=[
                io.String.Input("folder", default="", multiline=False,
                                tooltip="Folder of clips (" + ", ".join(VIDEO_EXTENSIONS) + ", each with video and "
                                        "audio) and same-name .txt captions. Absolute, or relative to ComfyUI's "
                                        "input folder."),
                comfy_types.CODECS.Input("codecs", tooltip="The codecs from SyncAV Loader: clips are encoded once "
                                                            "with them (and resampled to their frame and sample "
                                                            "rates)."),
                comfy_types.TEXT_ENCODER.Input("text_encoder", tooltip="The text encoder from SyncAV Loader: "
                                                                        "captions are encoded once with it."),
                io.Float.Input("seconds", default=EMBEDDED_CLIP.seconds, min=0.1, max=60.0, step=0.1,
                               tooltip="Training length: the first seconds of every clip are used (frames rounded "
                                       "to what the codec takes); shorter clips are skipped."),
                io.Int.Input("size", default=EMBEDDED_CLIP.width_px, min=m, max=4096, step=m,
                             tooltip=f"Frame size in pixels (square): frames are resized to cover it and "
                                     f"center-cropped. A multiple of {m} for the embedded default."),
                io.Boolean.Input("cache", default=True,
                                 tooltip=f"Also keep the encoded latents on disk ({CACHE_SUBFOLDER} inside the folder, "
                                         "one file per clip keyed by its size and modification time), so the next "
                                         "run reads no video."),
            ],
            outputs=[
                comfy_types.output(comfy_types.DATASET, "dataset", "The encoded clips, for the SyncAV DPO Trainer "
                                                                     "(and the negative builder's preview)."),
                comfy_types.output(io.String, "report", "What was loaded, and every skipped file with its reason."),
            ])

    @classmethod
    def fingerprint_inputs(cls, folder="", **kwargs):
        """Re-run when the folder's files change (names, sizes, modification times), not only the inputs."""
        try:
            path = resolve_folder(folder)
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)
                             if e.is_file() and not e.name.startswith("."))
        except (OSError, ValueError):
            return "unreadable"
        return hashlib.sha1(repr(entries).encode()).hexdigest()

    @classmethod
    def execute(cls, folder: str, codecs, text_encoder, seconds: float, size: int, cache: bool = True
                ) -> io.NodeOutput:
        path = resolve_folder(folder)
        progress = _LazyProgress()
        try:
            dataset = AVClipDataset.from_pipeline(
                path, codecs.pipeline, float(seconds), int(size), text_encoder=text_encoder,
                cache_dir=os.path.join(path, CACHE_SUBFOLDER) if cache else None,
                device=comfy_bridge.load_device(), progress=progress)
        finally:
            progress.close()
        return io.NodeOutput(dataset, dataset.summary())
