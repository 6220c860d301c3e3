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

The exit code says how it went: see the EXIT_* constants (headless/exit_codes.py, importable from here as well).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Iterable, TextIO

from .client import (ComfyClient, EventStream, PromptRejected, ServerError, ServerUnavailable, UnexpectedReply,
                     check_seconds)
from .exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SERVER_GONE, EXIT_TIMEOUT
from .outcome import Outcome, PromptWatch, outcome_from_history
from .outputs import check_out_dir, download_outputs
from .overrides import Override, apply_overrides
from .report import ProgressDisplay, format_execution_error, format_rejection, node_label
from .ui_to_api import is_ui_format, ui_to_api

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SERVER_GONE", "EXIT_TIMEOUT",
           "load_workflow", "run_workflow"]


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
        out_path = check_out_dir(out_dir)
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
                       + (f" at node {node_label(prompt, node, outcome.details.get('node_type'))}" if node else ""))
        else:
            self._note(format_execution_error(outcome.details, prompt))
        self.stage = f"downloading the outputs of prompt {self.prompt_id} (it had finished)"
        code = await download_outputs(self.client, outcome.outputs, prompt, self.out_dir,
                                      expect_files=outcome.status == "success", bounded=self._net, note=self._note,
                                      out=self.out)
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

    async def _follow(self, display: ProgressDisplay) -> Outcome:
        watch = PromptWatch(self.prompt_id, display, self._note)
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

    def _merge(self, watch: PromptWatch, finished: Outcome) -> Outcome:
        outputs = dict(watch.outputs)
        outputs.update(finished.outputs)
        details = finished.details or watch.details
        return Outcome(finished.status, details, outputs)

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
