"""Loss curves render and the PNG writer produces a valid file holding exactly the pixels."""

import struct
import zlib

import numpy as np

from comfyui_syncav.train.plot import SERIES_COLOURS_RGB, render_curves, write_png


def read_png_rgb(path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h = size
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert np.all(rows[:, 0] == 0)
    return rows[:, 1:].reshape(h, w, 3)


def test_curves_are_drawn_and_written_losslessly(tmp_path):
    image = render_curves({"falling": [(i, 1.0 / (1 + i)) for i in range(50)],
                           "flat": [(i, 0.3) for i in range(50)]}, width_px=200, height_px=100)
    assert image.shape == (100, 200, 3)
    first, second = (np.all(image == np.array(c, dtype=np.uint8), axis=-1) for c in SERIES_COLOURS_RGB[:2])
    assert first.sum() > 100 and second.sum() > 100
    # The falling curve starts high on the left and ends low on the right (log scale, y grows downwards).
    rows = np.nonzero(first)[0]
    cols = np.nonzero(first)[1]
    assert rows[cols < 20].mean() < rows[cols > 180].mean()
    write_png(tmp_path / "curve.png", image)
    assert np.array_equal(read_png_rgb(tmp_path / "curve.png"), image)


def test_a_full_size_plot_has_its_title_axis_labels_and_legend():
    """At the trainer's size the text is drawn where it belongs: the title above the plot, the y label left of it,
    "step" below it, and the legend (the series' colour beside its name) inside it, away from the falling curve.
    The text is the font's own ink, so each label is found by matching its pixels."""
    from comfyui_syncav.train.plot import TEXT_RGB, text_mask

    series = {"falling": [(i, 1.0 / (1 + i)) for i in range(50)], "flat": [(i, 0.3) for i in range(50)]}
    image = render_curves(series, width_px=640, height_px=300, title="DPO loss")
    ink = np.all(image == np.array(TEXT_RGB, dtype=np.uint8), axis=-1)

    def found(mask, rows, cols) -> bool:
        """Whether ``mask`` is inked at some place with its top-left corner in rows x cols."""
        h, w = mask.shape
        return any(np.array_equal(ink[r:r + h, c:c + w] & mask, mask) for r in rows for c in cols
                   if r + h <= ink.shape[0] and c + w <= ink.shape[1])

    assert found(text_mask("DPO loss"), range(0, 20), range(200, 440)), "no title above the plot"
    assert found(text_mask("step"), range(250, 290), range(250, 400)), "no x label under the plot"
    assert found(np.rot90(text_mask("loss (log scale)")), range(0, 300), range(0, 12)), "no y label"
    assert found(text_mask("falling"), range(20, 280), range(320, 640)), "no legend entry for the first series"
    assert found(text_mask("flat"), range(20, 280), range(320, 640)), "no legend entry for the second series"
    # the legend's colour strokes: each series' colour beside its name, on the legend's white
    for colour in SERIES_COLOURS_RGB[:2]:
        stroke = np.all(image[:, 320:] == np.array(colour, dtype=np.uint8), axis=-1)
        assert np.any(stroke.sum(axis=1) >= 16), f"no legend stroke in {colour}"
    # a small plot (a thumbnail) carries no text at all
    small = render_curves(series, width_px=200, height_px=100, title="DPO loss")
    assert not np.any(np.all(small == np.array(TEXT_RGB, dtype=np.uint8), axis=-1))


def test_empty_or_non_positive_series_give_a_blank_canvas():
    image = render_curves({"nothing": [(0, 0.0), (1, -1.0)]}, width_px=50, height_px=40)
    assert image.shape == (40, 50, 3) and np.all(image == 255)


def test_atomic_writes_publish_with_plain_permissions_and_leave_nothing_on_failure(tmp_path):
    import os

    import pytest

    from comfyui_syncav.files.atomic import atomic_path, default_file_mode, write_text_atomic

    write_text_atomic(tmp_path / "a.txt", "one")
    assert (tmp_path / "a.txt").read_text() == "one"
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == default_file_mode()   # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "one" and os.listdir(tmp_path) == ["a.txt"]
