"""Writing and reading audio-video files through PyAV (h264 + aac in mp4). No torchaudio, no torchvision."""

from __future__ import annotations

import numbers
import os
from fractions import Fraction

import numpy as np
import torch

from .atomic import atomic_path


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def write_mp4(path: str | os.PathLike, frames: torch.Tensor, fps: float, waveform: torch.Tensor | None = None,
              sample_rate: int | None = None, crf: int = 18) -> None:
    """frames [F, H, W, 3] in 0..1, waveform [C, T] in -1..1 -> an mp4 (h264 yuv420p + aac), written atomically.

    Odd frame sizes are padded by one pixel (yuv420p needs even sizes).
    """
    import av  # heavy import, only when writing

    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_mp4: frames must be [F, H, W, 3], got {list(frames.shape)}")
    if waveform is not None and (waveform.dim() != 2 or sample_rate is None):
        raise ValueError(f"write_mp4: waveform must be [C, T] with a sample_rate, got {list(waveform.shape)}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"write_mp4: frames must hold at least one frame of at least 1x1 pixels, got "
                         f"{list(frames.shape)}")
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < float("inf"):
        raise ValueError(f"write_mp4: fps must be a finite number > 0, got {fps!r}")
    if waveform is not None and (waveform.shape[0] < 1 or isinstance(sample_rate, bool)
                                 or not isinstance(sample_rate, numbers.Real) or not sample_rate >= 1
                                 or not float(sample_rate).is_integer()):
        raise ValueError(f"write_mp4: waveform [C, T] needs C >= 1 channels and an integer sample_rate >= 1 Hz, got "
                         f"{list(waveform.shape)} at {sample_rate!r}")
    pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    pad_h, pad_w = pixels.shape[1] % 2, pixels.shape[2] % 2
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        # format given: the temporary file's name ends in .tmp, so PyAV cannot pick the container from it.
        with av.open(tmp, mode="w", format="mp4") as container:
            video = container.add_stream("libx264", rate=_fps_fraction(fps))
            video.width, video.height = pixels.shape[2], pixels.shape[1]
            video.pix_fmt = "yuv420p"
            video.options = {"crf": str(crf)}
            audio = None
            if waveform is not None:
                channels = waveform.shape[0]
                audio = container.add_stream("aac", rate=int(sample_rate))
                audio.layout = "mono" if channels == 1 else "stereo"
            for image in pixels:
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
            if audio is not None:
                samples = waveform.detach().float().clamp(-1, 1).cpu().numpy()
                if samples.shape[0] > 2:
                    samples = samples[:2]
                chunk = 1024  # aac's frame size
                for start in range(0, samples.shape[1], chunk):
                    block = np.ascontiguousarray(samples[:, start:start + chunk])
                    frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=audio.layout.name)
                    frame.sample_rate = int(sample_rate)
                    frame.pts = start
                    for packet in audio.encode(frame):
                        container.mux(packet)
                for packet in audio.encode():
                    container.mux(packet)


def probe_mp4(path: str | os.PathLike) -> dict:
    """Streams of a media file: {"video": {...} | None, "audio": {...} | None} with codec, durations in seconds."""
    import av

    info = {"video": None, "audio": None}
    with av.open(str(path)) as container:
        for stream in container.streams:
            if stream.type not in ("video", "audio") or info[stream.type] is not None:
                continue
            seconds = float(stream.duration * stream.time_base) if stream.duration else None
            entry = {"codec": stream.codec_context.name, "seconds": seconds}
            if stream.type == "video":
                entry.update(width=stream.width, height=stream.height, fps=float(stream.average_rate or 0),
                             frames=stream.frames)
            else:
                entry.update(sample_rate=stream.rate, channels=stream.channels)
            info[stream.type] = entry
    return info


# ------------------------------------------------------------------------------------------------ decoding clips

class ClipSkipped(Exception):
    """One clip cannot be used (no audio track, too short, ...); the message is the reason, in words."""


# A center crop that would keep less of the frame than this is refused: the frame's shape is too far from the
# training frame's, and covering it would scale its long side far past the target (a 16x4096 strip covering 512x512
# would be 512x131072 px per frame).
MIN_KEPT_SHARE = 1 / 16
_MINUS_3DB = 0.5 ** 0.5


def cover_size(src_h: int, src_w: int, h: int, w: int) -> tuple[int, int]:
    """(height, width) that a ``src_h x src_w`` frame is scaled to so that it covers ``h x w`` keeping its aspect
    ratio. Each side has the target's parity, so the center crop to ``h x w`` starts on a whole pixel."""
    scale = max(h / src_h, w / src_w)
    new_h, new_w = max(h, round(src_h * scale)), max(w, round(src_w * scale))
    return new_h + (new_h - h) % 2, new_w + (new_w - w) % 2


def frame_rgb(frame, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded ``av.VideoFrame`` -> uint8 [h, w, 3] RGB. With ``size`` (height, width), libswscale scales the frame
    while converting it (area averaging when shrinking, bilinear when growing) until it covers ``size``, then the
    center is cut out: a 4K picture never exists in RGB. ``size`` None: the source size.
    Raises ``ClipSkipped`` for a frame whose crop would keep under ``MIN_KEPT_SHARE`` of it."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    h, w = size
    new_h, new_w = cover_size(frame.height, frame.width, h, w)
    if h * w < MIN_KEPT_SHARE * new_h * new_w:
        raise ClipSkipped(f"frame {frame.width}x{frame.height} px is too far from the training frame's shape "
                          f"{w}x{h} px (the center crop would keep under 1/{round(1 / MIN_KEPT_SHARE)} of it)")
    if (new_h, new_w) == (frame.height, frame.width):
        rgb = frame.to_ndarray(format="rgb24")          # no scaling: exactly the plain conversion
    else:
        shrink = new_h * new_w < frame.height * frame.width
        rgb = frame.to_ndarray(format="rgb24", width=new_w, height=new_h,
                               interpolation="AREA" if shrink else "BILINEAR")
    top, left = (new_h - h) // 2, (new_w - w) // 2
    return np.ascontiguousarray(rgb[top:top + h, left:left + w])


def downmix_matrix(channel_names: list[str] | tuple[str, ...], channels: int) -> np.ndarray:
    """Gains float32 [channels, len(channel_names)] that mix a layout's channels (FFmpeg's names: FL, FR, FC, LFE, BL,
    SL, ...; unnamed ones are "NONE") into ``channels`` = 1 (mono) or 2 (stereo).

    LFE is left out (as in FFmpeg's default downmix); front channels count fully, the others at -3 dB; centre and
    unnamed channels feed both stereo sides at -3 dB; a single channel goes to both sides unchanged. Each row is then
    scaled to sum to 1, so a mix of inputs within +-1 stays within +-1 (libswresample does not normalise a float
    downmix: its 5.1 -> mono mix of full-scale channels peaks near 3). Mono -> mono and stereo -> stereo are identities.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels: expected 1 (mono) or 2 (stereo), received {channels!r}")
    names = [str(name).upper() for name in channel_names]

    def side(name: str) -> int:          # -1 left, 0 centre, +1 right
        if name == "FLC" or name.endswith("L"):
            return -1
        if name == "FRC" or name.endswith("R"):
            return 1
        return 0

    def level(name: str) -> float:
        if name.startswith("LFE"):
            return 0.0
        return 1.0 if name in ("FL", "FR", "FC", "FLC", "FRC") else _MINUS_3DB

    if channels == 1:
        rows = [[level(n) for n in names]]
    elif len(names) == 1:
        rows = [[1.0], [1.0]]
    else:
        rows = [[level(n) * (1.0 if side(n) == s else _MINUS_3DB if side(n) == 0 else 0.0) for n in names]
                for s in (-1, 1)]
    matrix = np.asarray(rows, dtype=np.float64)
    for row in matrix:
        if row.sum() <= 0:               # e.g. an LFE-only track: an even mix rather than silence
            row[:] = 1.0
        row /= row.sum()
    return matrix.astype(np.float32)


def _frame_time(frame, index: int, rate) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / float(rate) if rate else float(index)


def decode_clip(path: str | os.PathLike, num_frames: int, fps: float, num_samples: int, sample_rate_hz: int,
                audio_channels: int = 1, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode the first ``num_frames`` frames on the ``fps`` grid and the ``num_samples`` audio samples they last.

    -> (frames uint8 [F, h, w, 3], waveform float32 [C, T] in -1..1 at ``sample_rate_hz``, C = ``audio_channels``).
    Frames are picked by presentation time (the nearest source frame to each grid time, so any and variable frame
    rates work); with ``size`` (height, width) each picked frame is reduced to it as it leaves the decoder
    (``frame_rgb``), otherwise it keeps the source size. Audio: libswresample changes the rate, ``downmix_matrix``
    the channels; it is aligned to the first frame by the streams' timestamps.
    Raises ``ClipSkipped`` with the reason for a clip that cannot be used (no audio / video stream or frames, too
    short, frame shape); any other exception means the file is unreadable. Stops demuxing once both streams have what
    they need, and never decodes a stream that is done.
    """
    import av  # heavy import, only when decoding

    if audio_channels not in (1, 2):
        raise ValueError(f"audio_channels: expected 1 (mono) or 2 (stereo), received {audio_channels!r}")
    needed_s = num_frames / fps
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ClipSkipped("no video track")
        if not container.streams.audio:
            raise ClipSkipped("no audio track")
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        rate = vstream.average_rate or vstream.guessed_rate

        picked: list = [None] * num_frames      # RGB pictures of the source frames nearest to each target time
        start = None                             # time of the first frame: the clip starts there
        previous = None                          # [frame, time, its RGB picture once picked] of the last frame
        target = 0
        video_index = 0
        video_done = False

        resampler = matrix = None                # made from the first audio frame's layout
        audio_chunks: list[np.ndarray] = []
        audio_start = None                       # time of the first audio sample
        audio_samples = 0
        audio_done = False

        def have_audio() -> bool:
            if audio_start is None or start is None:
                return False
            skip = max(0, round((start - audio_start) * sample_rate_hz))
            return audio_samples >= skip + num_samples

        def pick(entry) -> np.ndarray:
            if entry[2] is None:                 # converted once, and only when a target picks it
                entry[2] = frame_rgb(entry[0], size)
            return entry[2]

        def take_frame(frame, time_s):
            nonlocal previous, target, video_done
            current = [frame, time_s, None]
            while target < num_frames:
                want = start + target / fps
                if time_s < want:
                    break
                # the nearer of the previous and this frame (ties: the earlier one)
                if previous is not None and want - previous[1] <= time_s - want:
                    picked[target] = pick(previous)
                else:
                    picked[target] = pick(current)
                target += 1
            previous = current
            video_done = target >= num_frames

        def add_audio(frames) -> None:
            nonlocal audio_samples
            for out in frames:
                chunk = out.to_ndarray()
                chunk = chunk.reshape(matrix.shape[1], -1)
                audio_chunks.append(matrix @ chunk)
                audio_samples += chunk.shape[1]

        for packet in container.demux(vstream, astream):
            if video_done and audio_done:
                break
            if (video_done if packet.stream.type == "video" else audio_done):
                continue
            for frame in packet.decode():
                if packet.stream.type == "video":
                    if video_done:
                        continue
                    time_s = _frame_time(frame, video_index, rate)
                    video_index += 1
                    if start is None:
                        start = time_s
                    take_frame(frame, time_s)
                else:
                    if audio_done:
                        continue
                    if resampler is None:
                        audio_start = float(frame.time) if frame.time is not None else 0.0
                        # libswresample changes only the rate; the downmix is ours, with gains that keep full scale
                        resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=int(sample_rate_hz))
                        matrix = downmix_matrix([c.name for c in frame.layout.channels], audio_channels)
                    add_audio(resampler.resample(frame))
                    audio_done = have_audio()
        if resampler is not None and not audio_done:
            add_audio(resampler.resample(None))

        if start is None:
            raise ClipSkipped("no decodable video frame (the video track is empty or broken)")
        if audio_start is None:
            raise ClipSkipped("no decodable audio (the audio track is empty or broken)")
        # The last targets take the last frame when it lies within half a frame of them (the stream ended there).
        while target < num_frames and start + target / fps - previous[1] <= 0.5 / fps + 1e-9:
            picked[target] = pick(previous)
            target += 1
    if target < num_frames:
        have_s = (previous[1] - start) + 1.0 / float(rate or fps)      # the last frame lasts one source frame
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
    # lossy codecs overshoot a little around full-scale peaks; the contract is -1..1
    waveform = np.clip(waveform[:, :num_samples], -1.0, 1.0)
    return np.stack(picked), np.ascontiguousarray(waveform, dtype=np.float32)
