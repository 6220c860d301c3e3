"""``--set NODE.INPUT=VALUE``: change one input of an API-format prompt before it is queued.

NODE is a node id ("4") or a node title (``_meta.title``, e.g. "KSampler" or "SyncAV SyncCFG Sampler"); INPUT is an
input name. VALUE is read as JSON when it parses ("7", "2.5", "true", '"text"', '["3", 0]' for a link) and is
taken as a plain string otherwise ("a red ball").
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Iterable


class OverrideError(ValueError):
    """A --set names a node or input the prompt does not have, or is not NODE.INPUT=VALUE."""


@dataclass(frozen=True)
class Override:
    node: str  # id or title, as written
    input_name: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> "Override":
        target, sep, raw_value = text.partition("=")
        node, dot, input_name = target.rpartition(".")  # titles may contain dots, input names do not
        if not sep or not dot or not node or not input_name:
            raise OverrideError(f"--set {text!r}: expected NODE.INPUT=VALUE such as 4.seed=7 or "
                                "\"KSampler.steps=20\"")
        try:
            value = json.loads(raw_value)
        except ValueError:
            value = raw_value
        return cls(node.strip(), input_name.strip(), value)


def apply_overrides(prompt: dict, overrides: Iterable[Override], object_info: dict | None = None) -> dict:
    """A copy of ``prompt`` with each override applied. An input is known when the node already has it, or when
    ``object_info`` (the server's, if given) declares it for the node's class."""
    prompt = copy.deepcopy(prompt)
    for override in overrides:
        node_id = _find_node(prompt, override.node)
        node = prompt[node_id]
        inputs = node.setdefault("inputs", {})
        known = list(inputs)
        declared = ((object_info or {}).get(node.get("class_type")) or {}).get("input") or {}
        for section in ("required", "optional"):
            known += [name for name in declared.get(section) or {} if name not in known]
        if override.input_name not in known:
            raise OverrideError(f"--set {override.node}.{override.input_name}: node {_describe(node_id, node)} has no "
                                f"input {override.input_name!r}; its inputs are: {', '.join(known) or '(none)'}")
        inputs[override.input_name] = override.value
    return prompt


def _find_node(prompt: dict, ref: str) -> str:
    if ref in prompt:
        return ref
    by_title = [node_id for node_id, node in prompt.items() if _title(node) == ref]
    if len(by_title) == 1:
        return by_title[0]
    if len(by_title) > 1:
        raise OverrideError(f"--set {ref}.…: {len(by_title)} nodes have the title {ref!r} (ids "
                            f"{', '.join(by_title)}); name the node by its id")
    choices = "; ".join(_describe(node_id, node) for node_id, node in prompt.items())
    raise OverrideError(f"--set {ref}.…: no node has the id or title {ref!r}; the nodes are: {choices}")


def _title(node: dict) -> str | None:
    meta = node.get("_meta")
    return meta.get("title") if isinstance(meta, dict) else None


def _describe(node_id: str, node: dict) -> str:
    title = _title(node)
    class_type = node.get("class_type")
    return f"{node_id} ({class_type}{f', {title!r}' if title and title != class_type else ''})"
