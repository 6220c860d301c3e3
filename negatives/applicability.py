"""Whether a rule's magnitude fits a clip: every value it can take meets the rule's requirement (``RuleSpec``).

A rule that cannot apply raises ``NegativeRuleError`` naming the rule, the magnitude and the clip length; the rules by
name (``why_not_applicable``, ``applicable``) are negatives/rules.py's.
"""

from __future__ import annotations

import torch

from .magnitudes import check_magnitude, describe_magnitude, draw_values, extremes
from .rule_spec import NegativeRuleError, RuleSpec
from .time_axes import ClipLengths, TimeAxes

__all__ = ["unfit_reason", "prepare"]


def _clip_words(spec: RuleSpec, lengths: ClipLengths, axes: TimeAxes) -> str:
    if spec.needs_batch:
        return f"a batch of {lengths.batch}"
    steps, hz = ((lengths.video_steps, axes.video_hz) if spec.stream == "video"
                 else (lengths.audio_steps, axes.audio_hz))
    return f"a clip of {steps} {spec.stream} steps ({steps / hz:.3g} s at {hz:g} steps/s)"


def _unit_words(spec: RuleSpec) -> str:
    return "" if spec.unit in ("none", "count") else f" {spec.unit}"


def unfit_reason(spec: RuleSpec, magnitude, lengths: ClipLengths, axes: TimeAxes) -> str | None:
    """None when every value ``magnitude`` (a number, a range or a tensor of values) can take applies to a clip of
    ``lengths``; else the reason, in words."""
    if isinstance(magnitude, torch.Tensor):
        values = magnitude.detach().to("cpu", torch.float64).flatten()
    else:
        values = extremes(spec, check_magnitude(spec, magnitude))
    bad, requirement = spec.requirement(values, lengths, axes)
    if not bool(bad.any()):
        return None
    return (f"{spec.name}: magnitude {describe_magnitude(magnitude)}{_unit_words(spec)} cannot apply to "
            f"{_clip_words(spec, lengths, axes)}: {requirement}")


def prepare(spec: RuleSpec, video: torch.Tensor, audio: torch.Tensor, magnitude, axes: TimeAxes,
            generator: torch.Generator | None) -> tuple[torch.Tensor | None, ClipLengths]:
    """Check the layout, draw per-row magnitudes ``[B]`` and check that every row's applies (what every rule does
    first). Returns (the magnitudes, float64 on the CPU or None, the clip lengths)."""
    if not isinstance(axes, TimeAxes):
        raise ValueError(f"{spec.name}: axes: expected a TimeAxes, received {type(axes).__name__}")
    lengths = axes.lengths(video, audio)
    values = draw_values(spec, magnitude, lengths.batch, generator)
    bad, requirement = spec.requirement(values, lengths, axes)
    if bool(bad.any()):
        shown = magnitude if values is None else values[bad.nonzero()[0, 0]].item()
        raise NegativeRuleError(f"{spec.name}: magnitude {describe_magnitude(shown)}{_unit_words(spec)} cannot apply "
                                f"to {_clip_words(spec, lengths, axes)}: {requirement}")
    return values, lengths
