"""A folder of real audio-video clips as training data: decoded with PyAV, encoded once, batched for the trainers.

``AVClipDataset(folder, seconds, fps, size_px, sample_rate_hz, ...)`` reads every video file of ``folder`` (``.mp4``,
also ``.m4v/.mov/.mkv/.webm``) that has a same-name ``.txt`` caption beside it:

* **video**: frames are picked on the target frame grid (``fps``) by their presentation time (nearest source frame,
  so any source frame rate, variable ones too, works), and reduced to ``size_px`` as they leave the decoder
  (libswscale scales each picked frame until it covers the target while converting it to RGB, then the center is
  cut out: memory follows the training size, not the source's; ``model.media_io.frame_rgb``);
* **audio**: resampled by PyAV's ``AudioResampler`` (libswresample) to ``sample_rate_hz``, mixed to
  ``audio_channels`` with gains that cannot exceed full scale (``model.media_io.downmix_matrix``: 5.1, stereo or
  mono sources), aligned to the first frame by the streams' timestamps (torchaudio is never imported);
* both cut to the training length: the first ``num_frames`` frames (``seconds * fps``, or what the codec takes) and
  exactly the audio those frames last.

Bad data never stops a run: a clip without an audio (or video) track or frames, shorter than the training length,
without a caption (or with an empty, non-UTF-8, oversized or unreadable one), with a frame shape too far from the
training one, or unreadable is skipped with a warning that names it, and so is a caption without a video
(``dataset.skipped`` lists them with the reasons, ``summary()`` too); a missing folder, a file given as the folder,
and a folder with nothing usable raise ``AVDatasetError`` naming the folder and every reason. Settings (seconds,
fps, size, rates, channels) are checked before any file is read.

**Latent cache.** Given codecs and a text encoder (``from_pipeline``, or the ``video_codec`` / ``audio_codec`` /
``text_encoder`` arguments), each clip is encoded once -- video latent, audio latent, caption embedding -- and kept
in memory; with ``cache_dir`` also on disk, one safetensors file per clip keyed by the file's name, size and
modification time, the caption, the decoding settings and the codecs / text encoder (a changed file or setting is
a cache miss; a hit reads no video at all). ``dataset.batches(step, generator)`` is then a batch source for
``train.dpo_training.train_dpo(batches=...)`` and ``train.loop.train``: each epoch visits every clip once in an order
drawn from ``seed`` and the epoch number, so step ``k`` always gets the same clips (resuming is exact).

Everything is built outside ``torch.inference_mode`` (ComfyUI runs nodes inside it), so the cached tensors can be
used by training code. Which files are clips (and why others are skipped) is ``train.clip_folder``; the cache files
and their keys are ``train.latent_cache``; their public names are importable from here as well.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch

from ..files.media_io import ClipSkipped, cover_size, decode_clip
from .clip_folder import AVDatasetError, ClipFile, SkippedClip, error_detail, scan_clip_folder
from ..model.batch import AVBatch
from .latent_cache import CACHE_FORMAT, LatentCacheFiles, codec_identity, encode_captions, text_encoder_fingerprint

log = logging.getLogger(__name__)

__all__ = ["DecodedClip", "resize_crop", "AVClipDataset"]


class DecodedClip(NamedTuple):
    frames: torch.Tensor       # [F, size, size, 3] float32 in 0..1, on the decoding device
    waveform: torch.Tensor     # [C, T] float32 in -1..1, CPU


# ------------------------------------------------------------------------------------------------ decoding

def resize_crop(frames: torch.Tensor, size: tuple[int, int], device: str | torch.device | None = None,
                chunk: int = 16) -> torch.Tensor:
    """uint8 or float frames [F, H, W, 3] -> float32 [F, h, w, 3] in 0..1 on ``device``: resized with kornia
    (bilinear, antialiased when shrinking) until the frame covers ``(h, w)``, keeping its aspect ratio, then
    center-cropped. The resized size has the target's parity, so the crop starts on a whole pixel."""
    import kornia.geometry.transform as kt  # lazy: only dataset building needs it

    h, w = size
    device = torch.device(device) if device is not None else frames.device
    _, src_h, src_w, _ = frames.shape
    new_h, new_w = cover_size(src_h, src_w, h, w)
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


def _check_positive(name: str, value, expected: str) -> None:
    """A finite number > 0 (nan, inf, bools and text are refused before any file is read)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{name}: expected {expected}, received {value!r}")


def _codec_frames(video_codec, wanted: int) -> int:
    """The frame count nearest ``wanted`` that ``video_codec`` takes (at least one latent frame)."""
    stride = video_codec.temporal_stride
    if video_codec.causal_first_frame:
        return video_codec.num_frames(max(1, round((wanted - 1) / stride) + 1))
    return video_codec.num_frames(max(1, round(wanted / stride)))


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
        _check_positive("seconds", seconds, "a positive training length in seconds")
        _check_positive("fps", fps, "a positive frame rate")
        if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int) or sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz: expected a positive whole number of Hz, received {sample_rate_hz!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a whole number >= 1, received {batch_size!r}")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout: expected a share in [0, 1), received {caption_dropout!r}")
        if audio_channels not in (1, 2) or isinstance(audio_channels, bool):
            raise ValueError(f"audio_channels: expected 1 (mono) or 2 (stereo), received {audio_channels!r}")
        if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int)
                                       or num_frames < 1):
            raise ValueError(f"num_frames: expected a whole number of frames >= 1, received {num_frames!r}")
        codecs = (video_codec, audio_codec, text_encoder)
        if any(c is not None for c in codecs) and not all(c is not None for c in codecs):
            raise ValueError("AVClipDataset: give video_codec, audio_codec and text_encoder together (to build the "
                             "latent cache) or none of them")
        self.folder = Path(folder)
        self.size = _size_pair(size_px)
        self.fps, self.sample_rate_hz, self.audio_channels = float(fps), int(sample_rate_hz), int(audio_channels)
        self.video_codec, self.audio_codec, self.text_encoder = codecs
        if video_codec is not None:
            stride = int(getattr(video_codec, "spatial_stride", 1))
            if any(side % stride for side in self.size):
                raise ValueError(f"size_px: the video codec takes frames whose sides are multiples of {stride} px, "
                                 f"received {size_px!r}")
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

        candidates, skipped = scan_clip_folder(self.folder)
        for entry in skipped:
            self._skip(entry.name, entry.reason)
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
        _check_positive("seconds", seconds, "a positive training length in seconds")
        height, width = _size_pair(size_px)
        multiple = pipeline.pixel_multiple
        if height % multiple or width % multiple:
            raise ValueError(f"size_px: expected sides that are multiples of {multiple} px for this model, received "
                             f"{size_px!r}")
        video_shape, _ = pipeline.latent_shapes(float(seconds), height, width)
        num_frames = pipeline.video_codec.num_frames(video_shape[2])
        return cls(folder, seconds, float(pipeline.video_codec.fps), (height, width),
                   int(pipeline.audio_codec.sample_rate), video_codec=pipeline.video_codec,
                   audio_codec=pipeline.audio_codec, text_encoder=text_encoder or pipeline.text_encoder,
                   num_frames=num_frames, **kwargs)

    def _skip(self, name: str, reason: str) -> None:
        self.skipped.append(SkippedClip(name, reason))
        log.warning("SyncAV dataset: skipping %s: %s", name, reason)

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
        # frames come out of the decoder already at self.size: resize_crop only moves and converts them
        frames, waveform = decode_clip(clip.path, self.num_frames, self.fps, self.num_samples, self.sample_rate_hz,
                                       self.audio_channels, size=self.size)
        frames = resize_crop(torch.from_numpy(frames), self.size, self.device)
        return DecodedClip(frames, torch.from_numpy(waveform))

    def _try_decode(self, clip: ClipFile) -> DecodedClip | None:
        try:
            return self._decode(clip)
        except ClipSkipped as reason:
            self._skip(clip.name, str(reason))
        except Exception as error:  # noqa: BLE001 - any decoder failure means this one file is unusable
            self._skip(clip.name, f"unreadable ({error_detail(error)})")
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
                "audio_channels": self.audio_channels, "video_codec": codec_identity(self.video_codec),
                "audio_codec": codec_identity(self.audio_codec), "text_encoder": self._text_identity}

    def _build_cache(self, candidates: list[ClipFile], progress) -> None:
        self._text_identity = text_encoder_fingerprint(self.text_encoder)
        cache = LatentCacheFiles(self.cache_dir, self._settings_key())
        step, close = self._progress(progress, len(candidates))
        entries: list[tuple[ClipFile, dict[str, torch.Tensor] | None, str]] = []
        media: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        try:
            for i, clip in enumerate(candidates):
                key = cache.key(clip)
                cached = cache.read(clip, key)
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
        texts = encode_captions(self.text_encoder, [entries[index][0].caption for index in missing])
        for index, (text, length) in zip(missing, texts):
            clip, _, key = entries[index]
            video, audio = media.pop(index)
            tensors = {"video": video, "audio": audio, "text": text,
                       "text_length": torch.tensor(length, dtype=torch.int64)}
            cache.write(clip, key, tensors)
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
        empty, length = encode_captions(self.text_encoder, [""])[0]
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
