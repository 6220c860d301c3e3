"""A curriculum narrowed by a user's choices, as the Temporal Negative Builder node takes them: the curriculum as JSON,
the rules to keep (or all of them), the mode, and the rule families. Errors name those inputs."""

from __future__ import annotations

from .curriculum import MODES, Curriculum, CurriculumError
from .rules import FAMILIES, RULES

__all__ = ["ALL_RULES", "parse_names", "keep_rules", "choose_curriculum"]

ALL_RULES = "curriculum"      # the rule choice that keeps every rule of the curriculum


def parse_names(text, what: str, known) -> tuple[str, ...] | None:
    """``"a, b"`` -> ("a", "b"); ``""`` -> None. Unknown names: a ValueError naming the input."""
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected comma-separated names, received {type(text).__name__}")
    names = tuple(dict.fromkeys(piece.strip() for piece in text.split(",") if piece.strip()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{what}: unknown {unknown}; expected comma-separated names among {', '.join(known)}, "
                         f"received {text!r}")
    return names or None


def keep_rules(curriculum: Curriculum, rules: tuple[str, ...]) -> Curriculum:
    """The curriculum with only the entries of ``rules`` (stages left empty dropped; the last runs to the end)."""
    spec = curriculum.to_dict()
    present = {entry["rule"] for stage in spec["stages"] for entry in stage["rules"]}
    missing = [rule for rule in rules if rule not in present]
    if missing:
        raise ValueError(f"rules: {missing} have no entry in curriculum_json (its rules: {', '.join(sorted(present))})"
                         f"; add an entry with a magnitude for them there")
    stages = [dict(stage, rules=[e for e in stage["rules"] if e["rule"] in rules]) for stage in spec["stages"]]
    stages = [stage for stage in stages if stage["rules"]]
    stages[-1]["until"] = 1.0
    return Curriculum.from_dict(dict(spec, stages=stages))


def choose_curriculum(rules: str, curriculum_json: str, curriculum_mode: str, families: str
                      ) -> tuple[Curriculum, tuple[str, ...] | None]:
    """The curriculum of ``curriculum_json`` with the user's choices applied, and the rules kept (None: all).

    rules: ``ALL_RULES`` or comma-separated rule names (their magnitudes come from the curriculum).
    curriculum_mode: one of ``MODES``. families: comma-separated rule families to keep, "" for all.
    """
    if curriculum_mode not in MODES:
        raise ValueError(f"curriculum_mode: expected one of {', '.join(MODES)}, received {curriculum_mode!r}")
    if not isinstance(curriculum_json, str) or not curriculum_json.strip():
        raise ValueError("curriculum_json: expected a curriculum as JSON (see the default), received an empty text")
    try:
        curriculum = Curriculum.from_json(curriculum_json)
    except CurriculumError as error:
        raise ValueError(f"curriculum_json: {error}") from None
    chosen = None
    if not (isinstance(rules, str) and rules.strip().lower() == ALL_RULES):
        chosen = parse_names(rules, "rules", list(RULES))
        if chosen is None:
            raise ValueError(f"rules: expected {ALL_RULES!r} or comma-separated rule names among "
                             f"{', '.join(RULES)}, received {rules!r}")
        curriculum = keep_rules(curriculum, chosen)
    kept_families = parse_names(families, "families", FAMILIES)
    curriculum = curriculum.with_mode(curriculum_mode)
    if kept_families is not None:
        try:
            curriculum = curriculum.only_families(kept_families)
        except CurriculumError as error:
            raise ValueError(f"families: {error}") from None
    return curriculum, chosen
