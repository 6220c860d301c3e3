"""Writing and reading audio-video files through PyAV (h264 + aac in mp4). No torchaudio, no torchvision."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import torch

from .atomic_files import atomic_path


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
    pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    pad_h, pad_w = pixels.shape[1] % 2, pixels.shape[2] % 2
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
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
