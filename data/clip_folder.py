"""Which files of a clip folder are training clips: every video file (``VIDEO_EXTENSIONS``) with a same-name ``.txt``
caption beside it, in name order. A caption without a video, a video without a usable caption (missing, empty,
not UTF-8, binary, larger than ``MAX_CAPTION_BYTES``, unreadable) and an entry that is not a readable file are
skipped with the reason; a folder that is missing, a file, unlistable or without any video file raises
``AVDatasetError``. Nothing here decodes media (``train.av_dataset`` does)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..files.media_io import ClipSkipped

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
MAX_CAPTION_BYTES = 64 * 1024   # a caption, not a document: a bigger .txt is a mistake (and would bloat cache keys)


class AVDatasetError(ValueError):
    """A dataset folder that cannot be used at all (missing, empty, or every clip skipped); names the reasons."""


class SkippedClip(NamedTuple):
    name: str                  # the file name, e.g. "clip_003.mp4"
    reason: str                # e.g. "no audio track"


@dataclass(frozen=True)
class ClipFile:
    path: Path
    caption: str
    size: int                  # bytes
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.name


def error_detail(error: BaseException) -> str:
    """"Kind: what went wrong" in one line, without the file's path (the skip names the file already)."""
    detail = getattr(error, "strerror", None) or str(error)
    detail = detail.strip().splitlines()[0] if detail.strip() else ""
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def scan_clip_folder(folder: Path) -> tuple[list[ClipFile], list[SkippedClip]]:
    """-> (the training clips of ``folder`` with their captions, in name order; the entries skipped, with why).
    Raises ``AVDatasetError`` for a folder that cannot be used at all (missing, a file, unlistable, no video file)."""
    expected = f"a folder of video clips ({', '.join(VIDEO_EXTENSIONS)}) with same-name .txt captions"
    if not folder.exists():
        raise AVDatasetError(f"folder: {str(folder)!r} does not exist (expected {expected})")
    if not folder.is_dir():
        raise AVDatasetError(f"folder: {str(folder)!r} is a file, not a folder (expected {expected})")
    try:
        entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    except OSError as error:
        raise AVDatasetError(f"folder: cannot list {str(folder)!r} ({error_detail(error)}); expected "
                             f"{expected}") from None
    video_stems = {path.stem for path in entries if path.suffix.lower() in VIDEO_EXTENSIONS}
    found, skipped = [], []
    for path in entries:
        if path.suffix == ".txt" and path.stem not in video_stems:
            skipped.append(SkippedClip(path.name, f"a caption without a video (no {path.stem} with a video extension, "
                                                  f"{'/'.join(VIDEO_EXTENSIONS)}, beside it)"))
            continue
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            continue
        if not path.is_file():
            skipped.append(SkippedClip(path.name, "not a readable file (a folder, or a link to nothing)"))
            continue
        try:
            caption = read_caption(path)
        except ClipSkipped as reason:
            skipped.append(SkippedClip(path.name, str(reason)))
            continue
        try:
            stat = path.stat()
        except OSError as error:
            skipped.append(SkippedClip(path.name, f"unreadable ({error_detail(error)})"))
            continue
        found.append(ClipFile(path, caption, stat.st_size, stat.st_mtime_ns))
    if not found and not skipped:
        raise AVDatasetError(f"folder: no video files in {str(folder)!r} (expected {expected})")
    return found, skipped


def read_caption(video: Path) -> str:
    """The caption of clip ``video`` (its same-name ``.txt``: UTF-8, a byte-order mark allowed, stripped). Raises
    ``ClipSkipped`` naming why there is none to use."""
    path = video.with_suffix(".txt")
    try:
        if not path.is_file():
            raise ClipSkipped(f"no caption file {path.name}")
        size = path.stat().st_size
        if size > MAX_CAPTION_BYTES:
            raise ClipSkipped(f"caption file {path.name} holds {size} bytes, expected a caption of at most "
                              f"{MAX_CAPTION_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as error:
        raise ClipSkipped(f"cannot read the caption file {path.name} ({error_detail(error)})") from None
    try:
        caption = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise ClipSkipped(f"caption file {path.name} is not UTF-8 text (byte 0x{raw[error.start]:02x} at "
                          f"position {error.start}); save it as UTF-8") from None
    if "\x00" in caption:
        raise ClipSkipped(f"caption file {path.name} holds binary data (NUL bytes), expected text")
    if not caption:
        raise ClipSkipped(f"caption file {path.name} is empty, expected the clip's description")
    return caption
