"""Loss curves as pictures without a plotting library: a small line rasteriser, a bitmap font and a PNG writer.

Training runs render their curves to an RGB array (a ComfyUI IMAGE is the same array as floats) and to PNG
files for docs/. Log-scale y, light grid, one colour per series. A plot of at least LABELLED_MIN_PX (width, height)
also gets its text: an optional title, the axis labels, tick values and a legend of the series' names; a smaller
one (a thumbnail) stays bare.
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
TEXT_RGB = (50, 50, 50)
FRAME_RGB = (190, 190, 190)
LABELLED_MIN_PX = (320, 150)     # below this (width, height) a plot has no text: it would cover the curves
TEXT_SCALE = 2                   # font pixels per bitmap pixel: 10x14 px capitals, readable when shown at half size
BARE_MARGIN_PX = 12

# A 5x7 bitmap font with two rows for descenders: bands of glyphs, each a line naming the characters (one every 6
# columns) and 9 rows of their pixels ("#" ink). Characters it lacks are drawn as "?".
_FONT_BANDS = """
A     B     C     D     E     F     G     H     I     J     K     L     M     N     O     P
.###. ####. .###. ###.. ##### ##### .###. #...# .###. ..### #...# #.... #...# #...# .###. ####.
#...# #...# #...# #..#. #.... #.... #...# #...# ..#.. ...#. #..#. #.... ##.## #...# #...# #...#
#...# #...# #.... #...# #.... #.... #.... #...# ..#.. ...#. #.#.. #.... #.#.# ##..# #...# #...#
##### ####. #.... #...# ####. ####. #.### ##### ..#.. ...#. ##... #.... #.#.# #.#.# #...# ####.
#...# #...# #.... #...# #.... #.... #...# #...# ..#.. ...#. #.#.. #.... #...# #..## #...# #....
#...# #...# #...# #..#. #.... #.... #...# #...# ..#.. #..#. #..#. #.... #...# #...# #...# #....
#...# ####. .###. ###.. ##### #.... .#### #...# .###. .##.. #...# ##### #...# #...# .###. #....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
Q     R     S     T     U     V     W     X     Y     Z     0     1     2     3     4     5
.###. ####. .#### ##### #...# #...# #...# #...# #...# ##### .###. ..#.. .###. ##### ...#. #####
#...# #...# #.... ..#.. #...# #...# #...# #...# #...# ....# #...# .##.. #...# ...#. ..##. #....
#...# #...# #.... ..#.. #...# #...# #...# .#.#. .#.#. ...#. #..## ..#.. ....# ..#.. .#.#. ####.
#...# ####. .###. ..#.. #...# #...# #.#.# ..#.. ..#.. ..#.. #.#.# ..#.. ...#. ...#. #..#. ....#
#.#.# #.#.. ....# ..#.. #...# #...# #.#.# .#.#. ..#.. .#... ##..# ..#.. ..#.. ....# ##### ....#
#..#. #..#. ....# ..#.. #...# .#.#. #.#.# #...# ..#.. #.... #...# ..#.. .#... #...# ...#. #...#
.##.# #...# ####. ..#.. .###. ..#.. .#.#. #...# ..#.. ##### .###. .###. ##### .###. ...#. .###.
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
6     7     8     9     a     b     c     d     e     f     g     h     i     j     k     l
..##. ##### .###. .###. ..... #.... ..... ....# ..... ..##. ..... #.... ..#.. ...#. #.... .##..
.#... ....# #...# #...# ..... #.... ..... ....# ..... .#..# ..... #.... ..... ..... #.... ..#..
#.... ...#. #...# #...# .###. #.##. .###. .##.# .###. .#... .#### #.##. .##.. ..##. #..#. ..#..
####. ..#.. .###. .#### ....# ##..# #.... #..## #...# ###.. #...# ##..# ..#.. ...#. #.#.. ..#..
#...# .#... #...# ....# .#### #...# #.... #...# ##### .#... #...# #...# ..#.. ...#. ##... ..#..
#...# .#... #...# ...#. #...# #...# #...# #...# #.... .#... #...# #...# ..#.. ...#. #.#.. ..#..
.###. .#... .###. .##.. .#### ####. .###. .#### .###. .#... .#### #...# .###. ...#. #..#. .###.
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ....# ..... ..... #..#. ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .###. ..... ..... .##.. ..... .....
m     n     o     p     q     r     s     t     u     v     w     x     y     z           .
..... ..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... ..... ..... .....
##.#. #.##. .###. ####. .#### #.##. .#### ###.. #...# #...# #...# #...# #...# ##### ..... .....
#.#.# ##..# #...# #...# #...# ##..# #.... .#... #...# #...# #...# .#.#. #...# ...#. ..... .....
#.#.# #...# #...# #...# #...# #.... .###. .#... #...# #...# #.#.# ..#.. #...# ..#.. ..... .....
#...# #...# #...# #...# #...# #.... ....# .#..# #..## .#.#. #.#.# .#.#. #...# .#... ..... .##..
#...# #...# .###. ####. .#### #.... ####. ..##. .##.# ..#.. .#.#. #...# .#### ##### ..... .##..
..... ..... ..... #.... ....# ..... ..... ..... ..... ..... ..... ..... ....# ..... ..... .....
..... ..... ..... #.... ....# ..... ..... ..... ..... ..... ..... ..... .###. ..... ..... .....
,     -     _     :     (     )     /     %     +     =     '     !     ?     <     >
..... ..... ..... ..... ...#. .#... ....# ##... ..... ..... ..#.. ..#.. .###. ...#. .#...
..... ..... ..... .##.. ..#.. ..#.. ....# ##..# ..#.. ..... ..#.. ..#.. #...# ..#.. ..#..
..... ..... ..... .##.. .#... ...#. ...#. ...#. ..#.. ##### .#... ..#.. ....# .#... ...#.
..... .###. ..... ..... .#... ...#. ..#.. ..#.. ##### ..... ..... ..#.. ...#. #.... ....#
..... ..... ..... .##.. .#... ...#. .#... .#... ..#.. ##### ..... ..#.. ..#.. .#... ...#.
.##.. ..... ..... .##.. ..#.. ..#.. #.... #..## ..#.. ..... ..... ..... ..... ..#.. ..#..
.##.. ..... ..... ..... ...#. .#... #.... ...## ..... ..... ..... ..#.. ..#.. ...#. .#...
..#.. ..... ##### ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
.#... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
"""
GLYPH_W, GLYPH_H, GLYPH_ADVANCE = 5, 9, 6


def _parse_font(bands: str) -> dict[str, np.ndarray]:
    lines = bands.strip("\n").split("\n")
    glyphs = {}
    for start in range(0, len(lines), 1 + GLYPH_H):
        names, rows = lines[start], lines[start + 1:start + 1 + GLYPH_H]
        for index in range(0, len(rows[0]) + 1, GLYPH_ADVANCE):
            char = names[index] if index < len(names) else " "
            glyphs[char] = np.array([[c == "#" for c in row[index:index + GLYPH_W]] for row in rows], dtype=bool)
    return glyphs


GLYPHS = _parse_font(_FONT_BANDS)


def text_mask(text: str, scale: int = TEXT_SCALE) -> np.ndarray:
    """bool [9 * scale, 6 * scale * len(text) - scale]: the text's ink, one glyph every 6 font pixels."""
    if not text:
        return np.zeros((GLYPH_H * scale, 0), dtype=bool)
    mask = np.zeros((GLYPH_H, GLYPH_ADVANCE * len(text) - 1), dtype=bool)
    for index, char in enumerate(text):
        mask[:, index * GLYPH_ADVANCE:index * GLYPH_ADVANCE + GLYPH_W] = GLYPHS.get(char, GLYPHS["?"])
    return mask.repeat(scale, axis=0).repeat(scale, axis=1)


def draw_mask(canvas: np.ndarray, mask: np.ndarray, left: int, top: int, colour=TEXT_RGB) -> None:
    """Paint ``mask``'s ink onto ``canvas`` [H, W, 3] with its top-left corner at (left, top), clipped."""
    h, w, _ = canvas.shape
    top_clip, left_clip = max(0, -top), max(0, -left)
    rows, cols = min(mask.shape[0], h - top), min(mask.shape[1], w - left)
    if rows <= top_clip or cols <= left_clip:
        return
    region = canvas[top + top_clip:top + rows, left + left_clip:left + cols]
    region[mask[top_clip:rows, left_clip:cols]] = colour


def _draw_line(canvas: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour) -> None:
    steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, steps + 1).round().astype(int)
    ys = np.linspace(y0, y1, steps + 1).round().astype(int)
    h, w, _ = canvas.shape
    keep = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    for dy in (0, 1):  # two pixels thick
        canvas[np.clip(ys[keep] + dy, 0, h - 1), xs[keep]] = colour


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[tuple[float, str]]:
    """(value, label) at the multiples of 1, 2 or 5 x 10^k inside [lo, hi], the finest step giving at most
    ``most`` ticks (steps 0, 10, 20, 30, 40 rather than quarters of 1..40)."""
    span = hi - lo
    for exponent in range(math.floor(math.log10(span)) - 1, math.floor(math.log10(span)) + 2):
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0 ** exponent
            first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
            if last - first + 1 <= most:
                return [(k * step, f"{k * step:.6g}") for k in range(first, last + 1)]
    return [(lo, f"{lo:.3g}"), (hi, f"{hi:.3g}")]


def _y_ticks(y_lo: float, y_hi: float, log_y: bool) -> list[tuple[float, str]]:
    """(value on the plotted axis, label): every decade of a log axis (every other past 6), nice_ticks otherwise."""
    if log_y:
        decades = range(int(y_lo), int(y_hi) + 1)
        step = 1 if len(decades) <= 6 else 2
        return [(d, f"1e{d}") for d in decades if (d - int(y_lo)) % step == 0]
    return nice_ticks(y_lo, y_hi)


def _legend(canvas: np.ndarray, names: list[tuple[str, tuple]], box: tuple[int, int, int, int]) -> None:
    """(name, colour) of each series as a stroke of the colour beside the name, in a framed white box in the plot's
    emptiest corner (top or bottom right, whichever holds fewer curve pixels); kept inside the plot box."""
    left, top, right, bottom = box
    line_h, swatch_w, pad = GLYPH_H * TEXT_SCALE + 2, 8 * TEXT_SCALE, 3 * TEXT_SCALE
    width = min(swatch_w + pad + max(text_mask(name).shape[1] for name, _ in names) + 2 * pad, right - left - 2)
    height = min(len(names) * line_h + 2 * pad, bottom - top - 2)
    x = right - width - 1 if width + 8 > right - left else right - width - 4
    corners = [top + 1, bottom - height - 1] if height + 8 > bottom - top else [top + 4, bottom - height - 4]
    ink = [np.count_nonzero(canvas[y:y + height, x:x + width].min(axis=-1) < 200) for y in corners]
    y = corners[int(np.argmin(ink))]
    canvas[y:y + height, x:x + width] = 255
    canvas[[y, y + height - 1], x:x + width] = FRAME_RGB
    canvas[y:y + height, [x, x + width - 1]] = FRAME_RGB
    for row, (name, colour) in enumerate(names):
        line_top = y + pad + row * line_h
        if line_top + line_h > y + height:          # no room for more entries
            break
        middle = line_top + 4 * TEXT_SCALE
        canvas[middle - 1:middle + 2, x + pad:x + pad + swatch_w] = colour
        mask = text_mask(name)[:, :max(0, x + width - pad - (x + 2 * pad + swatch_w))]   # cut at the frame
        draw_mask(canvas, mask, x + 2 * pad + swatch_w, line_top)


def render_curves(series: dict[str, list[tuple[float, float]]], width_px: int = 640, height_px: int = 360,
                  log_y: bool = True, *, title: str | None = None, x_label: str = "step",
                  y_label: str | None = None) -> np.ndarray:
    """series: name -> [(x, y), ...] -> uint8 image [height_px, width_px, 3] (white background, grid, lines).

    Colours follow the order of ``series`` (SERIES_COLOURS_RGB). Non-positive values are dropped on a log scale.
    A plot of at least LABELLED_MIN_PX gets ``title`` above it, ``x_label`` and ``y_label`` (default: "loss (log
    scale)" on a log axis, none on a linear one) along the axes, tick values, and a legend of the series with at
    least two points (a one-point series draws nothing: callers use them to widen the axis).
    """
    canvas = np.full((height_px, width_px, 3), 255, dtype=np.uint8)
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
    labelled = width_px >= LABELLED_MIN_PX[0] and height_px >= LABELLED_MIN_PX[1]
    y_label = ("loss (log scale)" if log_y else None) if y_label is None else y_label
    y_ticks = _y_ticks(y_lo, y_hi, log_y)
    text_h = GLYPH_H * TEXT_SCALE
    if labelled:
        tick_w = max(text_mask(label).shape[1] for _, label in y_ticks)
        left = 6 + (text_h + 4 if y_label else 0) + tick_w + 6
        top = 8 + text_h + 6 if title else BARE_MARGIN_PX
        box = (left, top, width_px - BARE_MARGIN_PX, height_px - (6 + 2 * text_h + 8))
    else:
        box = (BARE_MARGIN_PX, BARE_MARGIN_PX, width_px - BARE_MARGIN_PX, height_px - BARE_MARGIN_PX)
    left, top, right, bottom = box

    def row_of(value: float) -> float:
        return bottom - (value - y_lo) / (y_hi - y_lo) * (bottom - top)

    def col_of(value: float) -> float:
        return left + (value - x_lo) / (x_hi - x_lo) * (right - left)

    if log_y:
        for decade in range(int(y_lo), int(y_hi) + 1):  # grid line per decade
            canvas[int(round(row_of(decade))), left:right] = (225, 225, 225)
    elif labelled:
        for value, _ in y_ticks:
            canvas[int(round(row_of(value))), left:right] = (225, 225, 225)
    x_ticks = nice_ticks(x_lo, x_hi) if labelled else [(x_lo + k / 4 * (x_hi - x_lo), "") for k in range(5)]
    for value, _ in x_ticks:
        canvas[top:bottom, int(round(col_of(value)))] = (235, 235, 235)
    for index, pts in enumerate(points.values()):
        colour = SERIES_COLOURS_RGB[index % len(SERIES_COLOURS_RGB)]
        pix = [(col_of(x), row_of(fy(y))) for x, y in pts]
        for (xa, ya), (xb, yb) in zip(pix, pix[1:]):
            _draw_line(canvas, xa, ya, xb, yb, colour)
    if labelled:
        _annotate(canvas, box, title, x_label, y_label, [(col_of(v), label) for v, label in x_ticks],
                  [(row_of(v), label) for v, label in y_ticks])
        named = [(name, SERIES_COLOURS_RGB[index % len(SERIES_COLOURS_RGB)])
                 for index, (name, pts) in enumerate(points.items()) if len(pts) >= 2]
        if named:
            _legend(canvas, named, box)
    return canvas


def _annotate(canvas: np.ndarray, box, title, x_label, y_label, x_ticks, y_ticks) -> None:
    """Frame, tick values, axis labels and title around the plot ``box`` (left, top, right, bottom); ticks are
    (pixel column or row, label)."""
    left, top, right, bottom = box
    width_px = canvas.shape[1]
    text_h = GLYPH_H * TEXT_SCALE
    canvas[[top, bottom], left:right + 1] = FRAME_RGB
    canvas[top:bottom + 1, [left, right]] = FRAME_RGB
    for row, label in y_ticks:        # centred on the capitals' height (7 of the 9 font rows)
        mask = text_mask(label)
        draw_mask(canvas, mask, left - 6 - mask.shape[1], int(round(row)) - 7 * TEXT_SCALE // 2)
    for col, label in x_ticks:        # kept right of the y tick values and inside the image
        mask = text_mask(label)
        centre = int(round(col))
        draw_mask(canvas, mask, min(max(centre - mask.shape[1] // 2, left - 2), width_px - mask.shape[1]),
                  bottom + 4)
    if x_label:
        mask = text_mask(x_label)
        draw_mask(canvas, mask, (left + right - mask.shape[1]) // 2, bottom + 6 + text_h)
    if y_label:                                    # reads bottom to top; half size where it would not fit
        mask = np.rot90(text_mask(y_label))
        if mask.shape[0] > bottom - top:
            mask = np.rot90(text_mask(y_label, scale=1))
        draw_mask(canvas, mask, 4, max((top + bottom - mask.shape[0]) // 2, 0))
    if title:
        mask = text_mask(title)
        draw_mask(canvas, mask, max((left + right - mask.shape[1]) // 2, 0), 6)


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
