"""Run a workflow on a ComfyUI server from the command line: queue it, follow it, fetch what it wrote.

``python -m comfyui_syncav run WORKFLOW.json --server http://127.0.0.1:8188 --set 4.seed=7 --out results/``

1. The workflow (API format, or UI format converted with the server's ``/object_info``) gets its ``--set`` overrides.
2. A websocket is opened *before* the prompt is queued (the server sends a client's messages only to its open
   socket, so nothing is missed), then ``POST /prompt``. A 400 answer is printed node by node.
3. The websocket's messages drive one progress bar per node; ``execution_error`` / ``execution_interrupted`` /
   ``execution_success`` tell how it ended, ``executing`` with no node says it is over.
4. A dropped connection is re-opened with exponential backoff; after each reconnect ``/history/<prompt_id>`` tells
   whether the prompt finished meanwhile, and ``/queue`` whether the server still has it at all.
5. Output files (from ``executed`` messages and ``/history``) are streamed through ``/view`` into ``--out``,
   keeping the server's subfolders (a name that would leave ``--out`` is refused); each written path is printed on
   stdout, everything else goes to stderr.

Every network operation is bounded (``request_timeout_seconds`` each, ``--timeout`` for the whole run from its first
request), and whatever is checkable up front (arguments, that ``--out`` is writable) is checked before queueing.

The exit code says how it went: see the EXIT_* constants.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Awaitable, Iterable, TextIO

from ..model.atomic_files import check_output_path
from .client import (ComfyClient, EventStream, LocalWriteError, PromptRejected, ServerError, ServerUnavailable,
                     UnexpectedReply, check_seconds)
from .overrides import Override, apply_overrides
from .ui_to_api import is_ui_format, ui_to_api

EXIT_OK = 0
EXIT_FAILED = 1  # the server rejected the prompt, a node raised, or an output could not be fetched (HTTP error,
#                  a file name that would not stay inside --out)
EXIT_BAD_INPUT = 2  # unreadable workflow, bad --set / --timeout / --server, an --out that cannot be written (checked
#                     before queueing; a disk that fills up while downloading too): the code other commands use
EXIT_SERVER_GONE = 3  # the server could not be reached, was lost for good, forgot the prompt, or answered in a way
#                       ComfyUI does not (a queued prompt is then interrupted)
EXIT_INTERRUPTED = 4  # the prompt was interrupted (Cancel in the browser, POST /interrupt, Ctrl-C here)
EXIT_TIMEOUT = 5  # --timeout (counted from the first request) passed first; a running prompt was interrupted


@dataclass
class Outcome:
    status: str  # "success", "error" or "interrupted"
    details: dict = field(default_factory=dict)  # the execution_error / execution_interrupted message data
    outputs: dict[str, dict] = field(default_factory=dict)  # node id -> its UI output ({"images": [...], ...})


class _ServerGone(Exception):
    def __init__(self, message: str, forgotten: bool = False):
        super().__init__(message)
        self.forgotten = forgotten  # the server no longer has the prompt: nothing to interrupt


class _TimedOut(Exception):
    pass


def run_workflow(workflow: str | Path | dict, server_url: str = "http://127.0.0.1:8188",
                 overrides: Iterable[str | Override] = (), out_dir: str | Path = ".",
                 timeout_seconds: float | None = None, *, reconnect_attempts: int = 5,
                 reconnect_backoff_seconds: float = 1.0, idle_check_seconds: float = 30.0,
                 request_timeout_seconds: float = 60.0, progress: bool = True,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run ``workflow`` (a path to a JSON file, or the parsed dict) on the server; returns an EXIT_* code.

    ``timeout_seconds`` bounds the whole run, from the first request to the last download (None or inf: no limit).
    ``reconnect_attempts`` / ``reconnect_backoff_seconds``: how often and how patiently (doubling) a lost connection
    is re-opened. ``idle_check_seconds``: with no message for that long, ``/history`` is asked whether it is over.
    ``request_timeout_seconds``: how long one request (or a download's pause between two reads) may wait for the
    server, also without ``timeout_seconds``.
    Everything that can be checked here (the workflow, ``--set``, the numbers, the URL, that ``out_dir`` is a folder
    this process can write in) is checked before anything is sent to the server.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        loaded = load_workflow(workflow)
        if isinstance(overrides, (str, Override)):
            raise ValueError(f"overrides: expected a list of NODE.INPUT=VALUE strings, got {overrides!r}")
        parsed = [o if isinstance(o, Override) else Override.parse(o) for o in overrides]
        timeout_seconds = check_seconds("--timeout", timeout_seconds, none_ok=True)
        check_seconds("reconnect_backoff_seconds", reconnect_backoff_seconds, zero_ok=True)
        check_seconds("idle_check_seconds", idle_check_seconds)
        if isinstance(reconnect_attempts, bool) or not isinstance(reconnect_attempts, int) or reconnect_attempts < 0:
            raise ValueError(f"reconnect_attempts: expected a whole number >= 0, got {reconnect_attempts!r}")
        client = ComfyClient(server_url, request_timeout_seconds)
        out_path = _check_out_dir(out_dir)
    except ValueError as error:
        print(f"error: {error}", file=err)
        return EXIT_BAD_INPUT
    run = _Run(client, loaded, parsed, out_path, timeout_seconds, reconnect_attempts, reconnect_backoff_seconds,
               idle_check_seconds, progress, out, err)
    try:
        return asyncio.run(run.main())
    except KeyboardInterrupt:
        print("stopped by the user" + (f"; asked the server to interrupt prompt {run.prompt_id}" if run.interrupt_sent
                                       else ""), file=err)
        return EXIT_INTERRUPTED


def _check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a folder this process can create and write in, checked before anything is queued: no server
    time is spent on outputs that could not be kept. The folder itself is made by the first download."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise LocalWriteError(f"--out: expected a folder path, got {out_dir!r}")
    if "\0" in os.fspath(out_dir):  # no file system takes it (and os.stat reports it as "does not exist")
        raise LocalWriteError(f"--out {os.fspath(out_dir)!r}: expected a folder path, got one with a NUL character")
    return check_output_path(out_dir, "--out", folder=True)


def load_workflow(workflow: str | Path | dict) -> dict:
    """The workflow as a dict: UI format as saved by the editor, or an API-format prompt (optionally wrapped as
    ``{"prompt": {...}}``, the body of ``POST /prompt``)."""
    if isinstance(workflow, dict):
        data, where = workflow, "workflow"
    elif not isinstance(workflow, (str, os.PathLike)) or not str(workflow):
        raise ValueError(f"workflow: expected a path to a workflow JSON file or its dict, got {workflow!r}")
    else:
        where = str(workflow)
        try:
            raw = Path(workflow).read_bytes()
        except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise ValueError(f"{where}: cannot read the workflow ({reason})") from None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than any workflow
            raise ValueError(f"{where}: not valid JSON ({error})") from None
    if is_ui_format(data):
        return data
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{where}: expected a ComfyUI workflow (UI format with 'nodes' and 'links', or API format "
                         f"{{node_id: {{'class_type', 'inputs'}}}}), got {type(data).__name__}")
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not node["class_type"] \
                or not isinstance(node.get("inputs", {}), dict):
            raise ValueError(f"{where}: API-format node {node_id!r} should be an object with 'class_type' and "
                             f"'inputs', got {json.dumps(node, default=repr)[:120]}")
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
        self.started = 0.0
        self.stage = "starting"  # what the run was doing, for a timeout's message
        self.reconnect_failures = 0  # reconnects in a row through which no message came yet
        self.lost_since = 0.0  # when the connection was first lost in the current run of reconnects

    async def main(self) -> int:
        self.started = time.monotonic()  # --timeout counts from here: every request, the handshake included
        self.deadline = None if self.timeout_seconds is None else self.started + self.timeout_seconds
        async with self.client:
            try:
                return await self._main()
            except _TimedOut:
                return await self._timed_out()
            finally:
                if self.events is not None:
                    await self.events.close()

    async def _main(self) -> int:
        prompt = self.workflow
        try:
            prompt = await self._prepare()
            self.stage = "opening the websocket"
            self.events = await self._net(self.client.open_events(self.client_id))
            self.stage = "queueing the prompt"
            answer = await self._net(self.client.submit(prompt, self.client_id))
        except ValueError as error:  # the workflow does not fit the server's nodes, a --set names no input
            return self._fail(EXIT_BAD_INPUT, f"error: {error}")
        except PromptRejected as rejected:
            return self._fail(EXIT_FAILED, format_rejection(rejected.body, prompt))
        except ServerUnavailable as error:
            return self._fail(EXIT_SERVER_GONE, f"error: cannot reach ComfyUI at {self.client.base_url} "
                                                f"({error}); is the server running?")
        except ServerError as error:
            return self._fail(EXIT_SERVER_GONE, self._server_said(error) + "; nothing was queued")
        self.prompt_id = answer["prompt_id"]
        self._note(f"queued prompt {self.prompt_id} on {self.client.base_url} ({len(prompt)} nodes)")
        self.stage = f"following prompt {self.prompt_id}"
        display = ProgressDisplay(prompt, self.err, enabled=self.progress)
        try:
            outcome = await self._follow(display)
        except _ServerGone as gone:
            stopped = "" if gone.forgotten else await self._stop_prompt()
            return self._fail(EXIT_SERVER_GONE, f"error: {gone}{stopped}")
        except ServerError as error:  # it answered something ComfyUI never sends: do not leave the prompt running
            return self._fail(EXIT_SERVER_GONE, self._server_said(error) + await self._stop_prompt())
        except asyncio.CancelledError:  # Ctrl-C: do not leave the job running on the server
            display.close()
            await asyncio.shield(self._interrupt_quietly())
            raise
        except _TimedOut:
            raise
        except Exception as error:  # a bug here must not leave the prompt running on the server either
            return self._fail(EXIT_SERVER_GONE, f"error: unexpected failure while following prompt "
                                                f"{self.prompt_id} ({type(error).__name__}: {error})"
                                                + await self._stop_prompt())
        finally:
            display.close()
        seconds = time.monotonic() - self.started
        if outcome.status == "success":
            self._note(f"prompt {self.prompt_id} finished in {seconds:.1f} s")
        elif outcome.status == "interrupted":
            node = outcome.details.get("node_id")
            self._note(f"error: prompt {self.prompt_id} was interrupted"
                       + (f" at node {_label(prompt, node, outcome.details.get('node_type'))}" if node else ""))
        else:
            self._note(format_execution_error(outcome.details, prompt))
        self.stage = f"downloading the outputs of prompt {self.prompt_id} (it had finished)"
        code = await self._download(outcome.outputs, prompt, expect_files=outcome.status == "success")
        if outcome.status == "interrupted":
            return EXIT_INTERRUPTED
        if outcome.status != "success":
            return EXIT_FAILED
        return code

    async def _prepare(self) -> dict:
        object_info = None
        if is_ui_format(self.workflow) or self.overrides:
            # UI format needs the widget order, --set the optional inputs a prompt may leave out
            self.stage = "asking the server for its node definitions (GET /object_info)"
            object_info = await self._net(self.client.object_info())
            nodes = self.workflow["nodes"] if is_ui_format(self.workflow) else self.workflow.values()
            key = "type" if is_ui_format(self.workflow) else "class_type"
            self.client.check_node_definitions(object_info, {n.get(key) for n in nodes if isinstance(n, dict)
                                                             and isinstance(n.get(key), str)})
        prompt = ui_to_api(self.workflow, object_info) if is_ui_format(self.workflow) else self.workflow
        if self.overrides:
            prompt = apply_overrides(prompt, self.overrides, object_info)
        return prompt

    async def _timed_out(self) -> int:
        if self.prompt_id is None:
            tail = "the server may have queued the prompt" if self.stage == "queueing the prompt" \
                else "no prompt was queued"
        elif self.stage.startswith("downloading"):
            tail = "the files written so far are kept"
        else:
            tail = await self._stop_prompt()
            tail = tail[2:] if tail else f"could not ask the server to interrupt prompt {self.prompt_id}"
        return self._fail(EXIT_TIMEOUT, f"error: timed out after {self.timeout_seconds:g} s (--timeout) while "
                                        f"{self.stage}; {tail}")

    def _server_said(self, error: ServerError) -> str:
        if isinstance(error, UnexpectedReply):
            return f"error: the server at {self.client.base_url} does not answer as ComfyUI does: {error}"
        return f"error: ComfyUI at {self.client.base_url} answered with an error: {error}"

    async def _stop_prompt(self) -> str:
        """Interrupt the queued prompt (as far as the server still answers); what happened, for the message."""
        await self._interrupt_quietly()
        return f"; asked the server to interrupt prompt {self.prompt_id}" if self.interrupt_sent else ""

    async def _net(self, call: Awaitable[Any]) -> Any:
        """``await call`` within what is left of --timeout (the client bounds each call on its own as well)."""
        if self.deadline is None:
            return await call
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            if asyncio.iscoroutine(call):
                call.close()
            raise _TimedOut()
        try:
            return await asyncio.wait_for(call, remaining)
        except asyncio.TimeoutError:  # the client turns its own timeouts into ServerUnavailable: this is ours
            raise _TimedOut() from None

    # ---- following the execution --------------------------------------------------------------------------

    async def _follow(self, display: "ProgressDisplay") -> Outcome:
        watch = _Watch(self.prompt_id, display, self._note)
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
                    entry = await self._find_prompt()
                except UnexpectedReply:
                    raise
                except (ServerUnavailable, ServerError):  # the websocket is still up: ask again next time
                    entry = None
                if entry is not None:
                    return self._merge(watch, outcome_from_history(entry))
                continue
            self.reconnect_failures = 0  # messages come through: the connection works
            if watch.handle(message):
                break
        # The end came through the websocket; the history (written just before that message) adds the outputs of
        # nodes served from the cache and settles the status if no success/error message was seen.
        entry = await self._final_history()
        if entry is not None:
            return self._merge(watch, outcome_from_history(entry))
        self._note(f"warning: GET /history/{self.prompt_id} does not list the prompt the websocket says has ended; "
                   f"taking its outputs from the websocket messages")
        return Outcome(watch.status or "success", watch.details, dict(watch.outputs))

    async def _reconnect(self, lost: Exception) -> tuple[EventStream, Outcome | None]:
        """A new websocket, and the prompt's outcome if it ended while none was open. A reconnect counts as failed
        until a message comes through it, so a server that accepts and at once closes the socket is given up
        after ``reconnect_attempts`` like one that refuses."""
        self._note(f"lost the connection to the server ({lost}); reconnecting")
        last_error: Exception = lost
        if self.reconnect_failures == 0:
            self.lost_since = time.monotonic()
        while self.reconnect_failures < self.reconnect_attempts:
            self.reconnect_failures += 1
            attempt = self.reconnect_failures
            delay = self.reconnect_backoff_seconds * 2 ** (attempt - 1)
            await asyncio.sleep(self._bounded(delay) or 0.0)
            self._check_deadline()
            try:
                events = await self._net(self.client.open_events(self.client_id))
                try:
                    entry = await self._find_prompt()
                except BaseException:
                    await events.close()
                    raise
            except UnexpectedReply:
                raise
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
                          f"({self.reconnect_attempts} attempts over {time.monotonic() - self.lost_since:.1f} s; last "
                          f"error: {last_error})")

    async def _find_prompt(self) -> dict | None:
        """The prompt's history entry once it is over; None while the server has it queued or running. Raises
        _ServerGone when the server has it nowhere (it was restarted)."""
        entry = await self._net(self.client.history(self.prompt_id))
        if entry is None and self.prompt_id not in await self._net(self.client.queue()):
            entry = await self._net(self.client.history(self.prompt_id))  # it may have ended between the two reads
            if entry is None:
                raise _ServerGone(f"the server at {self.client.base_url} no longer knows prompt {self.prompt_id} "
                                  "(it was restarted?)", forgotten=True)
        return entry

    async def _final_history(self) -> dict | None:
        for attempt in range(4):
            try:
                entry = await self._net(self.client.history(self.prompt_id))
            except UnexpectedReply:
                raise
            except (ServerUnavailable, ServerError):
                return None
            if entry is not None:
                return entry
            await asyncio.sleep(self._bounded(0.05 * (attempt + 1)) or 0.0)
        return None

    def _merge(self, watch: "_Watch", finished: Outcome) -> Outcome:
        outputs = dict(watch.outputs)
        outputs.update(finished.outputs)
        details = finished.details or watch.details
        return Outcome(finished.status, details, outputs)

    # ---- outputs ------------------------------------------------------------------------------------------

    async def _download(self, outputs: dict[str, dict], prompt: dict, expect_files: bool) -> int:
        """Fetch every output file (also after a failure: what the nodes that ran wrote is still useful). The exit
        code is the first failure's: a local write error is bad --out, a broken connection the server's."""
        refs = list(file_refs(outputs))
        if not refs:
            if expect_files:
                self._note("the workflow produced no files")
            return EXIT_OK
        codes = []
        written: set[Path] = set()
        for node_id, ref in refs:
            try:
                local = local_path(self.out_dir, ref)
            except UnsafeFileName as unsafe:
                self._note(f"error: output of node {_label(prompt, node_id)}: {unsafe}; not written")
                codes.append(EXIT_FAILED)
                continue
            if local in written:
                continue
            try:
                size = await self._net(self.client.download(ref, str(local)))
            except LocalWriteError as error:
                self._note(f"error: --out {self.out_dir}: {error}")
                codes.append(EXIT_BAD_INPUT)
                continue
            except (ServerUnavailable, ServerError) as error:
                self._note(f"error: could not download {ref.get('filename')!r} of node "
                           f"{_label(prompt, node_id)}: {error}")
                codes.append(EXIT_SERVER_GONE if isinstance(error, ServerUnavailable) else EXIT_FAILED)
                continue
            written.add(local)
            print(f"wrote {local} ({size} bytes, node {_label(prompt, node_id)})", file=self.out, flush=True)
        return codes[0] if codes else EXIT_OK

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
            await asyncio.wait_for(self.client.interrupt(self.prompt_id),
                                   min(5.0, self.client.request_timeout_seconds))
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

    def __init__(self, prompt_id: str, display: "ProgressDisplay", note=lambda text: None):
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


def file_refs(outputs: dict[str, dict]) -> Iterable[tuple[str, dict]]:
    """``(node_id, {"filename", "subfolder", "type"})`` for every file in the nodes' UI outputs, in node order."""
    seen = set()
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for items in ui.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    key = repr((item.get("type") or "output", item.get("subfolder") or "", item["filename"]))
                    if key not in seen:
                        seen.add(key)
                        yield node_id, item


class UnsafeFileName(ValueError):
    """A file name from the server that cannot be written under --out as it is."""


# Longest file name written: the temporary name beside it (atomic writes) adds about 20 characters, and most file
# systems stop at 255 bytes.
MAX_NAME_BYTES = 200


def local_path(out_dir: Path, ref: dict) -> Path:
    """Where a server file goes under ``out_dir`` (its subfolder kept). Raises UnsafeFileName for a name that is not
    a plain relative path inside ``out_dir`` (absolute, ``..``, empty, NUL or control characters, too long)."""
    filename, subfolder, kind = ref.get("filename"), ref.get("subfolder") or "", ref.get("type") or "output"
    where = f"the server's file name {filename!r} (subfolder {subfolder!r})"
    if not isinstance(filename, str) or not isinstance(subfolder, str) or not isinstance(kind, str):
        raise UnsafeFileName(f"{where}: expected text for 'filename', 'subfolder' and 'type', got "
                             f"{type(filename).__name__}, {type(subfolder).__name__} and {type(kind).__name__}")
    folders = [p for p in subfolder.replace("\\", "/").split("/") if p not in ("", ".")]

    def why_not(part: str) -> str | None:
        if part in ("", ".", ".."):
            return f"{part!r} is not a file name" if part != ".." else "'..' would leave the output folder"
        if any(ord(c) < 32 or ord(c) == 127 for c in part):
            return "it holds a NUL or control character"
        if "/" in part or "\\" in part or (os.name == "nt" and ":" in part):
            return "a file name cannot hold a path separator or a drive"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return f"a name is longer than {MAX_NAME_BYTES} bytes"
        return None

    if subfolder.replace("\\", "/").startswith("/") or PureWindowsPath(subfolder).drive:
        raise UnsafeFileName(f"{where}: an absolute subfolder would leave the output folder")
    for part in folders + [filename]:
        reason = why_not(part)
        if reason:
            raise UnsafeFileName(f"{where}: {reason}")
    path = out_dir.joinpath(*folders, filename)
    root = os.path.normpath(os.path.abspath(out_dir))
    if os.path.commonpath([root, os.path.normpath(os.path.abspath(path))]) != root:  # a last, lexical check
        raise UnsafeFileName(f"{where}: it would leave the output folder")
    return path


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
        lines += ["  " + str(line).rstrip("\n").replace("\n", "\n  ") for line in traceback]
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
