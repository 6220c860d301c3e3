"""BounceBench clips as files: one mp4 (h264 + aac), caption and ground-truth JSON per clip, for clip-folder
training and for other tools."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from ..files.atomic import write_text_atomic
from .clips import make_clip
from .config import STANDARD, BounceBenchConfig, split_seeds

__all__ = ["BounceClipFiles", "write_dataset"]


class BounceClipFiles(NamedTuple):
    """The three files written for one clip (same stem)."""

    video_path: Path            # .mp4, h264 + aac
    caption_path: Path          # .txt, the caption alone (no trailing newline)
    ground_truth_path: Path     # .json, BounceClip.ground_truth()


def write_dataset(out_dir: str | os.PathLike, split: str, count: int, config: BounceBenchConfig = STANDARD,
                  start: int = 0, progress: bool = True) -> list[BounceClipFiles]:
    """Write clips ``start .. start + count - 1`` of ``split`` to ``out_dir`` as ``{config}_{split}_{seed}.mp4``
    (h264 + aac), ``.txt`` (caption) and ``.json`` (ground truth), each written atomically; a tqdm bar shows
    progress. Returns the files in seed order."""
    from tqdm.auto import tqdm

    from ..files.media_io import write_mp4

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in tqdm(split_seeds(split, count, start), desc=f"BounceBench {config.name} {split}", unit="clip",
                     disable=not progress):
        clip = make_clip(seed, config)
        stem = out_dir / f"{config.name}_{split}_{seed:010d}"
        files = BounceClipFiles(stem.with_suffix(".mp4"), stem.with_suffix(".txt"), stem.with_suffix(".json"))
        write_mp4(files.video_path, clip.frames, clip.fps, clip.waveform, clip.sample_rate_hz)
        write_text_atomic(files.caption_path, clip.caption)
        write_text_atomic(files.ground_truth_path, json.dumps(clip.ground_truth(), indent=1))
        written.append(files)
    return written
