"""A small asynchronous client for ComfyUI's HTTP and websocket API (``server.py`` of ComfyUI).

aiohttp is ComfyUI's own server dependency, so it is present wherever ComfyUI runs; it gives HTTP and websocket
with one session and one event loop (the standard library has no websocket client).

Every failure to reach the server (refused, reset, timed out) is raised as ServerUnavailable, so a caller can tell
"the server is not there" from "the server said no" (PromptRejected, ServerError).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..model.atomic_files import atomic_path


class ServerUnavailable(ConnectionError):
    """The server could not be reached, or the connection broke."""


class ServerError(RuntimeError):
    """The server answered with an unexpected HTTP status."""

    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class PromptRejected(Exception):
    """``POST /prompt`` refused the prompt (HTTP 400): ``body`` holds ``error`` and ``node_errors``."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"prompt rejected (HTTP {status})")
        self.status = status
        self.body = body


_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, OSError)


class ComfyClient:
    """``async with ComfyClient("http://127.0.0.1:8188") as client: ...``"""

    def __init__(self, base_url: str, request_timeout_seconds: float = 60.0):
        if "://" not in base_url:
            base_url = "http://" + base_url
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--server: expected a URL such as http://127.0.0.1:8188, got {base_url!r}")
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.request_timeout_seconds = request_timeout_seconds
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ComfyClient":
        # No session-wide total: the websocket lives as long as the run and a download may be large. Requests set
        # their own limits below.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- HTTP -------------------------------------------------------------------------------------------------

    async def object_info(self) -> dict:
        return await self._request_json("GET", "/object_info")

    async def submit(self, prompt: dict, client_id: str) -> dict:
        """Queue ``prompt``; returns the server's answer (``prompt_id``, ``number``, ``node_errors``)."""
        try:
            async with self._http.post(self._url("/prompt"), json={"prompt": prompt, "client_id": client_id},
                                       timeout=self._request_timeout) as reply:
                text = await reply.text()
                if reply.status == 400:
                    raise PromptRejected(reply.status, _json_or_text(text))
                if reply.status != 200:
                    raise ServerError("POST", "/prompt", reply.status, text)
        except _CONNECTION_ERRORS as error:
            raise ServerUnavailable(_reason(error)) from error
        answer = _parse_json("POST", "/prompt", text)
        if not isinstance(answer, dict) or "prompt_id" not in answer:
            raise ServerError("POST", "/prompt", 200, f"expected a prompt_id, got {text[:200]!r}")
        return answer

    async def history(self, prompt_id: str) -> dict | None:
        """The history entry of ``prompt_id`` (``outputs``, ``status``), or None while it is queued or running."""
        entries = await self._request_json("GET", f"/history/{prompt_id}")
        return entries.get(prompt_id) if isinstance(entries, dict) else None

    async def queue(self) -> dict:
        """``{"queue_running": [...], "queue_pending": [...]}``; each item is ``[number, prompt_id, ...]``."""
        return await self._request_json("GET", "/queue")

    async def interrupt(self, prompt_id: str) -> None:
        """Stop ``prompt_id`` if it is running, and take it off the queue if it is still waiting."""
        await self._request_json("POST", "/interrupt", {"prompt_id": prompt_id})
        await self._request_json("POST", "/queue", {"delete": [prompt_id]})

    async def download(self, file_ref: dict, destination: str) -> int:
        """Write the file ``{"filename", "subfolder", "type"}`` (as in an ``executed`` output) to ``destination``
        through ``GET /view``; returns its size in bytes. The file appears whole or not at all."""
        params = {"filename": file_ref["filename"], "subfolder": file_ref.get("subfolder") or "",
                  "type": file_ref.get("type") or "output"}
        try:
            # a limit per read, not in total: a large file may take long but must keep coming
            read_timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=self.request_timeout_seconds)
            async with self._http.get(self._url("/view"), params=params, timeout=read_timeout) as reply:
                if reply.status != 200:
                    raise ServerError("GET", f"/view?{params}", reply.status, await reply.text())
                size = 0
                with atomic_path(destination) as tmp, open(tmp, "wb") as handle:
                    async for chunk in reply.content.iter_chunked(1 << 20):
                        handle.write(chunk)
                        size += len(chunk)
                return size
        except _CONNECTION_ERRORS as error:
            raise ServerUnavailable(_reason(error)) from error

    # ---- websocket --------------------------------------------------------------------------------------------

    async def open_events(self, client_id: str, heartbeat_seconds: float = 20.0) -> "EventStream":
        """Connect ``/ws?clientId=...``: the server sends this client's execution messages there."""
        url = self._url("/ws").replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        try:
            socket = await self._http.ws_connect(url, params={"clientId": client_id}, heartbeat=heartbeat_seconds,
                                                 max_msg_size=0)
        except (*_CONNECTION_ERRORS, aiohttp.WSServerHandshakeError) as error:
            raise ServerUnavailable(_reason(error)) from error
        return EventStream(socket)

    # ---- plumbing ---------------------------------------------------------------------------------------------

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ComfyClient inside 'async with'")
        return self._session

    @property
    def _request_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.request_timeout_seconds, sock_connect=10.0)

    def _url(self, path: str) -> str:
        return self.base_url + path

    async def _request_json(self, method: str, path: str, payload: Any = None) -> Any:
        try:
            async with self._http.request(method, self._url(path), json=payload,
                                          timeout=self._request_timeout) as reply:
                text = await reply.text()
                if reply.status != 200:
                    raise ServerError(method, path, reply.status, text)
        except _CONNECTION_ERRORS as error:
            raise ServerUnavailable(_reason(error)) from error
        return _parse_json(method, path, text) if text.strip() else None


class EventStream:
    """The JSON messages of one websocket connection; binary frames (image previews) are skipped."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse):
        self._socket = socket

    async def next(self, timeout_seconds: float | None) -> dict | None:
        """The next ``{"type", "data"}`` message; None when nothing came within ``timeout_seconds``.
        Raises ServerUnavailable when the connection closes or breaks."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_seconds is None else loop.time() + timeout_seconds
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                message = await self._socket.receive(timeout=remaining)
            except asyncio.TimeoutError:
                return None
            except _CONNECTION_ERRORS as error:
                raise ServerUnavailable(_reason(error)) from error
            if message.type == aiohttp.WSMsgType.TEXT:
                try:
                    decoded = json.loads(message.data)
                except ValueError:
                    continue
                if isinstance(decoded, dict):
                    return decoded
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.ERROR):
                detail = self._socket.exception() or f"websocket closed (code {self._socket.close_code})"
                raise ServerUnavailable(_reason(detail))
            # BINARY (previews), PING/PONG: nothing to report

    async def close(self) -> None:
        try:
            await self._socket.close()
        except _CONNECTION_ERRORS:
            pass


def _parse_json(method: str, path: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # a proxy's HTML page, say: not the ComfyUI API
        raise ServerError(method, path, 200, f"expected JSON, got {text[:200]!r}") from None


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _reason(error: Any) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
