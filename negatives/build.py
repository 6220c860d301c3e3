"""A batch of temporal negatives: each row of a batch distorted by its own rule (negatives/rules.py).

Measured cost of ``build_negatives`` on a tiny-preset batch (video ``[32, 16, 16, 8, 8]``, audio ``[32, 250, 32]``,
float32, CPU, one thread, rules drawn by ``DEFAULT_CURRICULUM.sampler`` (sampling included, 0.3-0.5 ms of it), on a
2-core host busy with a training run, 300 batches per stage): 1.2-2.0 ms at best, 2.7-6 ms median, under 10 ms at
the 90th percentile, whatever the stage (a fixed plan with all 9 rules in one batch: 1.6 ms median). The median is
at most 0.4 % of a ~1.5 s training step. Alone, each rule takes 0.03-0.9 ms on all 32 rows (tempo, the dearest,
gathers twice and interpolates).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from .magnitudes import check_magnitude, draw_values
from .rule_spec import RuleSpec
from .rules import RULES
from .time_axes import TimeAxes

__all__ = ["Negatives", "PlanEntry", "build_negatives"]


class Negatives(NamedTuple):
    """A batch of losers: the distorted video and audio and the rule of each row."""

    video: torch.Tensor          # [B, ...] like the input video (the input itself when no row changed it)
    audio: torch.Tensor          # [B, ...] like the input audio
    rules: list[str]             # the rule of each row


PlanEntry = tuple[str, object]   # (rule name, magnitude: None, a number, or a (low, high) range)


def build_negatives(video: torch.Tensor, audio: torch.Tensor, axes: TimeAxes,
                    plan: Sequence[PlanEntry | str] | Callable, generator: torch.Generator | None) -> Negatives:
    """Distort each row of a batch by its own rule; each rule runs once, on all of its rows.

    video [B, ...], audio [B, ...] laid out as ``axes`` says. plan: one ``(rule, magnitude)`` (or a bare rule name
    for rules without a magnitude) per row, or a sampler ``plan(batch, generator, lengths, axes)`` returning that
    list (``Curriculum.sampler(step, total_steps)``). Swap donors are drawn from the whole batch (any other row's
    clean audio), so one swap row in a batch of two or more is fine.
    Returns ``Negatives(video, audio, rules)``; a stream no row changed is returned as the input tensor itself.
    """
    lengths = axes.lengths(video, audio)
    B = lengths.batch
    if callable(plan):
        plan = plan(B, generator, lengths, axes)
    plan = [(entry, None) if isinstance(entry, str) else tuple(entry) for entry in plan]
    if len(plan) != B:
        raise ValueError(f"build_negatives plan: expected one (rule, magnitude) per row ({B}), got {len(plan)}")
    for row, (rule, _) in enumerate(plan):
        if rule not in RULES:
            raise ValueError(f"build_negatives plan[{row}]: expected a rule among {', '.join(RULES)}, got {rule!r}")
    out_video, out_audio = video, audio
    for name, spec in RULES.items():                                   # registry order: draws are reproducible
        rows = [row for row, (rule, _) in enumerate(plan) if rule == name]
        if not rows:
            continue
        values = _plan_magnitudes(spec, [plan[row][1] for row in rows], generator)
        picked_video = torch.tensor(rows, device=video.device)
        picked_audio = picked_video.to(audio.device)
        if spec.needs_batch:
            # The donors are any other row of the batch; draw over all rows and keep this rule's.
            if values is not None:
                values = torch.zeros(B, dtype=torch.float64).index_copy(0, torch.tensor(rows), values)
            new_video, new_audio = spec.fn(video, audio, values, axes=axes, generator=generator)
            new_video, new_audio = new_video.index_select(0, picked_video), new_audio.index_select(0, picked_audio)
        else:
            new_video, new_audio = spec.fn(video.index_select(0, picked_video), audio.index_select(0, picked_audio),
                                           values, axes=axes, generator=generator)
        # Copy a stream only once some row changes it; then write each rule's rows in place.
        if spec.stream == "video":
            out_video = out_video.clone() if out_video is video else out_video
            out_video.index_copy_(0, picked_video, new_video)
        else:
            out_audio = out_audio.clone() if out_audio is audio else out_audio
            out_audio.index_copy_(0, picked_audio, new_audio)
    return Negatives(out_video, out_audio, [rule for rule, _ in plan])


def _plan_magnitudes(spec: RuleSpec, magnitudes: list, generator) -> torch.Tensor | None:
    """Per-row magnitudes of one rule's rows: numbers kept, ranges drawn (row by row: a plan is a short list)."""
    if spec.unit == "none":
        for magnitude in magnitudes:
            check_magnitude(spec, magnitude)
        return None
    values = [draw_values(spec, m, 1, generator) if isinstance(m, (tuple, list))
              else torch.tensor([float(check_magnitude(spec, m))], dtype=torch.float64)
              for m in magnitudes]
    return torch.cat(values)
