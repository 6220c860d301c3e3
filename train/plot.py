"""Loss curves as pictures without a plotting library: a small line rasteriser and a PNG writer.

Training runs render their curves to an RGB array (a ComfyUI IMAGE is the same array as floats) and to PNG
files for docs/. Log-scale y, light grid, one colour per series, no text (the series are named by the caller).
"""

from __future__ import annotations

import math
import os
import struct
import zlib

import numpy as np

from ..files.atomic import atomic_path

SERIES_COLOURS_RGB = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
                      (140, 86, 75)]


def _draw_line(canvas: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour) -> None:
    steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, steps + 1).round().astype(int)
    ys = np.linspace(y0, y1, steps + 1).round().astype(int)
    h, w, _ = canvas.shape
    keep = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    for dy in (0, 1):  # two pixels thick
        canvas[np.clip(ys[keep] + dy, 0, h - 1), xs[keep]] = colour


def render_curves(series: dict[str, list[tuple[float, float]]], width_px: int = 640, height_px: int = 360,
                  log_y: bool = True) -> np.ndarray:
    """series: name -> [(x, y), ...] -> uint8 image [height_px, width_px, 3] (white background, grid, lines).

    Colours follow the order of ``series`` (SERIES_COLOURS_RGB). Non-positive values are dropped on a log scale.
    """
    canvas = np.full((height_px, width_px, 3), 255, dtype=np.uint8)
    margin = 12
    points = {name: [(x, y) for x, y in pts if math.isfinite(y) and (y > 0 or not log_y)]
              for name, pts in series.items()}
    all_pts = [p for pts in points.values() for p in pts]
    if not all_pts:
        return canvas
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    xs = [x for x, _ in all_pts]
    ys = [fy(y) for _, y in all_pts]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_lo, y_hi = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    if log_y:
        y_lo, y_hi = math.floor(y_lo), math.ceil(y_hi)
        for decade in range(int(y_lo), int(y_hi) + 1):  # grid line per decade
            row = height_px - margin - (decade - y_lo) / (y_hi - y_lo) * (height_px - 2 * margin)
            canvas[int(round(row)), margin:width_px - margin] = (225, 225, 225)
    for quarter in range(5):
        col = margin + quarter / 4 * (width_px - 2 * margin)
        canvas[margin:height_px - margin, int(round(col))] = (235, 235, 235)
    for index, pts in enumerate(points.values()):
        colour = SERIES_COLOURS_RGB[index % len(SERIES_COLOURS_RGB)]
        pix = [(margin + (x - x_lo) / (x_hi - x_lo) * (width_px - 2 * margin),
                height_px - margin - (fy(y) - y_lo) / (y_hi - y_lo) * (height_px - 2 * margin)) for x, y in pts]
        for (xa, ya), (xb, yb) in zip(pix, pix[1:]):
            _draw_line(canvas, xa, ya, xb, yb, colour)
    return canvas


def write_png(path: str | os.PathLike, image_rgb: np.ndarray) -> None:
    """uint8 [H, W, 3] -> an 8-bit RGB PNG file (zlib-compressed scanlines, no filtering)."""
    image_rgb = np.ascontiguousarray(image_rgb, dtype=np.uint8)
    h, w, _ = image_rgb.shape
    raw = b"".join(b"\x00" + image_rgb[row].tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(png)
