"""Sync metrics over a few clips, as a graph compares two settings: each clip's report, the mean and standard error
of the headline numbers, the chance baseline clip by clip with the margin F1 - chance, and the paired differences
against another run on the same clips.

One clip says little: event F1 differs a lot from clip to clip, so a difference between two settings on one clip is
mostly noise. Over n clips the mean's standard error is ``sd / sqrt(n)``, and a difference measured clip by clip on
the same clips (same prompt, same noise) cancels the clip-to-clip spread both runs share. A plain library (numpy +
torch, no ComfyUI): SyncAV Sync Metric (nodes/metrics.py) is its user inside ComfyUI.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from ..metrics.motion import as_frames
from ..metrics.sync_metrics import REPORT_KEYS, own_and_chance_reports
from .report import finite_mean, jsonable, mean_se, paired_difference

__all__ = ["SE_KEYS", "PAIRED_KEYS", "split_clip_batch", "clips_of_batches", "clip_set_report", "per_clip_reports",
           "paired_differences", "summary_lines"]

# The numbers a report on several clips gives as mean ± standard error (with chance_event_f1 and event_f1_margin).
SE_KEYS = ("event_f1", "median_offset_ms", "av_align")
# The per-clip numbers paired_differences compares (event_f1_margin = the clip's F1 minus its chance F1).
PAIRED_KEYS = ("event_f1", "event_f1_margin", "median_offset_ms")


# ------------------------------------------------------------------------------------------------ clips

def split_clip_batch(frames, waveform, fps: float, sample_rate_hz: float) -> list[tuple]:
    """The clips of a batch laid end to end, as ComfyUI passes them.

    frames ``[B * F, H, W, 3]`` in 0..1 (clip after clip), waveform ``[B, C, T]`` (one track per clip), their rates.
    Returns B ``(frames [F, H, W, 3], waveform [C, T], fps, sample_rate_hz)`` tuples.
    """
    video = as_frames(frames, "frames")
    if not hasattr(waveform, "shape") or len(waveform.shape) != 3:
        raise ValueError(f"waveform: expected [B, C, T] (clips, channels, samples), got shape "
                         f"{tuple(getattr(waveform, 'shape', ())) or type(waveform).__name__}")
    batch = int(waveform.shape[0])
    if batch < 1 or video.shape[0] % batch:
        raise ValueError(f"frames / waveform: {video.shape[0]} frames do not split into {batch} clips (one audio "
                         "track per clip, every clip the same number of frames)")
    per = video.shape[0] // batch
    return [(video[i * per:(i + 1) * per], waveform[i], fps, sample_rate_hz) for i in range(batch)]


def clips_of_batches(frames: Sequence, waveforms: Sequence, fps: Sequence[float],
                     sample_rates_hz: Sequence[float]) -> list[tuple]:
    """Every clip of several batches, batch after batch (``split_clip_batch`` of each).

    frames / waveforms / sample_rates_hz: one entry per batch. fps: one rate for all, or one per batch.
    """
    if len(frames) != len(waveforms) or not frames:
        raise ValueError(f"frames / waveform: expected one audio track batch per frame batch, got {len(frames)} "
                         f"frame batches and {len(waveforms)} audio batches")
    if len(fps) not in (1, len(frames)):
        raise ValueError(f"fps: expected one frame rate, or one per batch ({len(frames)}), got {len(fps)}")
    clips = []
    for index, (batch_frames, batch_waveform, rate) in enumerate(zip(frames, waveforms, sample_rates_hz)):
        clips += split_clip_batch(batch_frames, batch_waveform, fps[index if len(fps) > 1 else 0], rate)
    return clips


# ------------------------------------------------------------------------------------------------ reports

def clip_set_report(clips: Sequence, tolerance_s: float | None = None, *, mode: str = "auto",
                    compare_to=None) -> dict:
    """The sync report of a set of clips.

    clips: ``(frames [F, H, W, 3], waveform [C, T], fps, sample_rate_hz)`` tuples (``clips_of_batches``).
    tolerance_s: event-matching window, default one frame. mode: the visual detector ("auto", "blobs", "motion").
    compare_to: None, or the report of another run on the same clips in the same order (this function's result, or
        its JSON text): adds ``paired_difference`` (see ``paired_differences``).

    One clip: exactly ``sync_report``'s dict (``REPORT_KEYS``; undefined numbers None). Several, in this order:
    ``summary`` (the headline numbers as lines of text); the mean over clips of every ``REPORT_KEYS`` number (NaN /
    None left out); ``<key>_se`` for the ``SE_KEYS``: the standard error of that mean, sample sd / sqrt(clips it
    averages), None below two; ``chance_event_f1`` (± ``chance_event_f1_se``): clip i's video against clip i + 1's
    audio (mod n), the F1 that unrelated sound already gets; ``event_f1_margin`` (± ``event_f1_margin_se``): the
    mean of each clip's F1 minus its chance F1, the number to rank sync by; ``num_clips``;
    ``paired_difference`` (with compare_to); ``per_clip``: each clip's report with its ``chance_event_f1`` and
    ``event_f1_margin``. With compare_to, one clip's report is ``sync_report``'s + ``paired_difference``.
    """
    own, chance = own_and_chance_reports(clips, tolerance_s, mode=mode)
    own = jsonable(own)
    if len(own) == 1:
        report = dict(own[0])
        if compare_to is not None:
            report["paired_difference"] = paired_differences(report, compare_to)
        return jsonable(report)
    per_clip = [{**r, "chance_event_f1": c["event_f1"], "event_f1_margin": _minus(r["event_f1"], c["event_f1"])}
                for r, c in zip(own, jsonable(chance))]
    report = {key: finite_mean(r[key] for r in own) for key in REPORT_KEYS}
    report.update({f"{key}_se": mean_se(r[key] for r in own).se for key in SE_KEYS})
    for key in ("chance_event_f1", "event_f1_margin"):
        report[key], report[f"{key}_se"], _ = mean_se(r[key] for r in per_clip)
    report["num_clips"] = len(own)
    if compare_to is not None:
        report["paired_difference"] = paired_differences({"event_f1": report["event_f1"], "per_clip": per_clip},
                                                         compare_to)
    report["per_clip"] = per_clip
    return jsonable({"summary": summary_lines(report), **report})


def per_clip_reports(report, name: str = "report") -> list[dict]:
    """The per-clip reports of a ``clip_set_report`` result (a dict or its JSON text): its ``per_clip`` list, or
    the report itself when it scores one clip."""
    if isinstance(report, str):
        try:
            report = json.loads(report)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name}: expected the JSON report of SyncAV Sync Metric, received text that is not "
                             f"JSON ({error.msg} at character {error.pos}): {report[:60]!r}") from None
    if not isinstance(report, Mapping) or "event_f1" not in report:
        what = sorted(report)[:6] if isinstance(report, Mapping) else type(report).__name__
        raise ValueError(f"{name}: expected a sync report (a JSON object with event_f1, as SyncAV Sync Metric "
                         f"writes it), received {what}")
    per_clip = report.get("per_clip")
    return list(per_clip) if isinstance(per_clip, list) else [dict(report)]


def paired_differences(report, base, *, name: str = "compare_to") -> dict:
    """``report`` minus ``base`` clip by clip, for two runs on the same clips in the same order.

    report / base: ``clip_set_report`` results (dicts or JSON text); ``name`` names ``base`` in errors.
    Returns ``{"clips": n, key: {"mean", "se", "clips"}}`` for each of ``PAIRED_KEYS``: the mean of the per-clip
    differences, their standard error (sample sd / sqrt(clips); None below two) and the clips where both numbers are
    defined (a median offset needs a matched event; a margin needs two clips or more). Raises ValueError when the
    two reports do not hold the same number of clips.
    """
    mine, theirs = per_clip_reports(report), per_clip_reports(base, name)
    if len(mine) != len(theirs):
        raise ValueError(f"{name}: expected a report on the same {len(mine)} clip{'s' * (len(mine) != 1)} as this "
                         f"one (paired clip by clip), received one on {len(theirs)}")
    paired = {"clips": len(mine)}
    for key in PAIRED_KEYS:
        difference = paired_difference({i: r.get(key) for i, r in enumerate(theirs)},
                                       {i: r.get(key) for i, r in enumerate(mine)})
        paired[key] = ({"mean": difference.mean, "se": difference.se, "clips": difference.clips}
                       if difference is not None else {"mean": None, "se": None, "clips": 0})
    return jsonable(paired)


def summary_lines(report: Mapping) -> list[str]:
    """The headline numbers of a several-clip ``clip_set_report`` as short lines (mean ± standard error)."""
    n = report["num_clips"]
    with_offset = sum(1 for r in report["per_clip"] if r.get("median_offset_ms") is not None)
    lines = [f"{n} clips, mean ± standard error over clips",
             f"event F1 {_pm(report['event_f1'], report['event_f1_se'], '.3f')}",
             f"chance F1 {_pm(report['chance_event_f1'], report['chance_event_f1_se'], '.3f')} (each video against "
             "the next clip's sound)",
             f"margin F1 - chance {_pm(report['event_f1_margin'], report['event_f1_margin_se'], '+.3f')}",
             f"median |offset| {_pm(report['median_offset_ms'], report['median_offset_ms_se'], '.1f')} ms"
             + (f" ({with_offset} of {n} clips have a matched event)" if with_offset < n else ""),
             f"AV-Align {_pm(report['av_align'], report['av_align_se'], '.3f')}"]
    paired = report.get("paired_difference")
    if paired:
        lines.append(f"this minus compare_to, clip by clip: event F1 "
                     f"{_pm(paired['event_f1']['mean'], paired['event_f1']['se'], '+.3f')}, margin "
                     f"{_pm(paired['event_f1_margin']['mean'], paired['event_f1_margin']['se'], '+.3f')}, median "
                     f"|offset| {_pm(paired['median_offset_ms']['mean'], paired['median_offset_ms']['se'], '+.1f')} ms")
    return lines


def _minus(value, reference):
    return None if value is None or reference is None else value - reference


def _pm(mean, se, spec: str) -> str:
    """``mean ± se`` formatted by ``spec``; "-" for an undefined mean, the mean alone without a standard error."""
    if mean is None:
        return "-"
    return f"{mean:{spec}}" + (f" ± {se:{spec.lstrip('+')}}" if se is not None else "")
