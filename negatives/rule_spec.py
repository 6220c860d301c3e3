"""What a temporal-negative rule is: its ``RuleSpec``, the one table entry (``rules.RULES``) that says everything about
it, and the error a rule raises when it cannot apply to a clip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .time_axes import ClipLengths, TimeAxes

__all__ = ["NegativeRuleError", "Requirement", "RuleSpec"]


class NegativeRuleError(ValueError):
    """A rule cannot apply to a clip: the clip is too short for the magnitude, or the batch has one row (swap)."""


# requirement(values, lengths, axes) -> (bad, words): bad [N] bool marks the magnitude values [N] (None for a rule
# without a magnitude) that a clip of ``lengths`` cannot take; words say what the rule needs of a clip.
Requirement = Callable[[torch.Tensor | None, ClipLengths, TimeAxes], tuple[torch.Tensor, str]]


@dataclass(frozen=True)
class RuleSpec:
    """One rule: ``fn(video, audio, magnitude, *, axes, generator) -> (video, audio)``.

    family: the ablation group ("shift", "reverse", ...). stream: "audio" or "video", the one it changes.
    unit: the magnitude's unit, "seconds", "ratio", "count" or "none" (no magnitude).
    requirement: what a clip must offer the rule (a ``Requirement``); every requirement is monotone in the
    magnitude, so checking the ends of a range checks the whole range.
    directional: a range magnitude also draws a direction (the sign of a shift, faster or slower for a tempo).
    needs_batch: draws from other rows, so ``build_negatives`` runs it on the whole batch and keeps its rows.
    """

    name: str
    family: str
    stream: str
    unit: str
    fn: Callable
    requirement: Requirement
    directional: bool = False
    needs_batch: bool = False
    description: str = ""
