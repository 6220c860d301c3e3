"""An in-process stand-in for a ComfyUI server, for the headless runner's tests.

It speaks the parts of ComfyUI's API the runner uses (``/prompt``, ``/ws``, ``/history/<id>``, ``/queue``, ``/view``,
``/object_info``, ``/interrupt``) with the message shapes of ComfyUI's server.py / execution.py, and plays a scripted
execution after each queued prompt. It runs an aiohttp server on a free loopback port in a background thread.

Also here: a small node catalogue (``/object_info``) and a UI-format workflow drawn on it, with the API prompt the
frontend would queue for it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, web


def send(kind: str, **data) -> tuple:
    """Script step: send ``{"type": kind, "data": data}`` to the prompt's client (``prompt_id``: the prompt's, unless
    given)."""
    return ("send", kind, data)


def finish(status: str = "success", outputs: dict | None = None, messages: list | None = None) -> tuple:
    """Script step: store the history entry (as ComfyUI does when a prompt ends) and leave the queue."""
    return ("history", status, outputs or {}, messages or [])


DROP = ("drop",)  # close the client's websocket (the server stays up)
SHUTDOWN = ("shutdown",)  # stop the whole server: every later connection is refused
HANG = ("hang",)  # never say anything again
FORGET = ("forget",)  # lose the prompt, as a restarted server would: no history, not in the queue


def pause(seconds: float) -> tuple:
    return ("sleep", seconds)


def raw(text: str) -> tuple:
    """Script step: send ``text`` as it is in one websocket text frame (garbage, JSON of another shape)."""
    return ("raw", text)


@dataclass(frozen=True)
class BigFile:
    """A ``/view`` answer made up on the fly in 1 MiB chunks (never held whole by the server): ``size`` bytes of
    ``pattern(offset)``; with ``break_after`` the connection is cut after that many bytes, the full size announced.
    """
    size: int
    break_after: int | None = None
    headers: tuple = ()  # extra response headers, as (name, value) pairs
    pause_seconds: float = 0.0  # between two chunks: a slow link

    @staticmethod
    def pattern(offset: int, length: int) -> bytes:
        """The bytes at ``offset`` (byte i of the file is ``i % 256``); ``length`` up to 1 MiB."""
        assert length <= 1 << 20
        return _BLOCK[offset % 256: offset % 256 + length]


_BLOCK = bytes(range(256)) * 4097  # 1 MiB and one more period, so that any start in 0..255 has 1 MiB after it


class SilentServer:
    """Accepts TCP connections on a loopback port and never answers (a hung server, a black-holing proxy)."""

    def __init__(self):
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.port = self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "SilentServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._socket.close()
        for connection in self._connections:
            connection.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by stop()
                return
            self._connections.append(connection)


class FakeComfyUI:
    def __init__(self, object_info: dict | None = None):
        self.object_info = object_info or {}
        self.files: dict[tuple[str, str, str], bytes | BigFile] = {}  # (type, subfolder, filename) -> content
        # "METHOD /path" prefix ("POST /prompt", "GET /history", "GET /queue", ...) -> (status, body text, content
        # type) to answer instead of the API's own answer: an HTML error page, JSON of another shape
        self.replies: dict[str, tuple[int, str, str]] = {}
        self.ws_close_at_once = False  # close each websocket right after the handshake, before any message
        self.script: list[tuple] = []
        self.reject: tuple[int, Any] | None = None  # (status, body) to answer POST /prompt with
        self.prompts: list[dict] = []  # bodies of POST /prompt
        self.interrupts: list[Any] = []
        self.queue_deletes: list[Any] = []
        self.ws_connects: list[str] = []  # clientId of each websocket connection
        self.history: dict[str, dict] = {}
        self.running: set[str] = set()
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeComfyUI":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ---- server ---------------------------------------------------------------------------------------------

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._replace_reply])
        app.router.add_post("/prompt", self._post_prompt)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/history/{prompt_id}", self._get_history)
        app.router.add_get("/queue", self._get_queue)
        app.router.add_post("/queue", self._post_queue)
        app.router.add_get("/view", self._view)
        app.router.add_get("/object_info", self._get_object_info)
        app.router.add_post("/interrupt", self._post_interrupt)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._runner is not None:
            for socket in list(self._sockets.values()):
                await socket.close(code=WSCloseCode.GOING_AWAY)
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _replace_reply(self, request: web.Request, handler):
        for prefix, (status, text, content_type) in self.replies.items():
            if f"{request.method} {request.path}".startswith(prefix):
                return web.Response(status=status, text=text, content_type=content_type)
        return await handler(request)

    async def _post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.prompts.append(body)
        if self.reject is not None:
            return web.json_response(self.reject[1], status=self.reject[0])
        prompt_id = str(uuid.uuid4())
        self.running.add(prompt_id)
        task = asyncio.get_running_loop().create_task(self._play(prompt_id, body.get("client_id")))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        self.ws_connects.append(client_id)
        if self.ws_close_at_once:
            await socket.close(code=WSCloseCode.GOING_AWAY)
            return socket
        self._sockets[client_id] = socket
        await socket.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                            "sid": client_id}})
        try:
            async for _ in socket:  # the client says nothing the runner cares about
                pass
        finally:
            if self._sockets.get(client_id) is socket:
                del self._sockets[client_id]
        return socket

    async def _get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [[i, prompt_id, {}, {}, []] for i, prompt_id in enumerate(sorted(self.running))]
        return web.json_response({"queue_running": running, "queue_pending": []})

    async def _post_queue(self, request: web.Request) -> web.Response:
        self.queue_deletes.append(await request.json())
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.Response:
        key = (request.query.get("type", "output"), request.query.get("subfolder", ""), request.query["filename"])
        if key not in self.files:
            return web.Response(status=404)
        content = self.files[key]
        if not isinstance(content, BigFile):
            return web.Response(body=content, content_type="application/octet-stream")
        reply = web.StreamResponse(headers=dict(content.headers))
        reply.content_type = "application/octet-stream"
        reply.content_length = content.size
        await reply.prepare(request)
        end = content.size if content.break_after is None else content.break_after
        for offset in range(0, end, 1 << 20):
            await reply.write(BigFile.pattern(offset, min(1 << 20, end - offset)))
            await asyncio.sleep(content.pause_seconds)
        if content.break_after is not None:  # the server goes away mid-file
            request.transport.close()
            return reply
        await reply.write_eof()
        return reply

    async def _get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.object_info)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        self.interrupts.append(await request.json() if request.can_read_body else None)
        return web.Response(status=200)

    # ---- the scripted execution -----------------------------------------------------------------------------

    async def _play(self, prompt_id: str, client_id: str) -> None:
        for step in self.script:
            kind = step[0]
            if kind == "send":
                socket = self._sockets.get(client_id)
                if socket is not None and not socket.closed:  # like ComfyUI: no socket, message lost
                    await socket.send_json({"type": step[1], "data": {"prompt_id": prompt_id, **step[2]}})
            elif kind == "history":
                _, status, outputs, messages = step
                self.history[prompt_id] = {
                    "prompt": [1, prompt_id, {}, {}, []], "outputs": outputs,
                    "status": {"status_str": status, "completed": status == "success",
                               "messages": [["execution_start", {"prompt_id": prompt_id}]] + messages},
                    "meta": {}}
                self.running.discard(prompt_id)
            elif kind == "raw":
                socket = self._sockets.get(client_id)
                if socket is not None and not socket.closed:
                    await socket.send_str(step[1])
            elif kind == "drop":
                socket = self._sockets.pop(client_id, None)
                if socket is not None:
                    await socket.close(code=WSCloseCode.GOING_AWAY)
            elif kind == "sleep":
                await asyncio.sleep(step[1])
            elif kind == "shutdown":
                await self._stop()
                return
            elif kind == "forget":
                self.running.discard(prompt_id)
            elif kind == "hang":
                await asyncio.Event().wait()
            await asyncio.sleep(0.005)  # let each message go out on its own, as a running prompt would


# ---------------------------------------------------------------------------------------------------------------
# a small node catalogue and a UI-format workflow drawn on it

SAMPLE_OBJECT_INFO = {
    "Loader": {
        "input": {"required": {"ckpt": [["a.safetensors", "b.safetensors"], {}]}},
        "input_order": {"required": ["ckpt"]},
        "output": ["MODEL", "CLIP"], "name": "Loader", "display_name": "Load Checkpoint", "output_node": False},
    "Encode": {
        "input": {"required": {"clip": ["CLIP", {}], "text": ["STRING", {"multiline": True}]}},
        "input_order": {"required": ["clip", "text"]},
        "output": ["COND"], "name": "Encode", "display_name": "Text Encode", "output_node": False},
    "Filter": {
        "input": {"required": {"clip": ["CLIP", {}], "model": ["MODEL", {}], "strength": ["FLOAT", {"default": 1.0}]}},
        "input_order": {"required": ["clip", "model", "strength"]},
        "output": ["MODEL"], "name": "Filter", "display_name": "Model Filter", "output_node": False},
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}], "cond": ["COND", {}],
                "seed": ["INT", {"default": 0, "min": 0}],  # no option: a "seed" gets a control widget anyway
                "steps": ["INT", {"default": 20, "min": 1}],
                "mode": ["COMBO", {"options": ["fast", "slow"], "control_after_generate": True}],
            },
            "optional": {"cfg": ["FLOAT", {"default": 1.0}], "latent": ["LATENT", {}]},
        },
        "input_order": {"required": ["model", "cond", "seed", "steps", "mode"], "optional": ["cfg", "latent"]},
        "output": ["LATENT"], "name": "Sampler", "display_name": "Sampler", "output_node": False},
    "EmptyLatent": {
        "input": {"required": {"width": ["INT", {"default": 64}]}},
        "input_order": {"required": ["width"]},
        "output": ["LATENT"], "name": "EmptyLatent", "display_name": "Empty Latent", "output_node": False},
    "Text": {
        "input": {"required": {"value": ["STRING", {}]}},
        "input_order": {"required": ["value"]},
        "output": ["STRING"], "name": "Text", "display_name": "Text", "output_node": False},
    "Save": {
        "input": {"required": {"latent": ["LATENT", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "input_order": {"required": ["latent", "filename_prefix"]},
        "output": [], "name": "Save", "display_name": "Save Latent", "output_node": True},
}


def _node(node_id, node_type, inputs=(), outputs=(), widgets_values=None, mode=0, title=None):
    node = {"id": node_id, "type": node_type, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0,
            "mode": mode, "inputs": list(inputs), "outputs": list(outputs), "properties": {}}
    if widgets_values is not None:
        node["widgets_values"] = widgets_values
    if title is not None:
        node["title"] = title
    return node


def _in(name, kind, link, widget=False):
    entry = {"name": name, "type": kind, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


def _out(name, kind, links):
    return {"name": name, "type": kind, "links": links}


# Loader 1 -> Reroute 10 -> Filter 3 (bypassed: its MODEL input, slot 1, stands in for its MODEL output) -> Sampler 4;
# Loader 1 CLIP -> Encode 2 and Filter 3; PrimitiveNode 5 -> Sampler 4 "seed" (a widget turned into an input);
# EmptyLatent 6 (muted) -> Sampler 4 "latent"; Text 9 -> Save 8 "filename_prefix"; Note 7 stands alone.
SAMPLE_UI_WORKFLOW = {
    "id": "0b7c2a52-0000-4000-8000-000000000000", "revision": 0, "last_node_id": 10, "last_link_id": 11,
    "nodes": [
        _node(1, "Loader", outputs=[_out("MODEL", "MODEL", [1]), _out("CLIP", "CLIP", [2, 3])],
              widgets_values=["b.safetensors"]),
        _node(2, "Encode", inputs=[_in("clip", "CLIP", 2)], outputs=[_out("COND", "COND", [5])],
              widgets_values=["a red ball bounces"]),
        _node(3, "Filter", mode=4, inputs=[_in("clip", "CLIP", 3), _in("model", "MODEL", 4)],
              outputs=[_out("MODEL", "MODEL", [6])], widgets_values=[0.5]),
        _node(4, "Sampler",
              inputs=[_in("model", "MODEL", 6), _in("cond", "COND", 5), _in("seed", "INT", 7, widget=True),
                      _in("steps", "INT", None, widget=True), _in("latent", "LATENT", 8)],
              outputs=[_out("LATENT", "LATENT", [9])],
              # seed, its control, steps, mode, its control, its filter box, cfg
              widgets_values=[7, "randomize", 25, "slow", "increment", "", 3.5]),
        _node(5, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "widget": {"name": "seed"}, "links": [7]}],
              widgets_values=[1234, "fixed"], title="seed"),
        _node(6, "EmptyLatent", mode=2, outputs=[_out("LATENT", "LATENT", [8])], widgets_values=[64]),
        _node(7, "Note", widgets_values=["remember to set the seed"]),
        _node(8, "Save", title="Save the latent",
              inputs=[_in("latent", "LATENT", 9), _in("filename_prefix", "STRING", 10, widget=True)],
              widgets_values=["stored prefix"]),
        _node(9, "Text", outputs=[_out("STRING", "STRING", [10])], widgets_values=["from-text-node"]),
        _node(10, "Reroute", inputs=[_in("", "*", 1)], outputs=[_out("", "MODEL", [4])]),
    ],
    "links": [
        [1, 1, 0, 10, 0, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 1, 1, 3, 0, "CLIP"], [4, 10, 0, 3, 1, "MODEL"],
        [5, 2, 0, 4, 1, "COND"], [6, 3, 0, 4, 0, "MODEL"], [7, 5, 0, 4, 2, "INT"], [8, 6, 0, 4, 4, "LATENT"],
        [9, 4, 0, 8, 0, "LATENT"], [10, 9, 0, 8, 1, "STRING"],
    ],
    "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4,
}

SAMPLE_API_PROMPT = {
    "1": {"inputs": {"ckpt": "b.safetensors"}, "class_type": "Loader", "_meta": {"title": "Load Checkpoint"}},
    "2": {"inputs": {"text": "a red ball bounces", "clip": ["1", 1]}, "class_type": "Encode",
          "_meta": {"title": "Text Encode"}},
    "4": {"inputs": {"seed": 1234, "steps": 25, "mode": "slow", "cfg": 3.5, "model": ["1", 0], "cond": ["2", 0]},
          "class_type": "Sampler", "_meta": {"title": "Sampler"}},
    "8": {"inputs": {"filename_prefix": ["9", 0], "latent": ["4", 0]}, "class_type": "Save",
          "_meta": {"title": "Save the latent"}},
    "9": {"inputs": {"value": "from-text-node"}, "class_type": "Text", "_meta": {"title": "Text"}},
}
