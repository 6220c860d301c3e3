"""Integration harness: run ComfyUI-SyncAV inside a real ComfyUI server.

Environment:
  COMFYUI_DIR         a ComfyUI checkout (the folder with main.py). Unset: every test here is skipped.
  COMFYUI_PYTHON      the interpreter that runs ComfyUI (default: the one running pytest).
  COMFYUI_PYTHONPATH  PYTHONPATH for the server (e.g. a folder with torchvision/torchaudio stubs).
  COMFYUI_EXTRA_ARGS  extra main.py flags, split like a shell would (e.g. "--cache-none").
  COMFYUI_STARTUP_TIMEOUT  seconds to wait for /object_info (default 180).
  SYNCAV_REQUIRE_COMFYUI   set (as CI does): an unset COMFYUI_DIR fails these tests instead of skipping them.

The server runs with --base-directory in a temp folder, so the checkout is never written to: that folder holds
custom_nodes/ComfyUI-SyncAV (a symlink to this repository), custom_nodes/syncav_test_probes (the test-only nodes of
tests/integration/probe_nodes), models/, input/, output/, temp/, user/ and the sqlite database. Standard library
only.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

SKIP_REASON = "set COMFYUI_DIR to a ComfyUI checkout to run integration tests against a real server"
PACKAGE_DIR_NAME = "ComfyUI-SyncAV"
PROBE_NODES_DIR_NAME = "syncav_test_probes"   # test-only nodes that report what a graph cannot show
REPO_ROOT = Path(__file__).resolve().parents[2]
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if os.environ.get("COMFYUI_DIR"):
        return
    if os.environ.get("SYNCAV_REQUIRE_COMFYUI"):
        raise pytest.UsageError("SYNCAV_REQUIRE_COMFYUI is set but COMFYUI_DIR is not: the integration tests must "
                                "run against a real ComfyUI here (see .ci/run)")
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


class ComfyError(RuntimeError):
    """A request to the server failed, or a prompt was rejected or failed to execute."""


class ComfyServer:
    """A running ComfyUI server and small HTTP helpers for tests."""

    def __init__(self, base_url: str, base_dir: Path, log_path: Path, process: subprocess.Popen):
        self.base_url = base_url
        self.base_dir = base_dir
        self.output_dir = base_dir / "output"
        self.input_dir = base_dir / "input"
        self.temp_dir = base_dir / "temp"
        self.models_dir = base_dir / "models"
        self.custom_nodes_dir = base_dir / "custom_nodes"
        self.log_path = log_path
        self.process = process
        self.client_id = uuid.uuid4().hex

    # -- raw HTTP ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 60.0) -> bytes:
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise ComfyError(f"{method} {path} -> HTTP {e.code}: {detail}") from None

    def get_json(self, path: str, timeout: float = 60.0):
        return json.loads(self.request("GET", path, timeout=timeout))

    def post_json(self, path: str, body, timeout: float = 60.0):
        raw = self.request("POST", path, body, timeout=timeout)
        return json.loads(raw) if raw.strip() else None

    # -- API --------------------------------------------------------------------------------------
    def object_info(self, node_class: str | None = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<node_class> (that node's entry, {} if unknown)."""
        if node_class is None:
            return self.get_json("/object_info")
        return self.get_json("/object_info/" + urllib.parse.quote(node_class)).get(node_class, {})

    def post_prompt(self, api_prompt: dict, client_id: str | None = None, extra_data: dict | None = None) -> str:
        """Queue an API-format prompt ({node_id: {"class_type", "inputs"}}); returns the prompt_id.

        A prompt that fails validation raises ComfyError with the server's error and node_errors."""
        body = {"prompt": api_prompt, "client_id": client_id or self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            out = self.post_json("/prompt", body)
        except ComfyError as e:
            raise ComfyError(f"prompt rejected: {e}") from None
        return out["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The /history entry of a finished prompt, None while it is queued or running."""
        return self.get_json("/history/" + urllib.parse.quote(prompt_id)).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.25, check: bool = True) -> dict:
        """Poll /history until the prompt finished; returns its entry
        ({"prompt", "outputs": {node_id: ui}, "status": {"status_str", "completed", "messages"}, "meta"}).

        With check (default) a prompt that ended in error or was interrupted raises ComfyError naming the node,
        the exception and the server log tail."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status") is not None:
                break
            if self.process.poll() is not None:
                raise ComfyError(f"server exited (rc={self.process.returncode}) while running {prompt_id}\n"
                                 + self.log_tail())
            if time.monotonic() > deadline:
                raise ComfyError(f"prompt {prompt_id} not finished after {timeout:.0f} s\n" + self.log_tail())
            time.sleep(poll)
        if check and entry["status"].get("status_str") != "success":
            raise ComfyError(f"prompt {prompt_id} failed: {self.describe_failure(entry)}\n" + self.log_tail())
        return entry

    def run(self, api_prompt: dict, timeout: float = 300.0, check: bool = True) -> dict:
        """post_prompt + wait."""
        return self.wait(self.post_prompt(api_prompt), timeout=timeout, check=check)

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """Download a file the way the browser does (GET /view?filename=&subfolder=&type=)."""
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self.request("GET", "/view?" + q)

    def output_files(self, entry: dict, node_id: str | None = None) -> list[Path]:
        """Local paths of the files listed in a history entry's outputs (images/audio/video/gifs...)."""
        dirs = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        paths = []
        for nid, ui in entry.get("outputs", {}).items():
            if node_id is not None and nid != str(node_id):
                continue
            for items in ui.values():
                if not isinstance(items, list):
                    continue
                for it in items:
                    if isinstance(it, dict) and "filename" in it:
                        paths.append(dirs.get(it.get("type", "output"), self.output_dir)
                                     / it.get("subfolder", "") / it["filename"])
        return paths

    @staticmethod
    def execution_error(entry: dict) -> dict:
        """The one execution_error message of a failed prompt's history entry (its data: node_id, node_type,
        exception_type, exception_message, ...); fails the test if the prompt did not fail exactly once."""
        assert entry["status"]["status_str"] == "error", entry["status"]
        errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
        assert len(errors) == 1, entry["status"]
        return errors[0]

    @staticmethod
    def describe_failure(entry: dict) -> str:
        for event, data in entry.get("status", {}).get("messages", []):
            if event == "execution_error":
                return (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                        f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}")
            if event == "execution_interrupted":
                return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
        return json.dumps(entry.get("status"))

    # -- log --------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- server log tail ({self.log_path}) ---\n{tail}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip(SKIP_REASON)
    comfy_dir = Path(comfy_dir).expanduser().resolve()
    if not (comfy_dir / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={comfy_dir} has no main.py: expected a ComfyUI checkout")
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable

    base = tmp_path_factory.mktemp("comfyui")
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(exist_ok=True)
    link = base / "custom_nodes" / PACKAGE_DIR_NAME
    try:
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    except OSError:  # no symlinks (e.g. Windows without privilege): copy the package
        shutil.copytree(REPO_ROOT, link, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "tests"))
    shutil.copytree(_HERE / "probe_nodes", base / "custom_nodes" / PROBE_NODES_DIR_NAME,
                    ignore=shutil.ignore_patterns("__pycache__"))

    port = _free_port()
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--base-directory", str(base), "--output-directory", str(base / "output"),
           # the default database lives in <checkout>/user/comfyui.db whatever --base-directory says
           "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}"]
    cmd += shlex.split(os.environ.get("COMFYUI_EXTRA_ARGS", ""))
    env = dict(os.environ)
    env.pop("SYNCAV_NO_COMFYUI", None)      # the unit tests' switch to stand-ins: the server is the real thing
    if os.environ.get("COMFYUI_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["COMFYUI_PYTHONPATH"]
    env["PYTHONUNBUFFERED"] = "1"

    log_path = base / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=comfy_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    server = ComfyServer(f"http://127.0.0.1:{port}", base, log_path, proc)
    try:
        timeout = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180"))
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with code {proc.returncode} during startup\n"
                            f"command: {shlex.join(cmd)}\n{server.log_tail()}")
            try:
                server.get_json("/object_info", timeout=10)
                break
            except (urllib.error.URLError, ConnectionError, socket.timeout, ComfyError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not answer /object_info within {timeout:.0f} s\n"
                            f"command: {shlex.join(cmd)}\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)
        log.close()
