r"""Screenshot of a workflow in the ComfyUI editor, for the README (docs/img/comfyui_generate_default.png,
docs/img/eval_sync_report.png).

Needs a running ComfyUI with this package in custom_nodes (the editor must know the SyncAV nodes, or it draws them
as missing), and Chromium or Chrome. Headless Chromium is driven over the DevTools protocol with aiohttp (ComfyUI's
own server dependency): the page opens the server's editor, the workflow is loaded with ``app.loadGraphData``,
the view is fitted to the graph and the page is saved as PNG (or JPEG). With ``--run`` the loaded workflow is
queued as the Run button does and the picture is taken once it has finished, so what the nodes show (Preview Any's
text, images) is in it; ``--focus`` fits the view to some nodes only (the eval picture: both samplers, their
Sync Metric nodes and the Preview Any nodes showing the reports). The display settings the script changes (zoom, detail, minimap) live in that page only; the
workflow is not saved on the server.

From the repository root, with ComfyUI running on port 8188:

    python docs/img/make_screenshot.py --server http://127.0.0.1:8188
    python docs/img/make_screenshot.py --server http://127.0.0.1:8188 --run --focus 6,7,10,11,13,14 \
        --width 1600 --height 1000 --out docs/img/eval_sync_report.png \
        --workflow "example_workflows/SyncAV - sync eval, SyncCFG vs plain CFG (CPU).json"

An ``--out`` ending in .jpg is saved as JPEG; ``--graph-only`` leaves the editor's menus, tabs and zoom controls
out of the picture. The template browser's card pictures (example_workflows/NAME.jpg) show what a workflow makes,
not its graph: docs/img/make_thumbnails.py draws them.

Check the result by eye: every node and its widgets readable, no dialog over the graph.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
SETTLE_SECONDS = 1.5          # after loading and fitting: fonts, widgets and the canvas redraw
RUN_TIMEOUT_SECONDS = 600     # --run: how long the queued workflow may take
NODE_TITLE_HEIGHT = 30        # the editor draws a node's title bar above its pos
# Canvas px kept free around the graph (left, top, right, bottom): the workflow tabs sit over the canvas's top,
# the zoom controls over its bottom right.
VIEW_MARGINS_PX = (16, 52, 16, 60)
GRAPH_ONLY_MARGINS_PX = (16, 16, 16, 16)   # --graph-only: nothing over the canvas
JPEG_QUALITY = 85


class DevTools:
    """One page's DevTools-protocol connection: ``await call(method, **params)`` returns the result."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse):
        self.socket = socket
        self.ids = itertools.count(1)

    async def call(self, method: str, **params):
        call_id = next(self.ids)
        await self.socket.send_json({"id": call_id, "method": method, "params": params})
        async for message in self.socket:
            reply = json.loads(message.data)
            if reply.get("id") != call_id:
                continue              # an event, or the answer to something else
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error'].get('message')}")
            return reply["result"]
        raise RuntimeError(f"{method}: the browser closed the connection")

    async def evaluate(self, expression: str):
        """Run JavaScript in the page (awaiting a promise) and return its value."""
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text")
            raise RuntimeError(f"in the page: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_seconds: float, what: str) -> None:
        deadline = time.monotonic() + timeout_seconds
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout_seconds:.0f} s")
            await asyncio.sleep(0.25)


def graph_bounds(workflow: dict, node_ids=None) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in graph units of the workflow's nodes (title bar included) and groups, or of the
    nodes ``node_ids`` alone."""
    nodes = [n for n in workflow["nodes"] if node_ids is None or n["id"] in node_ids]
    if not nodes:
        raise SystemExit(f"--focus: no node with id {sorted(node_ids)} in the workflow")
    boxes = [(n["pos"][0], n["pos"][1] - NODE_TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in nodes]
    if node_ids is None:
        boxes += [(x, y, x + w, y + h) for x, y, w, h in (g["bounding"] for g in workflow.get("groups") or [])]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def fitted_view(bounds, canvas_px, margins_px=VIEW_MARGINS_PX) -> tuple[float, tuple[float, float]]:
    """The editor's (scale, offset) that shows ``bounds`` as large as fits on the canvas, centred, keeping
    ``margins_px`` (left, top, right, bottom) free (a canvas point is (graph point + offset) * scale)."""
    left, top, right, bottom = bounds
    margin_left, margin_top, margin_right, margin_bottom = margins_px
    room_x = canvas_px[0] - margin_left - margin_right
    room_y = canvas_px[1] - margin_top - margin_bottom
    scale = min(room_x / (right - left), room_y / (bottom - top))
    pad_x = (room_x / scale - (right - left)) / 2
    pad_y = (room_y / scale - (bottom - top)) / 2
    return scale, (margin_left / scale + pad_x - left, margin_top / scale + pad_y - top)


def find_browser(name: str | None) -> str:
    for candidate in ([name] if name else BROWSERS):
        path = shutil.which(candidate)
        if path:
            return path
    raise SystemExit(f"no browser found (tried {', '.join([name] if name else BROWSERS)}); give --browser")


def start_browser(binary: str, profile: str, width: int, height: int) -> tuple[subprocess.Popen, int]:
    """Headless browser with a debugging port chosen by itself; returns (process, port)."""
    # Nothing but the page: no update checks, sync or other background traffic.
    command = [binary, "--headless=new", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
               f"--window-size={width},{height}", "about:blank"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")          # Chromium refuses to run as root with its sandbox
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = Path(profile) / "DevToolsActivePort"   # the browser writes its port here once it listens
    deadline = time.monotonic() + 30
    while not (port_file.is_file() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"{binary} did not start its DevTools endpoint")
        time.sleep(0.1)
    return process, int(port_file.read_text().split()[0])


async def run_workflow(page: DevTools) -> None:
    """Queue the open workflow as the Run button does and wait for the server to finish it; the page keeps what its
    nodes were sent (Preview Any's text, previews). A failed or interrupted run is an error naming what happened."""
    await page.evaluate("""(() => {
        window.syncavRun = null;
        const done = (outcome) => (event) => {
            window.syncavRun = outcome + (event.detail ? ': ' + JSON.stringify(event.detail).slice(0, 600) : '');
        };
        app.api.addEventListener('execution_success', done('success'));
        app.api.addEventListener('execution_error', done('error'));
        app.api.addEventListener('execution_interrupted', done('interrupted'));
        return true;
    })()""")
    await page.evaluate("app.extensionManager.command.execute('Comfy.QueuePrompt').then(() => true)")
    await page.wait_for("window.syncavRun !== null", RUN_TIMEOUT_SECONDS, "the workflow's run")
    outcome = await page.evaluate("window.syncavRun")
    if not outcome.startswith("success"):
        raise RuntimeError(f"the workflow did not run through: {outcome}")


async def screenshot(args, port: int) -> bytes:
    workflow = json.loads(args.workflow.read_text())
    name = args.workflow.stem
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            pages = [t for t in await response.json() if t.get("type") == "page"]
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            page = DevTools(socket)
            await page.call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
                            deviceScaleFactor=1, mobile=False)
            await page.call("Page.navigate", url=args.server)
            await page.wait_for("Boolean(window.app && window.app.graph && window.app.canvas && "
                                "window.app.extensionManager)", 120, "the ComfyUI editor")
            # Whatever dialog a first start opens (a template browser, a release note) would cover the graph.
            await page.evaluate("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")
            await page.evaluate(f"app.loadGraphData({json.dumps(workflow)}, true, false, {json.dumps(name)})"
                                ".then(() => true)")
            await page.wait_for(f"app.graph.nodes.length === {len(workflow['nodes'])}", 30, "the workflow")
            # It opened in a tab of its own: close the empty one the editor started with.
            await page.evaluate("""(async () => {
                const store = app.extensionManager.workflow;
                for (const other of store.openWorkflows.filter(w => w !== store.activeWorkflow))
                    await store.closeWorkflow(other);
                return store.openWorkflows.length;
            })()""")
            if args.graph_only:
                # Focus mode drops the menu bar and side bar (the canvas then fills the page); the tabs, zoom
                # controls and the button that leaves focus mode still float over it, so hide them too. Both
                # last as long as the page.
                await page.evaluate("""(() => {
                    app.extensionManager.focusMode = true;
                    const style = document.createElement('style');
                    style.textContent = '.graph-canvas-panel > *, .comfy-menu-hamburger '
                                        + '{ display: none !important; }';
                    document.head.appendChild(style);
                    return true;
                })()""")
                await page.wait_for(f"app.canvas.canvas.getBoundingClientRect().width === {args.width}", 10,
                                    "the canvas in focus mode")
            if args.run:
                await run_workflow(page)
            canvas = await page.evaluate("(() => { const r = app.canvas.canvas.getBoundingClientRect(); "
                                         "return [r.width, r.height]; })()")
            margins = GRAPH_ONLY_MARGINS_PX if args.graph_only else VIEW_MARGINS_PX
            scale, offset = fitted_view(graph_bounds(workflow, args.focus), canvas, margins)
            # For this page only (no setting is saved on the server): full detail at any zoom (below a zoom
            # threshold the editor draws nodes without text), no minimap over the graph, no render statistics.
            await page.evaluate(f"""(() => {{
                app.canvas.min_font_size_for_lod = 0;
                app.canvas.show_info = false;
                const style = document.createElement('style');
                style.textContent = '.minimap-main-container {{ display: none !important; }}';
                document.head.appendChild(style);
                app.canvas.ds.scale = {scale};
                app.canvas.ds.offset = [{offset[0]}, {offset[1]}];
                app.canvas.setDirty(true, true);
                return true;
            }})()""")
            await asyncio.sleep(SETTLE_SECONDS)
            if args.out.suffix.lower() in (".jpg", ".jpeg"):
                shot = await page.call("Page.captureScreenshot", format="jpeg", quality=JPEG_QUALITY)
            else:
                shot = await page.call("Page.captureScreenshot", format="png")
    return base64.b64decode(shot["data"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="a running ComfyUI with this package")
    parser.add_argument("--workflow", type=Path,
                        default=REPO_ROOT / "example_workflows" / "SyncAV - generate a clip with sound (CPU).json",
                        help="UI-format workflow to show (default: the generate workflow of example_workflows/)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img" / "comfyui_generate_default.png")
    parser.add_argument("--width", type=int, default=1400, help="page width in px (default 1400)")
    parser.add_argument("--height", type=int, default=800, help="page height in px (default 800)")
    parser.add_argument("--focus", type=lambda text: {int(i) for i in text.split(",")}, default=None,
                        metavar="ID,ID,...", help="fit the view to these nodes (default: the whole graph)")
    parser.add_argument("--run", action="store_true",
                        help="queue the workflow and take the picture after it ran (what its nodes show)")
    parser.add_argument("--graph-only", action="store_true",
                        help="only the canvas: no menus, side bar, tabs or zoom controls (template-browser cards)")
    parser.add_argument("--browser", default=None, help="browser executable (default: the first of "
                                                        f"{', '.join(BROWSERS)} on PATH)")
    args = parser.parse_args(argv)

    binary = find_browser(args.browser)
    with tempfile.TemporaryDirectory(prefix="syncav_screenshot_", ignore_cleanup_errors=True) as profile:
        process, port = start_browser(binary, profile, args.width, args.height)
        try:
            png = asyncio.run(screenshot(args, port))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_bytes(png)
    os.replace(partial, args.out)              # never a half-written image under the real name
    print(f"wrote {args.out} ({len(png) // 1024} KiB, {args.width}x{args.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
