"""A small asynchronous client for ComfyUI's HTTP and websocket API (``server.py`` of ComfyUI).

aiohttp is ComfyUI's own server dependency, so it is present wherever ComfyUI runs; it gives HTTP and websocket
with one session and one event loop (the standard library has no websocket client).

Every failure to reach the server (refused, reset, timed out) is raised as ServerUnavailable, so a caller can tell
"the server is not there" from "the server said no" (PromptRejected, ServerError) and from "the server answered
something ComfyUI never sends" (UnexpectedReply: not JSON, JSON of another shape). A download that cannot be written
locally is LocalWriteError, a problem of the destination. No operation waits without bound: each request, the
websocket handshake and each read of a download give up after ``request_timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from ..files.atomic import atomic_path


class ServerUnavailable(ConnectionError):
    """The server could not be reached, or the connection broke."""


class ServerError(RuntimeError):
    """The server answered with an unexpected HTTP status."""

    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path}: expected HTTP 200, got HTTP {status}: {_snippet(body)}")
        self.status = status
        self.body = body


class UnexpectedReply(ServerError):
    """The server answered, but not the way ComfyUI does: not JSON, or JSON of another shape."""

    def __init__(self, where: str, expected: str, got: Any):
        RuntimeError.__init__(self, f"{where}: expected {expected}, got {_snippet(got)}")
        self.status = 200
        self.body = got


class PromptRejected(Exception):
    """``POST /prompt`` refused the prompt (HTTP 400): ``body`` holds ``error`` and ``node_errors``."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"prompt rejected (HTTP {status})")
        self.status = status
        self.body = body


class ServerUrlError(ValueError):
    """The server URL cannot be a ComfyUI address (bad scheme, no host, bad port)."""


class LocalWriteError(ValueError):
    """A downloaded file cannot be written on this machine (folder not writable, a file in the way, disk full):
    a problem of the destination, not of the server."""


_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, OSError)
_EXAMPLE_URL = "http://127.0.0.1:8188"


def check_server_url(url: Any) -> str:
    """``url`` as ``scheme://host:port/path`` (``http://`` added to a bare ``host:port``); raises ServerUrlError
    saying what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise ServerUrlError(f"--server: expected a URL such as {_EXAMPLE_URL}, got {url!r}")
    text = url.strip()
    if "://" not in text:
        text = "http://" + text  # "127.0.0.1:8188", as ComfyUI prints its address
    where = f"--server {url!r}"
    try:
        parts = urlsplit(text)
    except ValueError as error:  # "Invalid IPv6 URL"
        raise ServerUrlError(f"{where}: not a URL ({error}); expected one such as {_EXAMPLE_URL}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ServerUrlError(f"{where}: expected an http:// or https:// URL such as {_EXAMPLE_URL}, got the scheme "
                             f"{parts.scheme!r}")
    host = parts.hostname or ""
    if not host:
        raise ServerUrlError(f"{where}: the URL has no host name (expected one such as {_EXAMPLE_URL})")
    if any(c.isspace() or ord(c) < 32 or c in "<>\\\"{}|^`" for c in host):
        raise ServerUrlError(f"{where}: the host name {host!r} has characters a host name cannot have")
    try:
        port = parts.port
    except ValueError:  # "Port out of range 0-65535", "could not be cast to integer"
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raw_port = parts.netloc.rpartition(":")[2]
        raise ServerUrlError(f"{where}: invalid port {raw_port!r} (expected a number from 1 to 65535)")
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def check_seconds(name: str, value: Any, *, none_ok: bool = False, zero_ok: bool = False) -> float | None:
    """``value`` as a number of seconds: positive (or >= 0 with ``zero_ok``) and not NaN; inf (and None, with
    ``none_ok``) mean no limit and come back as None."""
    if value is None and none_ok:
        return None
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if math.isinf(number) and number > 0 and none_ok:
        return None
    if not (0 <= number < math.inf if zero_ok else 0 < number < math.inf):
        raise ValueError(f"{name}: expected a {'' if zero_ok else 'positive '}number of seconds"
                         f"{' (inf for no limit)' if none_ok else ''}, got {value!r}")
    return float(number)


class ComfyClient:
    """``async with ComfyClient("http://127.0.0.1:8188") as client: ...``"""

    def __init__(self, base_url: str, request_timeout_seconds: float = 60.0):
        self.base_url = check_server_url(base_url)
        self.request_timeout_seconds = check_seconds("request_timeout_seconds", request_timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ComfyClient":
        # No session-wide total: the websocket lives as long as the run and a download may be large. Each request
        # sets its own limits below, so no network operation waits without bound.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None,
                                                                             sock_connect=self._connect_seconds))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- HTTP -------------------------------------------------------------------------------------------------

    async def object_info(self) -> dict:
        """``{class_type: {"input", "output", ...}}`` for every node class the server has."""
        info = await self._request_json("GET", "/object_info")
        if not isinstance(info, dict):
            raise UnexpectedReply("GET /object_info", "an object of node definitions", info)
        return info

    @staticmethod
    def check_node_definitions(info: dict, class_types: Iterable[str]) -> None:
        """Raise UnexpectedReply when the ``/object_info`` entry of one of ``class_types`` (those a workflow uses:
        a custom node the workflow does not use may declare what it likes) has not the shape ComfyUI sends."""
        for class_type in class_types:
            problem = _node_definition_problem(info[class_type]) if class_type in info else None
            if problem is not None:
                part, expected, got = problem
                raise UnexpectedReply(f"GET /object_info, node {class_type!r}{f' {part}' if part else ''}", expected,
                                      got)

    async def submit(self, prompt: dict, client_id: str) -> dict:
        """Queue ``prompt``; returns the server's answer (``prompt_id`` as a str, ``number``, ``node_errors``)."""
        try:
            async with self._http.post(self._url("/prompt"), json={"prompt": prompt, "client_id": client_id},
                                       timeout=self._request_timeout) as reply:
                text = await reply.text(errors="replace")
                if reply.status == 400:
                    raise PromptRejected(reply.status, _json_or_text(text))
                if reply.status != 200:
                    raise ServerError("POST", "/prompt", reply.status, text)
        except _CONNECTION_ERRORS as error:
            raise ServerUnavailable(self._reason(error)) from error
        answer = _parse_json("POST", "/prompt", text)
        prompt_id = answer.get("prompt_id") if isinstance(answer, dict) else None
        if isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)) or not str(prompt_id).strip():
            raise UnexpectedReply("POST /prompt", "an object with a 'prompt_id'", text)
        return {**answer, "prompt_id": str(prompt_id)}

    async def history(self, prompt_id: str) -> dict | None:
        """The history entry of ``prompt_id`` (``outputs`` and ``status``, both dicts), or None while it is queued
        or running."""
        where = f"GET /history/{prompt_id}"
        entries = await self._request_json("GET", f"/history/{quote(prompt_id, safe='')}")
        if entries is None:
            return None
        if not isinstance(entries, dict):
            raise UnexpectedReply(where, "an object {prompt_id: entry}", entries)
        entry = entries.get(prompt_id)
        if entry is None:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("outputs", {}), dict) \
                or not isinstance(entry.get("status") or {}, dict) \
                or not isinstance((entry.get("status") or {}).get("messages") or [], list):
            raise UnexpectedReply(where, "an entry with an 'outputs' object and a 'status' object", entry)
        return {**entry, "outputs": entry.get("outputs") or {}, "status": entry.get("status") or {}}

    async def queue(self) -> set[str]:
        """The ids of the prompts the server is running or keeps waiting (``GET /queue``, whose items are
        ``[number, prompt_id, ...]``)."""
        queue = await self._request_json("GET", "/queue")
        lists = [queue.get(key) or [] for key in ("queue_running", "queue_pending")] if isinstance(queue, dict) \
            else None
        if lists is None or not all(isinstance(items, list) for items in lists) \
                or not all(isinstance(item, list) and len(item) > 1 for items in lists for item in items):
            raise UnexpectedReply("GET /queue", "{'queue_running': [[number, prompt_id, ...]], 'queue_pending': "
                                                "[...]}", queue)
        return {str(item[1]) for items in lists for item in items}

    async def interrupt(self, prompt_id: str) -> None:
        """Stop ``prompt_id`` if it is running, and take it off the queue if it is still waiting."""
        await self._request_json("POST", "/interrupt", {"prompt_id": prompt_id}, parse=False)
        await self._request_json("POST", "/queue", {"delete": [prompt_id]}, parse=False)

    async def download(self, file_ref: dict, destination: str) -> int:
        """Write the file ``{"filename", "subfolder", "type"}`` (as in an ``executed`` output) to ``destination``
        through ``GET /view``, streamed (never held whole in memory); returns its size in bytes. The file appears
        whole or not at all. A local failure (folder, disk) is raised as LocalWriteError, a network one as
        ServerUnavailable."""
        params = {"filename": file_ref["filename"], "subfolder": file_ref.get("subfolder") or "",
                  "type": file_ref.get("type") or "output"}
        where = f"GET /view?filename={params['filename']!r}"
        size = 0
        try:
            # a limit per read, not in total: a large file may take long but must keep coming
            read_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_seconds,
                                                 sock_read=self.request_timeout_seconds)
            async with self._http.get(self._url("/view"), params=params, timeout=read_timeout) as reply:
                if reply.status != 200:
                    raise ServerError("GET", where[4:], reply.status, await _start_of_body(reply))
                expected = reply.content_length
                try:
                    with atomic_path(destination) as tmp, open(tmp, "wb") as handle:
                        while True:
                            try:
                                chunk = await reply.content.read(1 << 20)
                            except _CONNECTION_ERRORS as error:
                                raise ServerUnavailable(f"{where}: the download broke off after {size} bytes"
                                                        f"{f' of {expected}' if expected else ''} "
                                                        f"({self._reason(error)})") from error
                            if not chunk:
                                break
                            handle.write(chunk)
                            size += len(chunk)
                except (ServerUnavailable, ServerError):
                    raise
                except OSError as error:  # this machine's folder or disk, not the server
                    in_the_way = next((p for p in Path(destination).parents if p.exists() and not p.is_dir()), None)
                    reason = f"{in_the_way} is a file, not a folder" if in_the_way else error.strerror or error
                    raise LocalWriteError(f"cannot write {destination} ({reason})") from None
                return size
        except (ServerUnavailable, ServerError, LocalWriteError):
            raise
        except _CONNECTION_ERRORS as error:
            raise ServerUnavailable(f"{where}: {self._reason(error)}") from error

    # ---- websocket --------------------------------------------------------------------------------------------

    async def open_events(self, client_id: str, heartbeat_seconds: float = 20.0) -> "EventStream":
        """Connect ``/ws?clientId=...``: the server sends this client's execution messages there."""
        url = self._url("/ws").replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        try:
            # the handshake is an HTTP request like any other: a server that accepts and never answers is given up
            socket = await asyncio.wait_for(
                self._http.ws_connect(url, params={"clientId": client_id}, heartbeat=heartbeat_seconds,
                                      max_msg_size=0), self.request_timeout_seconds)
        except aiohttp.WSServerHandshakeError as error:  # an HTTP answer, but no websocket: not ComfyUI's /ws
            raise UnexpectedReply("GET /ws", "a websocket handshake (HTTP 101)",
                                  f"HTTP {error.status} ({error.message})") from None
        except _CONNECTION_ERRORS as error:
            raise ServerUnavailable(f"GET /ws (websocket): {self._reason(error)}") from error
        return EventStream(socket)

    # ---- plumbing ---------------------------------------------------------------------------------------------

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ComfyClient inside 'async with'")
        return self._session

    @property
    def _connect_seconds(self) -> float:
        return min(10.0, self.request_timeout_seconds)

    @property
    def _request_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.request_timeout_seconds, sock_connect=self._connect_seconds)

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _reason(self, error: Any) -> str:
        if isinstance(error, asyncio.TimeoutError):
            return f"no answer within {self.request_timeout_seconds:g} s"
        return _reason(error)

    async def _request_json(self, method: str, path: str, payload: Any = None, parse: bool = True) -> Any:
        try:
            async with self._http.request(method, self._url(path), json=payload,
                                          timeout=self._request_timeout) as reply:
                if reply.status != 200:
                    raise ServerError(method, path, reply.status, await _start_of_body(reply))
                text = await reply.text(errors="replace") if parse else ""
        except _CONNECTION_ERRORS as error:
            raise ServerUnavailable(f"{method} {path}: {self._reason(error)}") from error
        return _parse_json(method, path, text) if text.strip() else None


class EventStream:
    """The JSON messages of one websocket connection; binary frames (image previews) are skipped."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse):
        self._socket = socket

    async def next(self, timeout_seconds: float | None) -> dict | None:
        """The next ``{"type": str, "data": {...}}`` message; None when nothing came within ``timeout_seconds``.
        Raises ServerUnavailable when the connection closes or breaks, UnexpectedReply for a text frame that is not
        such a message (ComfyUI sends nothing else as text)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_seconds is None else loop.time() + timeout_seconds
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                message = await self._socket.receive(timeout=remaining)
            except asyncio.TimeoutError:
                return None
            except _CONNECTION_ERRORS as error:
                raise ServerUnavailable(f"websocket: {_reason(error)}") from error
            if message.type == aiohttp.WSMsgType.TEXT:
                try:
                    decoded = json.loads(message.data)
                except ValueError:
                    raise UnexpectedReply("websocket message", "JSON", message.data) from None
                if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str) \
                        or not isinstance(decoded.get("data", {}), dict):
                    raise UnexpectedReply("websocket message", "an object {'type': str, 'data': {...}}", decoded)
                return decoded
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR):
                detail = self._socket.exception() or f"websocket closed (code {self._socket.close_code})"
                raise ServerUnavailable(_reason(detail))
            # BINARY (previews), PING/PONG: nothing to report

    async def close(self) -> None:
        try:  # the closing handshake waits for the server's answer: not for long
            await asyncio.wait_for(self._socket.close(), 2.0)
        except _CONNECTION_ERRORS:
            pass


def _node_definition_problem(node: Any) -> tuple[str, str, Any] | None:
    """``(part, expected, got)`` for the first part of an ``/object_info`` entry that the UI-format conversion and
    ``--set`` read and that has not the shape ComfyUI sends; None when all have it."""
    if not isinstance(node, dict):
        return "", "a node definition object", node
    sections, order = node.get("input") or {}, node.get("input_order") or {}
    if not isinstance(sections, dict) or not all(isinstance(sections.get(k) or {}, dict) for k in ("required",
                                                                                                   "optional")):
        return "'input'", "{'required': {name: [type, {options}]}, 'optional': {...}}", sections
    for key in ("required", "optional"):
        for name, spec in (sections.get(key) or {}).items():
            if not isinstance(spec, (list, tuple)) or not spec:
                return f"input {name!r}", "[type, {options}]", spec
    if not isinstance(order, dict) or not all(isinstance(names, list) and all(isinstance(n, str) for n in names)
                                              for names in order.values()):
        return "'input_order'", "{'required': [names], 'optional': [names]}", order
    return None


async def _start_of_body(reply: aiohttp.ClientResponse) -> str:
    """The first 64 KiB of an error answer (enough to quote; an error page may be arbitrarily long)."""
    try:
        return (await reply.content.read(1 << 16)).decode("utf-8", "replace")
    except _CONNECTION_ERRORS:
        return ""


def _parse_json(method: str, path: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # a proxy's HTML page, say: not the ComfyUI API
        raise UnexpectedReply(f"{method} {path}", "JSON", text) from None


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _snippet(value: Any, limit: int = 200) -> str:
    """``value`` quoted on one line and cut to ``limit`` characters (an HTML error page, say)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def _reason(error: Any) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
