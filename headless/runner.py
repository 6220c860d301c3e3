"""Run a workflow on a ComfyUI server from the command line: queue it, follow it, fetch what it wrote.

``python -m comfyui_syncav run WORKFLOW.json --server http://127.0.0.1:8188 --set 4.seed=7 --out results/``

1. The workflow (API format, or UI format converted with the server's ``/object_info``) gets its ``--set`` overrides.
2. A websocket is opened *before* the prompt is queued (the server sends a client's messages only to its open
   socket, so nothing is missed), then ``POST /prompt``. A 400 answer is printed node by node.
3. The websocket's messages drive one progress bar per node; ``execution_error`` / ``execution_interrupted`` /
   ``execution_success`` tell how it ended, ``executing`` with no node says it is over.
4. A dropped connection is re-opened with exponential backoff; after each reconnect ``/history/<prompt_id>`` tells
   whether the prompt finished meanwhile, and ``/queue`` whether the server still has it at all.
5. Output files (from ``executed`` messages and ``/history``) are downloaded through ``/view`` into ``--out``,
   keeping the server's subfolders; each written path is printed on stdout, everything else goes to stderr.

The exit code says how it went: see the EXIT_* constants.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, TextIO

from .client import ComfyClient, EventStream, PromptRejected, ServerError, ServerUnavailable
from .overrides import Override, apply_overrides
from .ui_to_api import is_ui_format, ui_to_api

EXIT_OK = 0
EXIT_FAILED = 1  # the server rejected the prompt, or a node raised
EXIT_BAD_INPUT = 2  # unreadable workflow, bad --set (the code the other commands use for bad input)
EXIT_SERVER_GONE = 3  # the server could not be reached, or was lost for good, or forgot the prompt
EXIT_INTERRUPTED = 4  # the prompt was interrupted (Cancel in the browser, POST /interrupt, Ctrl-C here)
EXIT_TIMEOUT = 5  # --timeout passed first; the prompt was interrupted on the server


@dataclass
class Outcome:
    status: str  # "success", "error" or "interrupted"
    details: dict = field(default_factory=dict)  # the execution_error / execution_interrupted message data
    outputs: dict[str, dict] = field(default_factory=dict)  # node id -> its UI output ({"images": [...], ...})


class _ServerGone(Exception):
    pass


class _TimedOut(Exception):
    pass


def run_workflow(workflow: str | Path | dict, server_url: str = "http://127.0.0.1:8188",
                 overrides: Iterable[str | Override] = (), out_dir: str | Path = ".",
                 timeout_seconds: float | None = None, *, reconnect_attempts: int = 5,
                 reconnect_backoff_seconds: float = 1.0, idle_check_seconds: float = 30.0, progress: bool = True,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run ``workflow`` (a path to a JSON file, or the parsed dict) on the server; returns an EXIT_* code.

    ``timeout_seconds`` bounds the whole run from queueing to the end of execution (None: no limit).
    ``reconnect_attempts`` / ``reconnect_backoff_seconds``: how often and how patiently (doubling) a lost connection
    is re-opened. ``idle_check_seconds``: with no message for that long, ``/history`` is asked whether it is over.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        loaded = load_workflow(workflow)
        parsed = [o if isinstance(o, Override) else Override.parse(o) for o in overrides]
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError(f"--timeout: expected a positive number of seconds, got {timeout_seconds}")
        client = ComfyClient(server_url)
    except ValueError as error:
        print(f"error: {error}", file=err)
        return EXIT_BAD_INPUT
    run = _Run(client, loaded, parsed, Path(out_dir), timeout_seconds, reconnect_attempts, reconnect_backoff_seconds,
               idle_check_seconds, progress, out, err)
    try:
        return asyncio.run(run.main())
    except KeyboardInterrupt:
        print("stopped by the user" + (f"; asked the server to interrupt prompt {run.prompt_id}" if run.interrupt_sent
                                       else ""), file=err)
        return EXIT_INTERRUPTED


def load_workflow(workflow: str | Path | dict) -> dict:
    """The workflow as a dict: UI format as saved by the editor, or an API-format prompt (optionally wrapped as
    ``{"prompt": {...}}``, the body of ``POST /prompt``)."""
    if isinstance(workflow, dict):
        data, where = workflow, "workflow"
    else:
        where = str(workflow)
        try:
            data = json.loads(Path(workflow).read_text(encoding="utf-8"))
        except OSError as error:
            raise ValueError(f"{where}: cannot read the workflow ({error.strerror or error})") from None
        except ValueError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from None
    if is_ui_format(data):
        return data
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{where}: expected a ComfyUI workflow (UI format with 'nodes' and 'links', or API format "
                         f"{{node_id: {{'class_type', 'inputs'}}}}), got {type(data).__name__}")
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise ValueError(f"{where}: API-format node {node_id!r} should be an object with 'class_type' and "
                             f"'inputs', got {json.dumps(node)[:120]}")
    return data


class _Run:
    def __init__(self, client: ComfyClient, workflow: dict, overrides: list[Override], out_dir: Path,
                 timeout_seconds: float | None, reconnect_attempts: int, reconnect_backoff_seconds: float,
                 idle_check_seconds: float, progress: bool, out: TextIO, err: TextIO):
        self.client = client
        self.workflow = workflow
        self.overrides = overrides
        self.out_dir = out_dir
        self.timeout_seconds = timeout_seconds
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff_seconds = reconnect_backoff_seconds
        self.idle_check_seconds = idle_check_seconds
        self.progress = progress
        self.out = out
        self.err = err
        self.client_id = uuid.uuid4().hex
        self.prompt_id: str | None = None
        self.events: EventStream | None = None
        self.interrupt_sent = False
        self.deadline: float | None = None

    async def main(self) -> int:
        async with self.client:
            try:
                prompt = await self._prepare()
            except ValueError as error:
                return self._fail(EXIT_BAD_INPUT, f"error: {error}")
            except (ServerUnavailable, ServerError) as error:
                return self._fail(EXIT_SERVER_GONE, f"error: cannot reach ComfyUI at {self.client.base_url} "
                                                    f"({error}); is the server running?")
            try:
                self.events = await self.client.open_events(self.client_id)
                started = time.monotonic()
                self.deadline = None if self.timeout_seconds is None else started + self.timeout_seconds
                answer = await self.client.submit(prompt, self.client_id)
            except PromptRejected as rejected:
                return self._fail(EXIT_FAILED, format_rejection(rejected.body, prompt))
            except (ServerUnavailable, ServerError) as error:
                return self._fail(EXIT_SERVER_GONE, f"error: cannot reach ComfyUI at {self.client.base_url} "
                                                    f"({error}); is the server running?")
            self.prompt_id = str(answer["prompt_id"])
            self._note(f"queued prompt {self.prompt_id} on {self.client.base_url} ({len(prompt)} nodes)")
            display = ProgressDisplay(prompt, self.err, enabled=self.progress)
            try:
                outcome = await self._follow(display)
            except _TimedOut:
                display.close()
                await self._interrupt_quietly()
                return self._fail(EXIT_TIMEOUT, f"error: timed out after {self.timeout_seconds:g} s; " + (
                    f"asked the server to interrupt prompt {self.prompt_id}" if self.interrupt_sent
                    else f"could not ask the server to interrupt prompt {self.prompt_id}"))
            except _ServerGone as gone:
                display.close()
                return self._fail(EXIT_SERVER_GONE, f"error: {gone}")
            except asyncio.CancelledError:  # Ctrl-C: do not leave the job running on the server
                display.close()
                await asyncio.shield(self._interrupt_quietly())
                raise
            finally:
                await self.events.close()
            display.close()
            seconds = time.monotonic() - started
            if outcome.status == "success":
                self._note(f"prompt {self.prompt_id} finished in {seconds:.1f} s")
            elif outcome.status == "interrupted":
                node = outcome.details.get("node_id")
                self._note(f"error: prompt {self.prompt_id} was interrupted"
                           + (f" at node {_label(prompt, node, outcome.details.get('node_type'))}" if node else ""))
            else:
                self._note(format_execution_error(outcome.details, prompt))
            code = await self._download(outcome.outputs, prompt, expect_files=outcome.status == "success")
            if outcome.status == "interrupted":
                return EXIT_INTERRUPTED
            if outcome.status != "success":
                return EXIT_FAILED
            return code

    async def _prepare(self) -> dict:
        object_info = None
        if is_ui_format(self.workflow):
            object_info = await self.client.object_info()
            prompt = ui_to_api(self.workflow, object_info)
        else:
            prompt = self.workflow
        if self.overrides:
            if object_info is None:  # so that --set may name an optional input the prompt leaves out
                object_info = await self.client.object_info()
            prompt = apply_overrides(prompt, self.overrides, object_info)
        return prompt

    # ---- following the execution --------------------------------------------------------------------------

    async def _follow(self, display: "ProgressDisplay") -> Outcome:
        watch = _Watch(self.prompt_id, display)
        while True:
            wait = self.idle_check_seconds if watch.status is None else min(self.idle_check_seconds, 2.0)
            try:
                message = await self.events.next(self._bounded(wait))
            except ServerUnavailable as lost:
                display.close()
                await self.events.close()
                self.events, finished = await self._reconnect(lost)
                if finished is not None:
                    return self._merge(watch, finished)
                continue
            if message is None:
                self._check_deadline()
                # Quiet for a while (a long node, or the end was missed): ask the history whether it is over.
                try:
                    entry = await self.client.history(self.prompt_id)
                except (ServerUnavailable, ServerError):
                    entry = None
                if entry is not None:  # an entry appears only once the prompt is over
                    return self._merge(watch, outcome_from_history(entry))
                continue
            if watch.handle(message):
                break
        # The end came through the websocket; the history (written just before that message) adds the outputs of
        # nodes served from the cache and settles the status if no success/error message was seen.
        entry = await self._final_history()
        if entry is not None:
            return self._merge(watch, outcome_from_history(entry))
        return Outcome(watch.status or "success", watch.details, dict(watch.outputs))

    async def _reconnect(self, lost: Exception) -> tuple[EventStream, Outcome | None]:
        self._note(f"lost the connection to the server ({lost}); reconnecting")
        delay = self.reconnect_backoff_seconds
        last_error: Exception = lost
        started = time.monotonic()
        for attempt in range(1, self.reconnect_attempts + 1):
            await asyncio.sleep(self._bounded(delay) or 0.0)
            self._check_deadline()
            delay *= 2
            try:
                events = await self.client.open_events(self.client_id)
                entry = await self.client.history(self.prompt_id)
                if entry is None and not await self._still_queued():
                    entry = await self.client.history(self.prompt_id)  # it may have ended between the two reads
                    if entry is None:
                        await events.close()
                        raise _ServerGone(f"the server at {self.client.base_url} no longer knows prompt "
                                          f"{self.prompt_id} (it was restarted?)")
            except (ServerUnavailable, ServerError) as error:
                last_error = error
                self._note(f"reconnect attempt {attempt}/{self.reconnect_attempts} failed: {error}")
                continue
            if entry is not None:
                self._note("reconnected; the prompt ended while the connection was down")
                return events, outcome_from_history(entry)
            self._note("reconnected; the prompt is still queued or running")
            return events, None
        raise _ServerGone(f"lost the connection to ComfyUI at {self.client.base_url} and could not reconnect "
                          f"({self.reconnect_attempts} attempts over {time.monotonic() - started:.1f} s; last error: "
                          f"{last_error})")

    async def _still_queued(self) -> bool:
        queue = await self.client.queue()
        items = (queue or {}).get("queue_running", []) + (queue or {}).get("queue_pending", [])
        return any(len(item) > 1 and str(item[1]) == self.prompt_id for item in items)

    async def _final_history(self) -> dict | None:
        for attempt in range(5):
            try:
                entry = await self.client.history(self.prompt_id)
            except (ServerUnavailable, ServerError):
                return None
            if entry is not None:
                return entry
            await asyncio.sleep(0.1 * (attempt + 1))
        return None

    def _merge(self, watch: "_Watch", finished: Outcome) -> Outcome:
        outputs = dict(watch.outputs)
        outputs.update(finished.outputs)
        details = finished.details or watch.details
        return Outcome(finished.status, details, outputs)

    # ---- outputs ------------------------------------------------------------------------------------------

    async def _download(self, outputs: dict[str, dict], prompt: dict, expect_files: bool) -> int:
        """Fetch every output file (also after a failure: what the nodes that ran wrote is still useful)."""
        refs = list(file_refs(outputs))
        if not refs:
            if expect_files:
                self._note("the workflow produced no files")
            return EXIT_OK
        code = EXIT_OK
        written: set[Path] = set()
        for node_id, ref in refs:
            local = local_path(self.out_dir, ref)
            if local is None:
                self._note(f"warning: skipping output {ref!r} of node {node_id}: unsafe file name")
                continue
            if local in written:
                continue
            try:
                size = await self.client.download(ref, str(local))
            except (ServerUnavailable, ServerError) as error:
                self._note(f"error: could not download {ref.get('filename')!r} of node "
                           f"{_label(prompt, node_id)}: {error}")
                code = EXIT_SERVER_GONE if isinstance(error, ServerUnavailable) else EXIT_FAILED
                continue
            written.add(local)
            print(f"wrote {local} ({size} bytes, node {_label(prompt, node_id)})", file=self.out, flush=True)
        return code

    # ---- small helpers ------------------------------------------------------------------------------------

    def _bounded(self, seconds: float | None) -> float | None:
        """``seconds`` cut to what is left before the deadline; raises _TimedOut when nothing is left."""
        if self.deadline is None:
            return seconds
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _TimedOut()
        return remaining if seconds is None else min(seconds, remaining)

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _TimedOut()

    async def _interrupt_quietly(self) -> None:
        if self.prompt_id is None:
            return
        try:
            await asyncio.wait_for(self.client.interrupt(self.prompt_id), 5.0)
            self.interrupt_sent = True
        except (ServerUnavailable, ServerError, asyncio.TimeoutError):
            pass

    def _note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def _fail(self, code: int, text: str) -> int:
        self._note(text)
        return code


class _Watch:
    """What the websocket has said about one prompt so far."""

    def __init__(self, prompt_id: str, display: "ProgressDisplay"):
        self.prompt_id = prompt_id
        self.display = display
        self.status: str | None = None
        self.details: dict = {}
        self.outputs: dict[str, dict] = {}

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
            if data.get("node") is not None:
                self.display.progress(str(data["node"]), data.get("value", 0), data.get("max", 0))
        elif kind == "executed":
            node = str(data.get("node"))
            if isinstance(data.get("output"), dict):
                self.outputs[node] = data["output"]
            self.display.executed(node)
        elif kind == "execution_cached":
            self.display.cached([str(n) for n in data.get("nodes") or []])
        elif kind == "execution_success":
            self.status = "success"
        elif kind == "execution_error":
            self.status, self.details = "error", data
        elif kind == "execution_interrupted":
            self.status, self.details = "interrupted", data
        return False


def outcome_from_history(entry: dict) -> Outcome:
    """How a finished prompt ended, from its ``/history`` entry."""
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    for event, data in (m for m in messages if isinstance(m, (list, tuple)) and len(m) == 2):
        if event == "execution_error":
            return Outcome("error", data, entry.get("outputs") or {})
        if event == "execution_interrupted":
            return Outcome("interrupted", data, entry.get("outputs") or {})
    if status.get("status_str") == "error":
        return Outcome("error", {"exception_message": "the server reports an error but gave no details"},
                       entry.get("outputs") or {})
    return Outcome("success", {}, entry.get("outputs") or {})


def file_refs(outputs: dict[str, dict]) -> Iterable[tuple[str, dict]]:
    """``(node_id, {"filename", "subfolder", "type"})`` for every file in the nodes' UI outputs, in node order."""
    seen = set()
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for items in ui.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    key = (item.get("type") or "output", item.get("subfolder") or "", item["filename"])
                    if key not in seen:
                        seen.add(key)
                        yield node_id, item


def local_path(out_dir: Path, ref: dict) -> Path | None:
    """Where a server file goes under ``out_dir`` (its subfolder kept); None for a name that would escape it."""
    subfolder = str(ref.get("subfolder") or "").replace("\\", "/")
    parts = [p for p in PurePosixPath(subfolder).parts if p not in ("", ".")] + [str(ref["filename"])]
    if subfolder.startswith("/") or any(p == ".." or "/" in p or "\\" in p or p.startswith("/") for p in parts[:-1]) \
            or parts[-1] in ("", ".", "..") or "/" in parts[-1] or "\\" in parts[-1]:
        return None
    return out_dir.joinpath(*parts)


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
        label = _label(prompt, str(node_id), entry.get("class_type"))
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
    label = _label(prompt, str(node_id), details.get("node_type")) if node_id is not None else "?"
    exception = details.get("exception_type")
    message = details.get("exception_message") or "unknown error"
    lines = []
    traceback = details.get("traceback")
    if isinstance(traceback, list) and traceback:  # first, so that the summary is the last thing on the screen
        lines.append("server traceback:")
        lines += ["  " + line.rstrip("\n").replace("\n", "\n  ") for line in traceback]
    lines.append(f"error: node {label} failed: {f'{exception}: ' if exception else ''}{str(message).strip()}")
    return "\n".join(lines)


def _label(prompt: dict, node_id: Any, class_type: str | None = None) -> str:
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
        self._write(f"running node {_label(self.prompt, node)}")

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
