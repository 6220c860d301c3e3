"""How a queued prompt went, as the server tells it: the websocket's messages (``PromptWatch``, which also drives the
progress display) and the prompt's ``/history`` entry (``outcome_from_history``) both end in an ``Outcome``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .report import ProgressDisplay


@dataclass
class Outcome:
    status: str  # "success", "error" or "interrupted"
    details: dict = field(default_factory=dict)  # the execution_error / execution_interrupted message data
    outputs: dict[str, dict] = field(default_factory=dict)  # node id -> its UI output ({"images": [...], ...})


class PromptWatch:
    """What the websocket has said about one prompt so far."""

    def __init__(self, prompt_id: str, display: ProgressDisplay, note=lambda text: None):
        self.prompt_id = prompt_id
        self.display = display
        self.note = note
        self.status: str | None = None
        self.details: dict = {}
        self.outputs: dict[str, dict] = {}
        self.warned_progress = False

    def handle(self, message: dict) -> bool:
        """Take one message; True when the prompt is over."""
        kind = message.get("type")
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        if "prompt_id" in data and str(data["prompt_id"]) != self.prompt_id:
            return False  # another client's prompt (interruptions are broadcast)
        if kind == "executing":
            if data.get("node") is None:
                return "prompt_id" in data  # the end of our prompt (a bare one is a reconnect greeting)
            self.display.start(str(data["node"]))
        elif kind == "progress":
            value, maximum = data.get("value", 0), data.get("max", 0)
            if _is_count(value) and _is_count(maximum):
                if data.get("node") is not None:
                    self.display.progress(str(data["node"]), value, maximum)
            elif not self.warned_progress:  # only the bar depends on it: say so once, and keep following
                self.warned_progress = True
                self.note(f"warning: ignoring progress messages the server sends with a 'value' and 'max' that are "
                          f"not numbers >= 0 (got value {value!r}, max {maximum!r})")
        elif kind == "executed":
            node = str(data.get("node"))
            if isinstance(data.get("output"), dict):
                self.outputs[node] = data["output"]
            self.display.executed(node)
        elif kind == "execution_cached":
            nodes = data.get("nodes")
            self.display.cached([str(n) for n in nodes] if isinstance(nodes, list) else [])
        elif kind == "execution_success":
            self.status = "success"
        elif kind == "execution_error":
            self.status, self.details = "error", data
        elif kind == "execution_interrupted":
            self.status, self.details = "interrupted", data
        return False


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def outcome_from_history(entry: dict) -> Outcome:
    """How a finished prompt ended, from its ``/history`` entry (shape checked by ``ComfyClient.history``)."""
    status = entry.get("status") or {}
    outputs = entry.get("outputs") or {}
    messages = status.get("messages") or []
    for event, data in (m for m in messages if isinstance(m, (list, tuple)) and len(m) == 2):
        if event in ("execution_error", "execution_interrupted"):
            return Outcome("error" if event == "execution_error" else "interrupted",
                           data if isinstance(data, dict) else {"exception_message": str(data)}, outputs)
    if status.get("status_str") == "error":
        return Outcome("error", {"exception_message": "the server reports an error but gave no details"}, outputs)
    return Outcome("success", {}, outputs)

