"""Coarse-to-subtle curriculum of temporal negatives for sync post-training (SyncDPO style).

A curriculum is a list of stages, each active until a fraction of the total training steps, each a weighted list of
``(rule, magnitude)`` entries from ``rules.RULES``; a stage may replay a share of rows from earlier
stages so the model keeps rejecting the coarse distortions while it learns the subtle ones. As JSON (what a user
edits, e.g. in the DPO trainer node):

    {"mode": "staged", "families": null, "stages": [
      {"name": "coarse", "until": 0.3, "replay": 0.0, "rules": [
        {"rule": "audio_swap", "weight": 1},
        {"rule": "audio_shift", "seconds": [1.0, 1.5], "weight": 2}, ...]},
      {"name": "medium", "until": 0.65, "replay": 0.2, "rules": [...]}, ...]}

A bare list of stages is accepted too. The magnitude key is the rule's unit: ``"seconds"``, ``"ratio"`` or
``"count"``, a number or a ``[low, high]`` range (for a shift the sign, for a tempo the direction, is drawn at
random with a range); rules without a magnitude (swap, reversals) take none. ``until`` rises strictly and the last
stage's is 1.0. ``replay`` is the share of rows drawn from an earlier stage (chosen uniformly); on the first stage it
has no effect.

Ablations: ``mode="none"`` mixes every entry of every stage (with its weight) from step 0; ``families=[...]`` keeps
only the rules of those families (``rules.FAMILIES``), dropping the stages it empties (the next kept
stage starts where the dropped one did).

``sample`` draws only entries whose whole magnitude range applies to the clip (``applicable``): when the stage a row
drew has none, the row falls back to the nearest stage that has one, so a short clip never stops a training run;
when no entry of any stage applies it raises ``NegativeRuleError`` listing each entry and why.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field, replace

import torch

from .magnitudes import uniforms
from .rule_spec import NegativeRuleError
from .rules import FAMILIES, RULES, draw_magnitudes, validate_magnitude, why_not_applicable
from .time_axes import ClipLengths, TimeAxes

__all__ = ["CurriculumError", "RuleChoice", "Stage", "Curriculum", "DEFAULT_CURRICULUM", "MODES"]

MODES = ("staged", "none")


class CurriculumError(ValueError):
    """A curriculum spec is malformed; the message starts with the path of the bad field."""


@dataclass(frozen=True)
class RuleChoice:
    """One entry of a stage: a rule, its magnitude (None, a number or a ``(low, high)`` range) and a weight."""

    rule: str
    magnitude: float | int | tuple | None = None
    weight: float = 1.0

    @property
    def family(self) -> str:
        return RULES[self.rule].family

    def to_dict(self) -> dict:
        out = {"rule": self.rule}
        unit = RULES[self.rule].unit
        if unit != "none":
            out[unit] = list(self.magnitude) if isinstance(self.magnitude, tuple) else self.magnitude
        out["weight"] = self.weight
        return out


@dataclass(frozen=True)
class Stage:
    until: float                       # progress (fraction of total steps) at which the stage ends
    rules: tuple[RuleChoice, ...]
    replay: float = 0.0                # share of rows drawn from an earlier stage
    name: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "until": self.until, "replay": self.replay,
                "rules": [choice.to_dict() for choice in self.rules]}


@dataclass(frozen=True)
class Curriculum:
    stages: tuple[Stage, ...]
    mode: str = "staged"               # "staged" | "none" (ablation: everything mixed from step 0)
    families: tuple[str, ...] | None = None   # ablation: keep only these rule families
    _effective: tuple[Stage, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.families is not None:
            families = (self.families,) if isinstance(self.families, str) else tuple(self.families)
            object.__setattr__(self, "families", families)
        # Validate through the dict form, so a Curriculum built in Python gets the same messages as JSON.
        _parse(self.to_dict())
        object.__setattr__(self, "_effective", self._compute_effective())

    # ---- JSON

    @classmethod
    def from_dict(cls, spec) -> "Curriculum":
        stages, mode, families = _parse(spec)
        return cls(stages, mode, families)

    @classmethod
    def from_json(cls, text: str) -> "Curriculum":
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as error:
            raise CurriculumError(f"curriculum: not valid JSON ({error})") from None
        return cls.from_dict(spec)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "families": None if self.families is None else list(self.families),
                "stages": [stage.to_dict() for stage in self.stages]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    # ---- ablations

    def with_mode(self, mode: str) -> "Curriculum":
        return replace(self, mode=mode)

    def only_families(self, families) -> "Curriculum":
        """Keep only the rules of these families (None: all)."""
        families = None if families is None else tuple([families] if isinstance(families, str) else families)
        return replace(self, families=families)

    # ---- schedule

    @property
    def effective_stages(self) -> tuple[Stage, ...]:
        """The stages sampling uses, after the mode and the family filter."""
        return self._effective

    def _compute_effective(self) -> tuple[Stage, ...]:
        stages = self.stages
        if self.families is not None:
            kept = []
            for stage in stages:
                rules = tuple(choice for choice in stage.rules if choice.family in self.families)
                if rules:
                    kept.append(replace(stage, rules=rules))
            if not kept:
                present = sorted({choice.family for stage in stages for choice in stage.rules})
                raise CurriculumError(f"families: {list(self.families)} keeps no rule of this curriculum "
                                      f"(its families: {', '.join(present)})")
            kept[-1] = replace(kept[-1], until=1.0)
            stages = tuple(kept)
        if self.mode == "none":
            stages = (Stage(1.0, tuple(choice for stage in stages for choice in stage.rules), 0.0, "none"),)
        return stages

    def stage_index(self, step: int, total_steps: int) -> int:
        """Index in ``effective_stages`` of the stage active at ``step`` (0-based) of ``total_steps``."""
        if not (isinstance(total_steps, numbers.Integral) and total_steps > 0):
            raise ValueError(f"total_steps: expected a positive whole number, got {total_steps!r}")
        if not (isinstance(step, numbers.Integral) and step >= 0):
            raise ValueError(f"step: expected a whole number >= 0, got {step!r}")
        progress = min(step / total_steps, 1.0)
        for index, stage in enumerate(self._effective):
            if progress < stage.until:
                return index
        return len(self._effective) - 1

    def stage_at(self, step: int, total_steps: int) -> Stage:
        return self._effective[self.stage_index(step, total_steps)]

    def sample(self, step: int, total_steps: int, batch: int, generator: torch.Generator | None, *,
               lengths: ClipLengths | None = None, axes: TimeAxes | None = None) -> list[tuple[str, object]]:
        """One ``(rule, magnitude)`` per row for training step ``step`` of ``total_steps``.

        Magnitudes are concrete (a signed float in seconds, a ratio, a whole count, or None), ready for
        ``build_negatives``. With ``lengths`` and ``axes`` only entries applicable to that clip are drawn.
        """
        if not (isinstance(batch, numbers.Integral) and batch > 0):
            raise ValueError(f"batch: expected a positive whole number of rows, got {batch!r}")
        if (lengths is None) != (axes is None):
            raise ValueError("sample: give both lengths and axes (to check applicability) or neither")
        stages = self._effective
        current = self.stage_index(step, total_steps)
        if lengths is not None and lengths.batch != batch:
            lengths = lengths._replace(batch=batch)
        weights = [self._weights(stage, lengths, axes) for stage in stages]

        # Both draws happen whatever the replay share, so later draws do not depend on it.
        replay_u = uniforms(batch, generator)
        earlier_u = uniforms(batch, generator)
        stage_of_row = torch.full((batch,), current, dtype=torch.long)
        if current > 0 and stages[current].replay > 0:
            earlier = torch.floor(earlier_u * current).long().clamp(max=current - 1)
            stage_of_row = torch.where(replay_u < stages[current].replay, earlier, stage_of_row)

        plan: list = [None] * batch
        for drawn in range(len(stages)):
            rows = (stage_of_row == drawn).nonzero().flatten()
            if rows.numel() == 0:
                continue
            index = self._fallback(drawn, current, weights, lengths, axes, batch)
            stage = stages[index]
            device = generator.device if generator is not None else torch.device("cpu")
            picks = torch.multinomial(weights[index].to(device), rows.numel(), replacement=True,
                                      generator=generator).cpu()
            for entry in range(len(stage.rules)):                      # each entry's rows, magnitudes batched
                its_rows = rows[picks == entry]
                if its_rows.numel() == 0:
                    continue
                choice = stage.rules[entry]
                values = draw_magnitudes(choice.rule, choice.magnitude, its_rows.numel(), generator)
                count = RULES[choice.rule].unit == "count"
                for position, row in enumerate(its_rows.tolist()):
                    value = None if values is None else values[position].item()
                    plan[row] = (choice.rule, int(value) if count and value is not None else value)
        return plan

    def sampler(self, step: int, total_steps: int):
        """A plan sampler for ``build_negatives``: ``sampler(batch, generator, lengths, axes)``."""
        self.stage_index(step, total_steps)                            # fail now, not inside the training step

        def plan(batch, generator, lengths, axes):
            return self.sample(step, total_steps, batch, generator, lengths=lengths, axes=axes)
        return plan

    def _weights(self, stage: Stage, lengths, axes) -> torch.Tensor:
        weights = torch.tensor([choice.weight for choice in stage.rules], dtype=torch.float64)
        if lengths is not None:
            ok = torch.tensor([why_not_applicable(choice.rule, choice.magnitude, lengths, axes) is None
                               for choice in stage.rules])
            weights = torch.where(ok, weights, torch.zeros_like(weights))
        return weights

    def _fallback(self, drawn: int, current: int, weights, lengths, axes, batch) -> int:
        """The stage to draw from: ``drawn`` if one of its entries applies, else the nearest stage to the current
        one that has (later first on a tie: subtler distortions fit shorter clips)."""
        if weights[drawn].sum() > 0:
            return drawn
        order = sorted(range(len(weights)), key=lambda s: (abs(s - current), -s))
        for index in order:
            if weights[index].sum() > 0:
                return index
        reasons = [why_not_applicable(choice.rule, choice.magnitude, lengths, axes)
                   for stage in self._effective for choice in stage.rules]
        raise NegativeRuleError("curriculum: no rule of any stage applies to this batch; " + "; ".join(
            dict.fromkeys(reason for reason in reasons if reason)))


# ------------------------------------------------------------------------------------------------ parsing

def _number(value, path: str, expected: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise CurriculumError(f"{path}: expected {expected}, got {value!r}")
    return value


def _parse(spec) -> tuple[tuple[Stage, ...], str, tuple[str, ...] | None]:
    mode, families = "staged", None
    if isinstance(spec, dict):
        unknown = set(spec) - {"stages", "mode", "families"}
        if unknown:
            raise CurriculumError(f"curriculum: unknown key(s) {sorted(unknown)}; expected 'stages', 'mode', "
                                  f"'families'")
        if "stages" not in spec:
            raise CurriculumError("stages: missing (a list of stages)")
        mode = spec.get("mode", "staged")
        if mode not in MODES:
            raise CurriculumError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        families = spec.get("families")
        if families is not None:
            if isinstance(families, str):
                families = [families]
            if not isinstance(families, (list, tuple)) or not families:
                raise CurriculumError(f"families: expected null or a non-empty list of families, got {families!r}")
            for i, family in enumerate(families):
                if family not in FAMILIES:
                    raise CurriculumError(f"families[{i}]: expected one of {', '.join(FAMILIES)}, got {family!r}")
            families = tuple(families)
        spec = spec["stages"]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise CurriculumError(f"stages: expected a non-empty list of stages, got {spec!r}")
    stages, previous = [], 0.0
    for s, raw in enumerate(spec):
        path = f"stages[{s}]"
        if isinstance(raw, Stage):
            raw = raw.to_dict()
        if not isinstance(raw, dict):
            raise CurriculumError(f"{path}: expected an object with 'until' and 'rules', got {raw!r}")
        unknown = set(raw) - {"until", "rules", "replay", "name"}
        if unknown:
            raise CurriculumError(f"{path}: unknown key(s) {sorted(unknown)}; expected 'until', 'rules', "
                                  f"'replay', 'name'")
        if "until" not in raw:
            raise CurriculumError(f"{path}.until: missing (the progress, 0 to 1, at which the stage ends)")
        until = _number(raw["until"], f"{path}.until", "a progress fraction in (0, 1]")
        if not previous < until <= 1.0:
            raise CurriculumError(f"{path}.until: expected a progress fraction in ({previous:g}, 1] (rising from "
                                  f"stage to stage), got {until!r}")
        previous = until
        replay = _number(raw.get("replay", 0.0), f"{path}.replay", "a share in [0, 1)")
        if not 0.0 <= replay < 1.0:
            raise CurriculumError(f"{path}.replay: expected a share in [0, 1), got {replay!r}")
        name = raw.get("name", "")
        if not isinstance(name, str):
            raise CurriculumError(f"{path}.name: expected a string, got {name!r}")
        rules = raw.get("rules")
        if not isinstance(rules, (list, tuple)) or not rules:
            raise CurriculumError(f"{path}.rules: expected a non-empty list of rule entries, got {rules!r}")
        stages.append(Stage(float(until), tuple(_parse_choice(entry, f"{path}.rules[{r}]")
                                                for r, entry in enumerate(rules)), float(replay), name))
    if stages[-1].until != 1.0:
        raise CurriculumError(f"stages[{len(stages) - 1}].until: the last stage must run to the end of training "
                              f"(1.0), got {stages[-1].until!r}")
    return tuple(stages), mode, families


def _parse_choice(raw, path: str) -> RuleChoice:
    if isinstance(raw, RuleChoice):
        raw = raw.to_dict()
    if not isinstance(raw, dict):
        raise CurriculumError(f"{path}: expected an object like {{\"rule\": \"audio_shift\", \"seconds\": [0.1, 0.3]}},"
                              f" got {raw!r}")
    rule = raw.get("rule")
    if rule not in RULES:
        raise CurriculumError(f"{path}.rule: expected one of {', '.join(RULES)}, got {rule!r}")
    unit = RULES[rule].unit
    allowed = {"rule", "weight"} | ({unit} if unit != "none" else set())
    unknown = set(raw) - allowed
    if unknown:
        takes = f"'{unit}'" if unit != "none" else "no magnitude"
        raise CurriculumError(f"{path}: unknown key(s) {sorted(unknown)}; {rule} takes {takes} and 'weight'")
    weight = _number(raw.get("weight", 1.0), f"{path}.weight", "a positive number")
    if weight <= 0:
        raise CurriculumError(f"{path}.weight: expected a positive number, got {weight!r}")
    magnitude = None
    if unit != "none":
        if unit not in raw:
            raise CurriculumError(f"{path}.{unit}: missing ({rule}'s magnitude)")
        try:
            magnitude = validate_magnitude(rule, raw[unit])
        except ValueError as error:
            raise CurriculumError(f"{path}.{unit}: {error}") from None
    return RuleChoice(rule, magnitude, float(weight))


# ------------------------------------------------------------------------------------------------ default

# Coarse: whole-clip distortions a model can reject from any event; medium: offsets and re-timings of a fraction
# of a second; subtle: offsets down to 80 ms (about two video latent frames at 16 fps / 2) and local edits.
# The shift carries double weight throughout: it is the distortion sync metrics measure.
DEFAULT_CURRICULUM = Curriculum.from_dict({"mode": "staged", "families": None, "stages": [
    {"name": "coarse", "until": 0.3, "replay": 0.0, "rules": [
        {"rule": "audio_swap", "weight": 1},
        {"rule": "audio_reversal", "weight": 1},
        {"rule": "video_reversal", "weight": 1},
        {"rule": "audio_shift", "seconds": [1.0, 1.5], "weight": 2}]},
    {"name": "medium", "until": 0.65, "replay": 0.2, "rules": [
        {"rule": "audio_shift", "seconds": [0.4, 1.0], "weight": 2},
        {"rule": "segment_shuffle", "count": [2, 4], "weight": 1},
        {"rule": "audio_tempo", "ratio": [1.1, 1.25], "weight": 1}]},
    {"name": "subtle", "until": 1.0, "replay": 0.2, "rules": [
        {"rule": "audio_shift", "seconds": [0.08, 0.4], "weight": 2},
        {"rule": "audio_mute", "seconds": [0.1, 0.3], "weight": 1},
        {"rule": "audio_tempo", "ratio": [1.05, 1.1], "weight": 1},
        {"rule": "video_freeze", "seconds": [0.25, 0.5], "weight": 1},
        {"rule": "repeat_span", "seconds": [0.1, 0.3], "weight": 1}]},
]})
