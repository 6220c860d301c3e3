"""A folder of real audio-video clips as training data: decoded with PyAV, encoded once, batched for the trainers.

``AVClipDataset(folder, seconds, fps, size_px, sample_rate_hz, ...)`` reads every video file of ``folder`` (``.mp4``,
also ``.m4v/.mov/.mkv/.webm``) that has a same-name ``.txt`` caption beside it:

* **video**: frames are picked on the target frame grid (``fps``) by their presentation time (nearest source frame,
  so any source frame rate works), then resized and center-cropped to ``size_px`` *on the device* with kornia
  (antialiased bilinear resize until the frame covers the target, then a center crop);
* **audio**: resampled by PyAV's ``AudioResampler`` (libswresample) to ``sample_rate_hz`` and ``audio_channels``,
  aligned to the first frame by the streams' timestamps (torchaudio is never imported);
* both cut to the training length: the first ``num_frames`` frames (``seconds * fps``, or what the codec takes) and
  exactly the audio those frames last.

Bad data never stops a run: a clip without an audio (or video) track, shorter than the training length, without a
caption, or unreadable is skipped with a warning that names it (``dataset.skipped`` lists them with the reasons); a
folder with nothing usable raises ``AVDatasetError`` naming the folder and every reason.

**Latent cache.** Given codecs and a text encoder (``from_pipeline``, or the ``video_codec`` / ``audio_codec`` /
``text_encoder`` arguments), each clip is encoded once -- video latent, audio latent, caption embedding -- and kept
in memory; with ``cache_dir`` also on disk, one safetensors file per clip keyed by the file's name, size and
modification time, the caption, the decoding settings and the codecs / text encoder (a changed file or setting is
a cache miss; a hit reads no video at all). ``dataset.batches(step, generator)`` is then a batch source for
``train.dpo_training.train_dpo(batches=...)`` and ``train.loop.train``: each epoch visits every clip once in an order
drawn from ``seed`` and the epoch number, so step ``k`` always gets the same clips (resuming is exact).

Everything is built outside ``torch.inference_mode`` (ComfyUI runs nodes inside it), so the cached tensors can be
used by training code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from ..model.safetensors_io import load_tensors, read_header, save_tensors_atomic
from .flow_loss import AVBatch

log = logging.getLogger(__name__)

__all__ = ["VIDEO_EXTENSIONS", "CACHE_FORMAT", "AVDatasetError", "ClipSkipped", "SkippedClip", "ClipFile",
           "DecodedClip", "decode_clip", "resize_crop", "AVClipDataset"]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
CACHE_FORMAT = "comfyui-syncav clip latents v1"
TEXT_BATCH = 16            # captions per text-encoder call


class AVDatasetError(ValueError):
    """A dataset folder that cannot be used at all (missing, empty, or every clip skipped); names the reasons."""


class ClipSkipped(Exception):
    """One clip cannot be used; the message is the reason, in words."""


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


class DecodedClip(NamedTuple):
    frames: torch.Tensor       # [F, size, size, 3] float32 in 0..1, on the decoding device
    waveform: torch.Tensor     # [C, T] float32 in -1..1, CPU


# ------------------------------------------------------------------------------------------------ decoding

def _frame_time(frame, index: int, rate) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / float(rate) if rate else float(index)


def decode_clip(path: str | os.PathLike, num_frames: int, fps: float, num_samples: int, sample_rate_hz: int,
                audio_channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Decode the first ``num_frames`` frames on the ``fps`` grid and the ``num_samples`` audio samples they last.

    -> (frames uint8 [F, H, W, 3] at the source size, waveform float32 [C, T] at ``sample_rate_hz``).
    Raises ``ClipSkipped`` with the reason for a clip that cannot be used (no audio / video stream, too short);
    any other exception means the file is unreadable. Stops demuxing once both streams have what they need.
    """
    import av  # heavy import, only when decoding

    layout = {1: "mono", 2: "stereo"}.get(audio_channels)
    if layout is None:
        raise ValueError(f"audio_channels: expected 1 (mono) or 2 (stereo), received {audio_channels!r}")
    needed_s = num_frames / fps
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ClipSkipped("no video track")
        if not container.streams.audio:
            raise ClipSkipped("no audio track")
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        rate = vstream.average_rate or vstream.guessed_rate
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=int(sample_rate_hz))

        picked: list = [None] * num_frames      # the source frame nearest to each target time
        start = None                             # time of the first frame: the clip starts there
        previous, previous_time = None, None
        target = 0
        video_index = 0
        video_done = False

        audio_chunks: list[np.ndarray] = []
        audio_start = None                       # time of the first audio sample
        audio_samples = 0
        audio_done = False

        def have_audio() -> bool:
            if audio_start is None or start is None:
                return False
            skip = max(0, round((start - audio_start) * sample_rate_hz))
            return audio_samples >= skip + num_samples

        def take_frame(frame, time_s):
            nonlocal previous, previous_time, target, video_done
            while target < num_frames:
                want = start + target / fps
                if time_s < want:
                    break
                # the nearer of the previous and this frame (ties: the earlier one)
                if previous is not None and want - previous_time <= time_s - want:
                    picked[target] = previous
                else:
                    picked[target] = frame
                target += 1
            previous, previous_time = frame, time_s
            video_done = target >= num_frames

        for packet in container.demux(vstream, astream):
            if video_done and audio_done:
                break
            for frame in packet.decode():
                if packet.stream.type == "video":
                    if video_done:
                        continue
                    time_s = _frame_time(frame, video_index, rate)
                    video_index += 1
                    if start is None:
                        start = time_s
                    # keep the decoded picture only as RGB, and only while a target may still pick it
                    take_frame(frame.to_ndarray(format="rgb24"), time_s)
                else:
                    if audio_done:
                        continue
                    if audio_start is None:
                        audio_start = float(frame.time) if frame.time is not None else 0.0
                    for out in resampler.resample(frame):
                        chunk = out.to_ndarray()
                        audio_chunks.append(chunk.reshape(audio_channels, -1))
                        audio_samples += audio_chunks[-1].shape[1]
                    audio_done = have_audio()
        if not audio_done:
            for out in resampler.resample(None):
                chunk = out.to_ndarray()
                audio_chunks.append(chunk.reshape(audio_channels, -1))
                audio_samples += audio_chunks[-1].shape[1]

    if start is None:
        raise ClipSkipped("no decodable video frame")
    if audio_start is None:
        raise ClipSkipped("no decodable audio")
    # The last targets take the last frame when it lies within half a frame of them (the stream ended there).
    while target < num_frames and previous is not None and start + target / fps - previous_time <= 0.5 / fps + 1e-9:
        picked[target] = previous
        target += 1
    if target < num_frames:
        have_s = (previous_time - start) + 1.0 / fps
        raise ClipSkipped(f"shorter than the training length: video {have_s:.3g} s < {needed_s:.3g} s")
    waveform = np.concatenate(audio_chunks, axis=1) if audio_chunks else np.zeros((audio_channels, 0), np.float32)
    skip = round((start - audio_start) * sample_rate_hz)
    if skip > 0:
        waveform = waveform[:, skip:]
    elif skip < 0:       # the audio starts after the first frame: silence until it does
        waveform = np.pad(waveform, ((0, 0), (-skip, 0)))
    # aac and friends may end a few samples early: up to half a frame of missing audio is padded with silence.
    tolerance = round(0.5 / fps * sample_rate_hz)
    if waveform.shape[1] < num_samples - tolerance:
        raise ClipSkipped(f"shorter than the training length: audio {waveform.shape[1] / sample_rate_hz:.3g} s < "
                          f"{needed_s:.3g} s")
    if waveform.shape[1] < num_samples:
        waveform = np.pad(waveform, ((0, 0), (0, num_samples - waveform.shape[1])))
    frames = np.stack(picked)
    return frames, np.ascontiguousarray(waveform[:, :num_samples], dtype=np.float32)


def resize_crop(frames: torch.Tensor, size: tuple[int, int], device: str | torch.device | None = None,
                chunk: int = 16) -> torch.Tensor:
    """uint8 or float frames [F, H, W, 3] -> float32 [F, h, w, 3] in 0..1 on ``device``: resized with kornia
    (bilinear, antialiased when shrinking) until the frame covers ``(h, w)``, keeping its aspect ratio, then
    center-cropped. The resized size has the target's parity, so the crop starts on a whole pixel."""
    import kornia.geometry.transform as kt  # lazy: only dataset building needs it

    h, w = size
    device = torch.device(device) if device is not None else frames.device
    _, src_h, src_w, _ = frames.shape
    scale = max(h / src_h, w / src_w)
    new_h, new_w = max(h, round(src_h * scale)), max(w, round(src_w * scale))
    new_h += (new_h - h) % 2
    new_w += (new_w - w) % 2
    out = []
    for begin in range(0, frames.shape[0], chunk):
        x = frames[begin:begin + chunk].to(device)
        x = x.float() / 255.0 if not x.is_floating_point() else x.float()
        x = x.permute(0, 3, 1, 2)                                     # [f, 3, H, W]
        if (new_h, new_w) != (src_h, src_w):
            x = kt.resize(x, (new_h, new_w), interpolation="bilinear", antialias=True)
        if (new_h, new_w) != (h, w):
            x = kt.center_crop(x, (h, w), mode="bilinear", align_corners=True)
        out.append(x.clamp(0, 1).permute(0, 2, 3, 1))
    return torch.cat(out).contiguous()


# ------------------------------------------------------------------------------------------------ dataset

def _size_pair(size_px) -> tuple[int, int]:
    if isinstance(size_px, (tuple, list)) and len(size_px) == 2:
        pair = tuple(size_px)
    else:
        pair = (size_px, size_px)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"size_px: expected a positive whole number of pixels or (height, width), "
                         f"received {size_px!r}")
    return pair


def _codec_frames(video_codec, wanted: int) -> int:
    """The frame count nearest ``wanted`` that ``video_codec`` takes (at least one latent frame)."""
    stride = video_codec.temporal_stride
    if video_codec.causal_first_frame:
        return video_codec.num_frames(max(1, round((wanted - 1) / stride) + 1))
    return video_codec.num_frames(max(1, round(wanted / stride)))


def _fingerprint_text_encoder(text_encoder) -> str:
    """A cheap identity of a text encoder's weights: the hash of one probe encoding (a changed encoder is a miss)."""
    with torch.no_grad():
        probe = text_encoder.encode(["syncav latent cache probe"]).embeddings
    data = probe.detach().float().cpu().contiguous().numpy().tobytes()
    return f"{type(text_encoder).__name__}:{hashlib.sha1(data).hexdigest()[:16]}"


def _codec_identity(codec) -> dict:
    keys = ("fps", "latent_channels", "temporal_stride", "spatial_stride", "sample_rate", "samples_per_latent",
            "audio_channels")
    return {"type": type(codec).__name__, **{k: getattr(codec, k) for k in keys if hasattr(codec, k)}}


class AVClipDataset:
    """Clips of a folder, decoded to the training length and (given codecs) encoded once. See the module docstring.

    folder: the folder of clips + ``.txt`` captions. seconds: training length (frames = ``seconds * fps``, rounded
    to what ``video_codec`` takes). size_px: frame size, an int (square) or ``(height, width)``.
    video_codec / audio_codec / text_encoder: all three to build the latent cache (``batches`` needs it).
    cache_dir: where cache files go (None: memory only). device: where frames are resized and encoded (latents are
    then kept on the CPU). batch_size: the default rows of ``batches``. caption_dropout: share of rows trained with
    the empty caption (drawn from the step's generator). progress: a tqdm bar (True), nothing (False), or a
    callable ``progress(index, total)`` called after each clip.
    """

    def __init__(self, folder: str | os.PathLike, seconds: float, fps: float, size_px, sample_rate_hz: int, *,
                 audio_channels: int = 1, video_codec=None, audio_codec=None, text_encoder=None,
                 num_frames: int | None = None, cache_dir: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, batch_size: int = 8, caption_dropout: float = 0.0,
                 seed: int = 0, progress: bool | Callable[[int, int], None] = True):
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds: expected a positive training length in seconds, received {seconds!r}")
        if not (isinstance(fps, (int, float)) and fps > 0):
            raise ValueError(f"fps: expected a positive frame rate, received {fps!r}")
        if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int) or sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz: expected a positive whole number of Hz, received {sample_rate_hz!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a whole number >= 1, received {batch_size!r}")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout: expected a share in [0, 1), received {caption_dropout!r}")
        codecs = (video_codec, audio_codec, text_encoder)
        if any(c is not None for c in codecs) and not all(c is not None for c in codecs):
            raise ValueError("AVClipDataset: give video_codec, audio_codec and text_encoder together (to build the "
                             "latent cache) or none of them")
        self.folder = Path(folder)
        self.size = _size_pair(size_px)
        self.fps, self.sample_rate_hz, self.audio_channels = float(fps), int(sample_rate_hz), int(audio_channels)
        self.video_codec, self.audio_codec, self.text_encoder = codecs
        if video_codec is not None:
            if abs(float(video_codec.fps) - self.fps) > 1e-6:
                raise ValueError(f"fps: the video codec runs at {video_codec.fps:g} fps, received {fps!r}")
            if int(audio_codec.sample_rate) != self.sample_rate_hz:
                raise ValueError(f"sample_rate_hz: the audio codec runs at {audio_codec.sample_rate} Hz, received "
                                 f"{sample_rate_hz!r}")
            self.audio_channels = int(getattr(audio_codec, "audio_channels", audio_channels))
        wanted = num_frames if num_frames is not None else max(1, round(seconds * self.fps))
        if video_codec is not None:
            wanted = _codec_frames(video_codec, wanted)
        self.num_frames = int(wanted)
        self.num_samples = round(self.num_frames / self.fps * self.sample_rate_hz)
        self.seconds = self.num_frames / self.fps
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size, self.caption_dropout, self.seed = batch_size, float(caption_dropout), int(seed)
        self.cache_hits = 0
        self.cache_misses = 0
        self.skipped: list[SkippedClip] = []
        self.clips: list[ClipFile] = []
        self._latents: dict[str, torch.Tensor] | None = None
        self._text_identity: str | None = None
        self._empty_text: tuple[torch.Tensor, int] | None = None
        self._epochs: dict[int, list[int]] = {}

        candidates = self._scan()
        with torch.inference_mode(False), torch.no_grad():
            if self.video_codec is None:
                self._check_media(candidates, progress)
            else:
                self._build_cache(candidates, progress)
        if not self.clips:
            reasons = "; ".join(f"{s.name}: {s.reason}" for s in self.skipped)
            raise AVDatasetError(f"folder: no usable clip in {str(self.folder)!r} (training length {self.seconds:g} s)"
                                 f": {len(self.skipped)} file(s) skipped: {reasons}")

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_pipeline(cls, folder, pipeline, seconds: float, size_px, text_encoder=None, **kwargs) -> "AVClipDataset":
        """A dataset at ``pipeline``'s rates and clip length (``pipeline.latent_shapes`` decides the frames, so the
        latents are what the model samples), encoded with its codecs and ``text_encoder`` (default: its own)."""
        height, width = _size_pair(size_px)
        video_shape, _ = pipeline.latent_shapes(float(seconds), height, width)
        num_frames = pipeline.video_codec.num_frames(video_shape[2])
        return cls(folder, seconds, float(pipeline.video_codec.fps), (height, width),
                   int(pipeline.audio_codec.sample_rate), video_codec=pipeline.video_codec,
                   audio_codec=pipeline.audio_codec, text_encoder=text_encoder or pipeline.text_encoder,
                   num_frames=num_frames, **kwargs)

    def _skip(self, name: str, reason: str) -> None:
        self.skipped.append(SkippedClip(name, reason))
        log.warning("SyncAV dataset: skipping %s: %s", name, reason)

    def _scan(self) -> list[ClipFile]:
        if not self.folder.is_dir():
            raise AVDatasetError(f"folder: {str(self.folder)!r} is not a folder (expected a folder of video clips "
                                 f"with same-name .txt captions)")
        found = []
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            caption_path = path.with_suffix(".txt")
            if not caption_path.is_file():
                self._skip(path.name, f"no caption file {caption_path.name}")
                continue
            try:
                caption = caption_path.read_text(encoding="utf-8").strip()
                stat = path.stat()
            except (OSError, UnicodeDecodeError) as error:
                self._skip(path.name, f"unreadable caption or file ({type(error).__name__}: {error})")
                continue
            found.append(ClipFile(path, caption, stat.st_size, stat.st_mtime_ns))
        if not found and not self.skipped:
            raise AVDatasetError(f"folder: no video files in {str(self.folder)!r} (expected "
                                 f"{', '.join(VIDEO_EXTENSIONS)} clips with same-name .txt captions)")
        return found

    def _progress(self, progress, total: int):
        """-> (step(index), close())."""
        if callable(progress):
            return (lambda i: progress(i, total)), (lambda: None)
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="SyncAV dataset", unit="clip", leave=False)
            return (lambda i: bar.update(1)), bar.close
        return (lambda i: None), (lambda: None)

    def _decode(self, clip: ClipFile) -> DecodedClip:
        frames, waveform = decode_clip(clip.path, self.num_frames, self.fps, self.num_samples, self.sample_rate_hz,
                                       self.audio_channels)
        frames = resize_crop(torch.from_numpy(frames), self.size, self.device)
        return DecodedClip(frames, torch.from_numpy(waveform))

    def _try_decode(self, clip: ClipFile) -> DecodedClip | None:
        try:
            return self._decode(clip)
        except ClipSkipped as reason:
            self._skip(clip.name, str(reason))
        except Exception as error:  # noqa: BLE001 - any decoder failure means this one file is unusable
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self._skip(clip.name, f"unreadable ({type(error).__name__}{': ' + detail if detail else ''})")
        return None

    def _check_media(self, candidates: list[ClipFile], progress) -> None:
        step, close = self._progress(progress, len(candidates))
        try:
            for i, clip in enumerate(candidates):
                if self._try_decode(clip) is not None:
                    self.clips.append(clip)
                step(i)
        finally:
            close()

    # ---- latent cache -------------------------------------------------------------------------------------

    def _settings_key(self) -> dict:
        return {"format": CACHE_FORMAT, "num_frames": self.num_frames, "fps": self.fps, "size": list(self.size),
                "sample_rate_hz": self.sample_rate_hz, "num_samples": self.num_samples,
                "audio_channels": self.audio_channels, "video_codec": _codec_identity(self.video_codec),
                "audio_codec": _codec_identity(self.audio_codec), "text_encoder": self._text_identity}

    def _cache_key(self, clip: ClipFile) -> str:
        key = {"file": clip.name, "size": clip.size, "mtime_ns": clip.mtime_ns, "caption": clip.caption,
               **self._settings_key()}
        return json.dumps(key, sort_keys=True)

    def _cache_path(self, clip: ClipFile, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.cache_dir / f"{clip.name}.{digest}.safetensors"

    def _read_cache(self, clip: ClipFile, key: str) -> dict[str, torch.Tensor] | None:
        if self.cache_dir is None:
            return None
        path = self._cache_path(clip, key)
        if not path.is_file():
            return None
        try:
            _, metadata = read_header(path)
            if metadata.get("key") != key:
                return None
            tensors = load_tensors(path)
            if set(tensors) != {"video", "audio", "text", "text_length"}:
                return None
            return tensors
        except Exception as error:  # noqa: BLE001 - a broken cache file is only a miss
            log.warning("SyncAV dataset: ignoring unreadable cache file %s (%s)", path.name, error)
            return None

    def _write_cache(self, clip: ClipFile, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.cache_dir is None:
            return
        try:
            save_tensors_atomic(tensors, self._cache_path(clip, key), {"key": key, "clip": clip.name})
        except OSError as error:
            log.warning("SyncAV dataset: could not write the latent cache for %s to %s (%s); keeping it in memory "
                        "only", clip.name, self.cache_dir, error)

    def _encode_text(self, captions: list[str]) -> list[tuple[torch.Tensor, int]]:
        rows = []
        for begin in range(0, len(captions), TEXT_BATCH):
            encoded = self.text_encoder.encode(captions[begin:begin + TEXT_BATCH])
            for embedding, length in zip(encoded.embeddings, encoded.lengths):
                rows.append((embedding.float().cpu().clone(), int(length)))
        return rows

    def _build_cache(self, candidates: list[ClipFile], progress) -> None:
        self._text_identity = _fingerprint_text_encoder(self.text_encoder)
        step, close = self._progress(progress, len(candidates))
        entries: list[tuple[ClipFile, dict[str, torch.Tensor] | None, str]] = []
        media: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        try:
            for i, clip in enumerate(candidates):
                key = self._cache_key(clip)
                cached = self._read_cache(clip, key)
                if cached is not None:
                    self.cache_hits += 1
                    entries.append((clip, cached, key))
                else:
                    decoded = self._try_decode(clip)
                    if decoded is not None:
                        self.cache_misses += 1
                        video = self.video_codec.encode(decoded.frames[None])[0].float().cpu()
                        audio = self.audio_codec.encode(decoded.waveform[None].to(self.device))[0].float().cpu()
                        media[len(entries)] = (video, audio)
                        entries.append((clip, None, key))
                step(i)
        finally:
            close()
        # Captions of the clips that missed, in batches.
        missing = [index for index, (_, cached, _) in enumerate(entries) if cached is None]
        texts = self._encode_text([entries[index][0].caption for index in missing])
        for index, (text, length) in zip(missing, texts):
            clip, _, key = entries[index]
            video, audio = media.pop(index)
            tensors = {"video": video, "audio": audio, "text": text,
                       "text_length": torch.tensor(length, dtype=torch.int64)}
            self._write_cache(clip, key, tensors)
            entries[index] = (clip, tensors, key)
        if not entries:
            return
        self.clips = [clip for clip, _, _ in entries]
        rows = max(t["text"].shape[0] for _, t, _ in entries)

        def padded(text: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(text, (0, 0, 0, rows - text.shape[0]))

        self._latents = {
            "video": torch.stack([t["video"] for _, t, _ in entries]),
            "audio": torch.stack([t["audio"] for _, t, _ in entries]),
            "text": torch.stack([padded(t["text"]) for _, t, _ in entries]),
            "text_length": torch.stack([t["text_length"].reshape(()) for _, t, _ in entries]),
        }
        empty, length = self._encode_text([""])[0]
        self._empty_text = (padded(empty), length)

    # ---- access -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.clips)

    def __repr__(self) -> str:
        h, w = self.size
        return (f"AVClipDataset({len(self)} clips from {self.folder.name!r}, {self.seconds:g} s, {h}x{w} px, "
                f"{self.fps:g} fps, {self.sample_rate_hz} Hz, {len(self.skipped)} skipped"
                f"{', encoded' if self.encoded else ''})")

    @property
    def encoded(self) -> bool:
        return self._latents is not None

    def summary(self) -> str:
        """One paragraph for a user: what was loaded, what was skipped and why."""
        h, w = self.size
        text = (f"{len(self)} clip(s) from {self.folder.name or str(self.folder)!r}: {self.num_frames} frames "
                f"({self.seconds:g} s at {self.fps:g} fps), {h}x{w} px, audio {self.sample_rate_hz} Hz")
        if self.encoded:
            text += f"; latents: {self.cache_hits} from the cache, {self.cache_misses} encoded"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + "; ".join(f"{s.name}: {s.reason}" for s in self.skipped)
        return text

    def media(self, index: int) -> DecodedClip:
        """Decode clip ``index`` again: frames [F, h, w, 3] in 0..1 (on ``device``), waveform [C, T]."""
        with torch.inference_mode(False), torch.no_grad():
            return self._decode(self.clips[index])

    def latents(self, indices: Sequence[int]) -> AVBatch:
        """The cached latents of these clips as an AVBatch (CPU): video [B, Cv, Fv, Hv, Wv], audio [B, La, Ca],
        caption embeddings for both towers with their lengths."""
        if self._latents is None:
            raise ValueError("AVClipDataset: no latent cache: build the dataset with video_codec, audio_codec and "
                             "text_encoder (or AVClipDataset.from_pipeline)")
        index = torch.as_tensor(list(indices), dtype=torch.long)
        text = self._latents["text"].index_select(0, index)
        lengths = self._latents["text_length"].index_select(0, index)
        return AVBatch(video=self._latents["video"].index_select(0, index),
                       audio=self._latents["audio"].index_select(0, index),
                       text_video=text, text_audio=text, text_video_lengths=lengths, text_audio_lengths=lengths)

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch not in self._epochs:
            if len(self._epochs) > 4:
                self._epochs.clear()
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epochs[epoch] = torch.randperm(len(self), generator=generator).tolist()
        return self._epochs[epoch]

    def indices(self, step: int, batch_size: int | None = None) -> list[int]:
        """The clips of step ``step``: rows ``step * B .. step * B + B - 1`` of a stream that visits every clip once
        per epoch, in an order drawn from ``seed`` and the epoch."""
        batch_size = self.batch_size if batch_size is None else batch_size
        positions = range(step * batch_size, (step + 1) * batch_size)
        return [self._epoch_order(p // len(self))[p % len(self)] for p in positions]

    def batches(self, step: int, generator: torch.Generator | None = None, batch_size: int | None = None) -> AVBatch:
        """Batch source for the trainers: step -> AVBatch of ``batch_size`` (default: the dataset's) clips' clean
        latents. ``caption_dropout`` rows (drawn from ``generator``) get the empty caption."""
        batch = self.latents(self.indices(step, batch_size))
        if self.caption_dropout > 0:
            rows = batch.video.shape[0]
            drop = torch.rand(rows, generator=generator) < self.caption_dropout
            if bool(drop.any()):
                empty, length = self._empty_text
                text = torch.where(drop[:, None, None], empty[None], batch.text_video)
                lengths = torch.where(drop, torch.tensor(length), batch.text_video_lengths)
                batch = batch._replace(text_video=text, text_audio=text, text_video_lengths=lengths,
                                       text_audio_lengths=lengths)
        return batch

    def batch_source(self, batch_size: int) -> Callable[[int, torch.Generator], AVBatch]:
        """``batches`` with a fixed batch size: what ``train_dpo(batches=...)`` takes."""
        return partial(self.batches, batch_size=batch_size)
