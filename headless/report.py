"""What the runner tells the user on the terminal: a readable rejection (``POST /prompt`` 400) and execution error,
a node's label (id, class and title), and the progress display (a line per started node, a tqdm bar per node that
reports progress). Everything goes to the stream it is given (stderr in the runner)."""

from __future__ import annotations

from typing import Any, TextIO


def format_rejection(body: Any, prompt: dict) -> str:
    """A readable message for a 400 from ``POST /prompt``: the error, then one line per node error and input."""
    if not isinstance(body, dict):
        return f"error: the server rejected the prompt: {str(body)[:1000]}"
    error = body.get("error") if isinstance(body.get("error"), dict) else {"message": str(body.get("error"))}
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), dict) else {}
    lines = [f"error: the server rejected the prompt: {error.get('message') or error.get('type') or 'invalid prompt'}"]
    if not node_errors and error.get("details"):
        lines[0] += f" ({error['details']})"
    for node_id, entry in node_errors.items():
        entry = entry if isinstance(entry, dict) else {}
        label = node_label(prompt, str(node_id), entry.get("class_type"))
        for item in entry.get("errors") or []:
            item = item if isinstance(item, dict) else {"message": str(item)}
            input_name = (item.get("extra_info") or {}).get("input_name")
            where = f"node {label}" + (f", input {input_name!r}" if input_name else "")
            details = str(item.get("details") or "")
            text = item.get("message") or item.get("type") or "invalid"
            if details and details != input_name:
                text += f" ({details[:300]}{'…' if len(details) > 300 else ''})"
            lines.append(f"  {where}: {text}")
    return "\n".join(lines)


def format_execution_error(details: dict, prompt: dict) -> str:
    """A readable message for an ``execution_error``: node id, class and the exception, then the server's
    traceback."""
    node_id = details.get("node_id")
    label = node_label(prompt, str(node_id), details.get("node_type")) if node_id is not None else "?"
    exception = details.get("exception_type")
    message = details.get("exception_message") or "unknown error"
    lines = []
    traceback = details.get("traceback")
    if isinstance(traceback, list) and traceback:  # first, so that the summary is the last thing on the screen
        lines.append("server traceback:")
        lines += ["  " + str(line).rstrip("\n").replace("\n", "\n  ") for line in traceback]
    lines.append(f"error: node {label} failed: {f'{exception}: ' if exception else ''}{str(message).strip()}")
    return "\n".join(lines)


def node_label(prompt: dict, node_id: Any, class_type: str | None = None) -> str:
    """How messages name a node: ``id (class, 'title')``, the title left out when it is the class."""
    node = prompt.get(str(node_id)) if isinstance(prompt, dict) else None
    class_type = class_type or (node or {}).get("class_type")
    if not class_type:  # a node the server made up (an expanded node group) or one the prompt lacks
        return str(node_id)
    title = ((node or {}).get("_meta") or {}).get("title")
    return f"{node_id} ({class_type}{f', {title!r}' if title and title != class_type else ''})"


class ProgressDisplay:
    """One tqdm bar per node that reports progress; a line when a node starts."""

    def __init__(self, prompt: dict, stream: TextIO, enabled: bool = True):
        self.prompt = prompt
        self.stream = stream
        self.enabled = enabled
        self.bar = None
        self.bar_node: str | None = None

    def start(self, node: str) -> None:
        self._close_bar()
        self._write(f"running node {node_label(self.prompt, node)}")

    def progress(self, node: str, value: float, maximum: float) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar_node != node:
            self._close_bar()
            class_type = (self.prompt.get(node) or {}).get("class_type")
            self.bar = tqdm(total=maximum or None, desc=f"node {node}" + (f" {class_type}" if class_type else ""),
                            unit="step", file=self.stream, leave=True, dynamic_ncols=True, mininterval=0.2)
            self.bar_node = node
        if maximum and self.bar.total != maximum:
            self.bar.total = maximum
        self.bar.n = value
        self.bar.refresh()

    def executed(self, node: str) -> None:
        if self.bar_node == node:
            self._close_bar()

    def cached(self, nodes: list[str]) -> None:
        if nodes:
            self._write(f"cached (not run again): {', '.join(nodes)}")

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.bar_node = None, None

    def _write(self, text: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        tqdm.write(text, file=self.stream)
