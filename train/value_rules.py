"""The value rules of the training configs, each written once, and how a front end names their errors.

Each config checks its own values in ``__post_init__`` with these rules. A broken rule raises ``ValueRuleError``, a
ValueError naming the field and what was expected (``TrainConfig.lr: expected a finite number > 0, got nan``). A
front end whose inputs are called otherwise (a node input, a command-line flag) builds its configs inside
``named_as`` and the same error comes out under its own name (``--lr: expected a finite number > 0, got nan``):
front ends rename rules, they never restate them.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Iterable, Iterator, Mapping

__all__ = ["ValueRuleError", "whole", "positive", "positive_or_none", "fraction", "one_of", "named_as"]


class ValueRuleError(ValueError):
    """A value broke its rule. field: where it lives (``"TrainConfig.lr"``, or a bare name); name: what the message
    calls it (default: ``field``)."""

    def __init__(self, field: str, expected: str, value, name: str | None = None):
        self.field, self.expected, self.value = field, expected, value
        super().__init__(f"{name or field}: expected {expected}, got {value!r}")

    def named(self, name: str) -> "ValueRuleError":
        """The same broken rule, under ``name``."""
        return ValueRuleError(self.field, self.expected, self.value, name)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def whole(field: str, value, low: int) -> None:
    """A whole number >= low (bools are not numbers here: a widget or JSON ``true`` is a mistake)."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low):
        raise ValueRuleError(field, f"a whole number >= {low}", value)


def positive(field: str, value) -> None:
    """A finite number > 0 (NaN and inf refused)."""
    if not (_is_real(value) and 0 < value < math.inf):
        raise ValueRuleError(field, "a finite number > 0", value)


def positive_or_none(field: str, value, none_means: str) -> None:
    """None (which means ``none_means``) or a finite number > 0."""
    if value is not None and not (_is_real(value) and 0 < value < math.inf):
        raise ValueRuleError(field, f"a finite number > 0 or None ({none_means})", value)


def fraction(field: str, value, below_one: bool = False) -> None:
    """A share in [0, 1], or in [0, 1) with ``below_one``."""
    inside = _is_real(value) and 0.0 <= value and (value < 1.0 if below_one else value <= 1.0)
    if not inside:
        raise ValueRuleError(field, f"a fraction in [0, {'1)' if below_one else '1]'}", value)


def one_of(field: str, value, choices: Iterable[str], none_allowed: bool = False) -> None:
    """One of ``choices`` (or None with ``none_allowed``)."""
    choices = tuple(choices)
    if not (value in choices or (none_allowed and value is None)):
        raise ValueRuleError(field, f"{'None or ' if none_allowed else ''}one of {', '.join(choices)}", value)


@contextlib.contextmanager
def named_as(names: Mapping[str, str]) -> Iterator[None]:
    """Inside: a ``ValueRuleError`` of a field in ``names`` is re-raised under the name it maps to.

    Keys are a field's full name (``"NoiseMix.shift"``) or its bare name (``"shift"``, for every config that has
    one); values are what the front end calls it (``"--noise-shift"``). Other errors pass unchanged.
    """
    try:
        yield
    except ValueRuleError as error:
        name = names.get(error.field, names.get(error.field.rsplit(".", 1)[-1]))
        if name is None:
            raise
        raise error.named(name) from None
