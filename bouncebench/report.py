"""BounceBench reports: JSON-ready values, means (and their standard errors) that skip undefined numbers, paired
differences, the text table of an evaluation (the JSON file itself is written by ``files.atomic.write_json_atomic``)."""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import numpy as np

__all__ = ["jsonable", "finite_mean", "MeanSE", "mean_se", "PairedDifference", "paired_difference", "format_table"]


def jsonable(value):
    """numpy -> Python, tuples -> lists, NaN / inf -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


class MeanSE(NamedTuple):
    """The mean of some numbers, its standard error (sample sd / sqrt(n); None below 2 numbers), and n."""

    mean: float | None
    se: float | None
    count: int


def mean_se(values) -> MeanSE:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` of the finite values (None and NaN / inf left out, and not
    counted in n); mean None when there is none."""
    finite = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    if finite.size == 0:
        return MeanSE(None, None, 0)
    se = float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size >= 2 else None
    return MeanSE(float(finite.mean()), se, int(finite.size))


def finite_mean(values) -> float | None:
    """The mean of the finite values (None and NaN / inf left out); None when there is none."""
    return mean_se(values).mean


class PairedDifference(NamedTuple):
    """Mean of ``other - base`` over paired clips, its standard error (None below 2 clips), the clips paired."""

    mean: float
    se: float | None
    clips: int


def paired_difference(base: Mapping, other: Mapping) -> PairedDifference | None:
    """The mean difference ``other[k] - base[k]`` over the keys (clip seeds) both have a finite number for, and its
    paired standard error ``std(d, ddof=1) / sqrt(n)``; None when no key pairs.

    base / other: clip seed -> a per-clip number (None / NaN = undefined for that clip, left out). Pairing by clip
    (same prompt, same noise) removes the clip-to-clip spread that unpaired means carry.
    """
    diffs = []
    for key, value in other.items():
        reference = base.get(key)
        if value is None or reference is None or not math.isfinite(value) or not math.isfinite(reference):
            continue
        diffs.append(float(value) - float(reference))
    if not diffs:
        return None
    return PairedDifference(*mean_se(diffs))


_TABLE_COLUMNS = (
    ("F1", "event_f1", "{:.3f}"), ("chance", "chance_event_f1", "{:.3f}"), ("margin", "event_f1_margin", "{:+.3f}"),
    ("|off| ms", "median_offset_ms", "{:.1f}"), ("AV-Align", "av_align", "{:.3f}"),
    ("xcorr ms", "xcorr_offset_ms", "{:+.1f}"), ("count ok", "video_blob_count_ok", "{:.2f}"),
    ("colour err", "video_colour_error", "{:.3f}"), ("radius x", "video_radius_ratio", "{:.2f}"),
    ("spec dB", "audio_spectral_distance_db", "{:.1f}"), ("pitch Hz", "audio_pitch_error_hz", "{:.1f}"),
)


def format_table(result: dict) -> str:
    """A short text table of an ``evaluate_bouncebench`` result: the generated row, and the real row if present."""
    guidance = result.get("guidance") or {}
    label = (f"text {guidance.get('text_scale_video', '?')}, sync {guidance.get('sync_scale_video', '?')}"
             if guidance else "generated")
    rows = [(f"generated ({label})", result)]
    if result.get("real"):
        rows.append(("real clips", result["real"]))
    name_width = max(len(name) for name, _ in rows)
    cells = [[fmt.format(row[key]) if row.get(key) is not None else "-" for _, key, fmt in _TABLE_COLUMNS]
             for _, row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(_TABLE_COLUMNS)]
    lines = ["  ".join([" " * name_width] + [t.rjust(w) for (t, _, _), w in zip(_TABLE_COLUMNS, widths)])]
    for (name, _), row_cells in zip(rows, cells):
        lines.append("  ".join([name.ljust(name_width)] + [c.rjust(w) for c, w in zip(row_cells, widths)]))
    lines.append(f"{result['clips']} clips of BounceBench {result['split']} ({result['variant']}) from seed "
                 f"offset {result['seed']}, {result['steps']} {result['solver']} steps, {result['elapsed_s']:.1f} s; "
                 "rank sync by margin = F1 - chance")
    return "\n".join(lines)
