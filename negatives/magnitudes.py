"""A temporal-negative rule's magnitude: its forms, their validation, the per-row draw, and how a drawn value reads.

Magnitudes are in seconds (shifts, spans), a ratio (tempo) or a count (shuffle), the rule's ``RuleSpec.unit``. A
magnitude is a number (used as is, for every row), a ``(low, high)`` range (drawn per row; for a directional rule the
direction too: the sign of a shift, faster or slower for a tempo) or a per-row tensor ``[B]``. Whether a magnitude fits
a clip is negatives/applicability.py's question; the rules by name are negatives/rules.py's.
"""

from __future__ import annotations

import math
import numbers

import torch

from .rule_spec import RuleSpec

__all__ = ["uniforms", "describe_magnitude", "check_magnitude", "draw_values", "extremes", "could_draw",
           "magnitude_words"]


def uniforms(batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """[B] uniform in [0, 1), float64, drawn on the generator's device and returned on the CPU."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(batch, generator=generator, device=device, dtype=torch.float64).cpu()


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def describe_magnitude(magnitude) -> str:
    """A magnitude as error messages show it: 'none', '0.25', '[0.1, 0.3]', a tensor's first 8 values."""
    if magnitude is None:
        return "none"
    if isinstance(magnitude, torch.Tensor):
        values = magnitude.flatten().tolist()
        return "[" + ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "") + "]"
    if isinstance(magnitude, (tuple, list)):
        return "[" + ", ".join(f"{v:g}" for v in magnitude) + "]"
    return f"{magnitude:g}"


def check_magnitude(spec: RuleSpec, magnitude):
    """Check a magnitude's form for a rule and normalise it: None, a float / int, or a ``(low, high)`` tuple.

    Raises ValueError naming the rule and what it expects. (Whether it fits a clip is ``why_not_applicable``.)
    """
    expected = {
        "none": "no magnitude (None)",
        "seconds": ("seconds: a non-zero number (its sign is the direction: positive delays the audio) or a range "
                    "[low, high] with 0 <= low <= high (the sign drawn at random)") if spec.directional else
                   "seconds: a positive number or a range [low, high] with 0 < low <= high",
        "ratio": "a speed ratio: a positive number other than 1 (2 = twice as fast) or a range [low, high] with "
                 "1 <= low <= high (faster or slower by that factor, drawn at random)",
        "count": "a whole number of segments >= 2 or a range [low, high] of whole numbers with 2 <= low <= high",
    }[spec.unit]
    bad = ValueError(f"{spec.name}: expected {expected}, got {magnitude!r}")
    if spec.unit == "none":
        if magnitude is not None:
            raise bad
        return None
    if isinstance(magnitude, (tuple, list)):
        if len(magnitude) != 2 or not all(_is_number(v) and math.isfinite(v) for v in magnitude):
            raise bad
        low, high = magnitude
        if low > high:
            raise bad
        if spec.unit == "seconds" and (low < 0 if spec.directional else low <= 0):
            raise bad
        if spec.unit == "ratio" and low < 1:
            raise bad
        if spec.unit == "count":
            if low != int(low) or high != int(high) or low < 2:
                raise bad
            return (int(low), int(high))
        return (float(low), float(high))
    if not _is_number(magnitude) or not math.isfinite(magnitude):
        raise bad
    if spec.unit == "seconds" and (magnitude == 0 if spec.directional else magnitude <= 0):
        raise bad
    if spec.unit == "ratio" and (magnitude <= 0 or magnitude == 1):
        raise bad
    if spec.unit == "count":
        if magnitude != int(magnitude) or magnitude < 2:
            raise bad
        return int(magnitude)
    return float(magnitude)


def draw_values(spec: RuleSpec, magnitude, batch: int, generator: torch.Generator | None
                ) -> torch.Tensor | None:
    """Concrete per-row magnitudes ``[B]`` (float64, CPU; None for a rule without one).

    A number is repeated; a range is drawn uniformly per row (whole numbers for counts), then for a directional
    rule given a range the direction too (a random sign for a shift, the ratio or its inverse for a tempo).
    A tensor ``[B]`` is taken as is. The generator is consumed the same way whatever the values, so the draws of
    later rules do not depend on earlier magnitudes.
    """
    if isinstance(magnitude, torch.Tensor):
        values = magnitude.detach().to("cpu", torch.float64).flatten()
        if values.numel() != batch:
            raise ValueError(f"{spec.name}: expected one magnitude per row ({batch}), got a tensor of shape "
                             f"{list(magnitude.shape)}")
        for value in set(values.tolist()):
            check_magnitude(spec, int(value) if spec.unit == "count" and value == int(value) else value)
        return values
    magnitude = check_magnitude(spec, magnitude)
    if magnitude is None:
        return None
    if not isinstance(magnitude, tuple):
        return torch.full((batch,), float(magnitude), dtype=torch.float64)
    low, high = magnitude
    u = uniforms(batch, generator)
    if spec.unit == "count":
        return (low + torch.floor(u * (high - low + 1))).clamp(max=high)
    values = low + u * (high - low)
    if spec.directional:
        flip = uniforms(batch, generator) < 0.5
        values = torch.where(flip, -values, values) if spec.unit == "seconds" else torch.where(flip, 1 / values, values)
    return values


def extremes(spec: RuleSpec, magnitude) -> torch.Tensor | None:
    """Every extreme a magnitude can take; all requirements are monotone in the magnitude, so they cover a range."""
    if magnitude is None:
        return None
    if isinstance(magnitude, tuple):
        low, high = magnitude
        values = [low, high]
        if spec.directional and spec.unit == "ratio":
            values += [1 / low, 1 / high]
        return torch.tensor(values, dtype=torch.float64)
    return torch.tensor([magnitude], dtype=torch.float64)


def could_draw(spec: RuleSpec, magnitude, value) -> bool:
    """Whether ``draw_values`` can give ``value`` for ``magnitude`` (its number, or its range in either direction)."""
    if magnitude is None or value is None:
        return magnitude is None and value is None
    if not isinstance(magnitude, tuple):
        return abs(value - magnitude) < 1e-9
    low, high = magnitude
    candidates = [abs(value)] if spec.unit == "seconds" else [value]
    if spec.directional and spec.unit == "ratio" and value > 0:
        candidates.append(1.0 / value)
    return any(low - 1e-9 <= v <= high + 1e-9 for v in candidates)


def magnitude_words(spec: RuleSpec, value) -> str:
    """A drawn magnitude in words, to follow the rule's description: ' by +0.250 s (sound late)', ' for 0.300 s',
    ' at 1.100x speed', ' into 3 segments'; '' for a rule without one."""
    if value is None or spec.unit == "none":
        return ""
    if spec.unit == "seconds":
        if spec.directional:                 # a shift: its sign says which stream comes first
            return f" by {value:+.3f} s ({'sound late' if value > 0 else 'sound early'})"
        return f" for {value:.3f} s"
    if spec.unit == "ratio":
        return f" at {value:.3f}x speed"
    return f" into {int(value)} segments"
