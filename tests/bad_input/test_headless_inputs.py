"""Bad input for the headless runner (``python -m comfyui_syncav run``): arguments, and servers that misbehave.

Arguments (--timeout, --server, --out, the workflow file) are refused with exit 2 before anything is sent to the
server. A server that never answers, answers garbage, forgets the prompt, sends odd file names or breaks off a
download gets one clear error line; once a prompt is queued, the runner asks the server to interrupt it before it
gives up, and nothing is ever written outside --out.
"""

from __future__ import annotations

import errno
import io
import json
import tempfile
import time
import tracemalloc

import pytest
from bad_input.harness import BadInput, check_message, expect_cli_error, files_under
from fake_comfyui import (FORGET, HANG, SAMPLE_OBJECT_INFO, SAMPLE_UI_WORKFLOW, BigFile, FakeComfyUI, SilentServer,
                          finish, raw, send)

from comfyui_syncav.headless import client as client_module
from comfyui_syncav.headless.runner import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_SERVER_GONE, EXIT_TIMEOUT,
                                            run_workflow)

WORKFLOW = {
    "4": {"class_type": "KSampler", "_meta": {"title": "Sampler"}, "inputs": {"seed": 1, "steps": 2}},
    "7": {"class_type": "SaveVideo", "_meta": {"title": "Save Video"}, "inputs": {"filename_prefix": "SyncAV/clip"}},
}
VIDEO = {"filename": "clip_00001_.mp4", "subfolder": "SyncAV", "type": "output"}
FAST = {"reconnect_attempts": 3, "reconnect_backoff_seconds": 0.05, "idle_check_seconds": 0.2,
        "request_timeout_seconds": 2.0}


@pytest.fixture
def server():
    fake = FakeComfyUI(SAMPLE_OBJECT_INFO).start()
    yield fake
    fake.stop()


@pytest.fixture
def workflow_file(tmp_path):
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(WORKFLOW))
    return path


def _run(url, tmp_path, workflow=None, **options):
    """run_workflow into tmp_path/out: (exit code, stdout, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    options = {**FAST, "progress": False, "out_dir": tmp_path / "out", **options}
    started = time.monotonic()
    code = run_workflow(WORKFLOW if workflow is None else workflow, url, stdout=out, stderr=err, **options)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - started


def _the_error(case: BadInput, err: str, prefix: str = "error:") -> str:
    """The one ``error:`` (or ``warning:``) line of ``err``, checked against the case."""
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"{case.id}: expected one {prefix!r} line, got: {err!r}"
    return check_message(case, lines[0])


def _success_with(outputs: dict) -> list:
    return [send("executing", node="7"), send("executed", node="7", output=outputs["7"]),
            send("execution_success"), finish("success", outputs), send("executing", node=None)]


# ---- arguments: refused before anything reaches the server ------------------------------------------------------

ARGUMENTS = [
    (BadInput("timeout-nan", "cli run --timeout", r"--timeout: expected a positive number of seconds.*got nan"),
     ["--timeout", "nan"]),
    (BadInput("timeout-negative", "cli run --timeout", r"--timeout: expected a positive number.*got -5\.0"),
     ["--timeout", "-5"]),
    (BadInput("timeout-zero", "cli run --timeout", r"--timeout: expected a positive number.*got 0\.0"),
     ["--timeout", "0"]),
    (BadInput("server-bad-port", "cli run --server",
              r"--server 'http://127\.0\.0\.1:99999': invalid port '99999' \(expected a number from 1 to 65535\)"),
     ["--server", "http://127.0.0.1:99999"]),
    (BadInput("server-port-not-a-number", "cli run --server", r"--server 'localhost:81x': invalid port '81x'"),
     ["--server", "localhost:81x"]),
    (BadInput("server-ftp", "cli run --server",
              r"--server 'ftp://127\.0\.0\.1:8188': expected an http:// or https:// URL .*got the scheme 'ftp'"),
     ["--server", "ftp://127.0.0.1:8188"]),
    (BadInput("server-empty-host", "cli run --server", r"--server 'http://:8188': the URL has no host name"),
     ["--server", "http://:8188"]),
    (BadInput("server-empty", "cli run --server", r"--server: expected a URL such as http://127\.0\.0\.1:8188, got ''"),
     ["--server", ""]),
    (BadInput("server-space-in-host", "cli run --server", r"the host name 'exa mple' has characters a host name "
                                                          r"cannot have"),
     ["--server", "http://exa mple:8188"]),
    (BadInput("out-is-a-file", "cli run --out", r"--out .*not_a_folder: is a file; expected a folder"),
     ["--out", "{tmp}/not_a_folder"]),
    (BadInput("out-below-a-file", "cli run --out",
              r"--out .*not_a_folder.sub: .*not_a_folder is a file, not a folder; expected a path whose parents "
              r"are folders"),
     ["--out", "{tmp}/not_a_folder/sub"]),
    (BadInput("workflow-too-deep", "cli run WORKFLOW", r"deep\.json: not valid JSON \(maximum recursion depth"),
     ["--workflow", "{tmp}/deep.json"]),
    (BadInput("workflow-path-is-a-folder", "cli run WORKFLOW", r"run: cannot read the workflow \(.+\)"),
     ["--workflow", "{tmp}/run"]),
]


@pytest.mark.parametrize("case, extra", [pytest.param(c, e, id=c.id) for c, e in ARGUMENTS])
def test_bad_arguments_are_refused_before_the_server_is_asked(case, extra, server, workflow_file, tmp_path, capsys):
    (tmp_path / "not_a_folder").write_text("a file")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "run").mkdir()
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    workflow = extra[1] if extra[0] == "--workflow" else str(workflow_file)
    options = [] if extra[0] == "--workflow" else extra  # argparse: the last of a repeated option wins
    expect_cli_error(case, ["run", workflow, "--server", server.url, "--out", str(tmp_path / "out"),
                            "--timeout", "5", *options], capsys)
    assert server.prompts == [] and server.ws_connects == []  # nothing reached the server


def test_timeout_inf_means_no_limit_and_a_bare_host_port_is_http(server, tmp_path):
    server.script = [finish("success"), send("executing", node=None)]
    code, _, err, _ = _run(f"127.0.0.1:{server.port}", tmp_path, timeout_seconds=float("inf"))
    assert code == EXIT_OK, err
    assert len(server.prompts) == 1


PYTHON_ARGUMENTS = [
    (BadInput("timeout-not-a-number", "run_workflow timeout_seconds", r"--timeout: expected a positive number of "
                                                                      r"seconds.*got '5'"), {"timeout_seconds": "5"}),
    (BadInput("reconnect-attempts-negative", "run_workflow reconnect_attempts",
              r"reconnect_attempts: expected a whole number >= 0, got -1"), {"reconnect_attempts": -1}),
    (BadInput("overrides-a-bare-string", "run_workflow overrides",
              r"overrides: expected a list of NODE\.INPUT=VALUE strings, got '4\.seed=7'"), {"overrides": "4.seed=7"}),
    (BadInput("out-with-nul", "run_workflow out_dir", r"--out '.*a\\x00b': expected a folder path, got one with a "
                                                      r"NUL character"), {"out_dir": "{tmp}/a\0b"}),
    (BadInput("workflow-none", "run_workflow workflow", r"workflow: expected a path to a workflow JSON file or its "
                                                        r"dict, got None"), {"workflow": None}),
]


@pytest.mark.parametrize("case, options", [pytest.param(c, o, id=c.id) for c, o in PYTHON_ARGUMENTS])
def test_bad_python_arguments_are_refused_before_the_server_is_asked(case, options, server, tmp_path):
    options = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) and k == "out_dir" else v
               for k, v in options.items()}
    workflow = options.pop("workflow", WORKFLOW)
    out, err = io.StringIO(), io.StringIO()
    code = run_workflow(workflow, server.url, stdout=out, stderr=err, **{"out_dir": tmp_path / "out", **options})
    assert code == EXIT_BAD_INPUT
    _the_error(case, err.getvalue())
    assert server.prompts == [] and server.ws_connects == []


def test_an_output_folder_that_cannot_be_written_is_refused_before_queueing(server, tmp_path, monkeypatch):
    case = BadInput("out-not-writable", "run_workflow out_dir",
                    r"--out .*out: cannot create a file in folder .* \(Permission denied\); expected a writable folder")

    def refuse(*args, **kwargs):  # chmod does not stop root: refuse as a read-only folder would
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err, _ = _run(server.url, tmp_path)
    assert code == EXIT_BAD_INPUT
    _the_error(case, err)
    assert server.prompts == []


# ---- servers that do not answer ---------------------------------------------------------------------------------

SILENT = [
    (BadInput("silent-server-timeout", "run vs a server that never answers",
              r"timed out after 1 s \(--timeout\) while opening the websocket; no prompt was queued"),
     {"timeout_seconds": 1.0}, EXIT_TIMEOUT),
    (BadInput("silent-server-ui-workflow", "run vs a server that never answers",
              r"timed out after 1 s \(--timeout\) while asking the server for its node definitions "
              r"\(GET /object_info\); no prompt was queued"),
     {"timeout_seconds": 1.0, "workflow": SAMPLE_UI_WORKFLOW}, EXIT_TIMEOUT),
    (BadInput("silent-server-no-timeout", "run vs a server that never answers",
              r"cannot reach ComfyUI at http://127\.0\.0\.1:\d+ \(GET /ws \(websocket\): no answer within 0\.5 s\); "
              r"is the server running\?"),
     {"request_timeout_seconds": 0.5}, EXIT_SERVER_GONE),
]


@pytest.mark.parametrize("case, options, exit_code", [pytest.param(*c, id=c[0].id) for c in SILENT])
def test_a_server_that_accepts_and_never_answers_is_given_up(case, options, exit_code, tmp_path):
    silent = SilentServer().start()
    try:
        code, _, err, seconds = _run(silent.url, tmp_path, **options)
    finally:
        silent.stop()
    assert code == exit_code
    _the_error(case, err)
    assert seconds < 2.0


# ---- servers that answer garbage --------------------------------------------------------------------------------

def _html_prompt(fake):
    page = "<html>\n<body><h1>500 Internal Server Error</h1></body>\n</html>"
    fake.replies["POST /prompt"] = (500, page, "text/html")


def _text_prompt(fake):
    fake.replies["POST /prompt"] = (200, "OK", "text/plain")


def _no_prompt_id(fake):
    fake.replies["POST /prompt"] = (200, json.dumps({"number": 1, "node_errors": {}}), "application/json")


def _html_object_info(fake):
    fake.replies["GET /object_info"] = (200, "<html>login</html>", "text/html")


def _object_info_of_another_shape(fake):
    fake.object_info = {**SAMPLE_OBJECT_INFO, "Sampler": {**SAMPLE_OBJECT_INFO["Sampler"], "input_order": 5}}


def _no_websocket(fake):
    fake.replies["GET /ws"] = (404, "Not Found", "text/plain")


def _garbage_frame(fake):
    fake.script = [send("executing", node="4"), raw("this is not JSON"), HANG]


def _frame_of_another_shape(fake):
    fake.script = [send("executing", node="4"), raw("[1, 2, 3]"), HANG]


def _history_of_another_shape(fake):
    fake.replies["GET /history"] = (200, "[1, 2]", "application/json")
    fake.script = [send("executing", node="4"), HANG]  # quiet: the runner asks /history


def _queue_of_another_shape(fake):
    fake.replies["GET /queue"] = (200, json.dumps({"queue_running": "all of them"}), "application/json")
    fake.script = [send("executing", node="4"), HANG]


def _closes_at_once(fake):
    fake.ws_close_at_once = True
    fake.script = [HANG]


def _forgets_while_quiet(fake):
    fake.script = [send("executing", node="4"), FORGET, HANG]


GARBAGE = [
    (BadInput("prompt-http-500-html", "run vs POST /prompt",
              r"ComfyUI at http://\S+ answered with an error: POST /prompt: expected HTTP 200, got HTTP 500: "
              r"'<html> <body><h1>500 Internal Server Error.*; nothing was queued"), _html_prompt, {}, None),
    (BadInput("prompt-reply-not-json", "run vs POST /prompt",
              r"does not answer as ComfyUI does: POST /prompt: expected JSON, got 'OK'; nothing was queued"),
     _text_prompt, {}, None),
    (BadInput("prompt-reply-without-id", "run vs POST /prompt",
              r"POST /prompt: expected an object with a 'prompt_id', got '\{\"number\": 1"), _no_prompt_id, {}, None),
    (BadInput("object-info-html", "run vs GET /object_info",
              r"GET /object_info: expected JSON, got '<html>login</html>'; nothing was queued"), _html_object_info,
     {"workflow": SAMPLE_UI_WORKFLOW}, None),
    (BadInput("object-info-of-another-shape", "run vs GET /object_info",
              r"GET /object_info, node 'Sampler' 'input_order': expected \{'required': \[names\], 'optional': "
              r"\[names\]\}, got '5'; nothing was queued"), _object_info_of_another_shape,
     {"workflow": SAMPLE_UI_WORKFLOW}, None),
    (BadInput("ws-not-a-websocket", "run vs GET /ws",
              r"does not answer as ComfyUI does: GET /ws: expected a websocket handshake \(HTTP 101\), got "
              r"'HTTP 404 \(Invalid response status\)'; nothing was queued"), _no_websocket, {}, None),
    (BadInput("ws-frame-not-json", "run vs the websocket",
              r"does not answer as ComfyUI does: websocket message: expected JSON, got 'this is not JSON'; asked the "
              r"server to interrupt prompt [0-9a-f-]{36}$"), _garbage_frame, {}, True),
    (BadInput("ws-frame-a-list", "run vs the websocket",
              r"websocket message: expected an object \{'type': str, 'data': \{...\}\}, got '\[1, 2, 3\]'; asked the "
              r"server to interrupt"), _frame_of_another_shape, {}, True),
    (BadInput("history-a-list", "run vs GET /history",
              r"GET /history/[0-9a-f-]{36}: expected an object \{prompt_id: entry\}, got '\[1, 2\]'; asked the "
              r"server to interrupt"), _history_of_another_shape, {}, True),
    (BadInput("queue-of-another-shape", "run vs GET /queue",
              r"GET /queue: expected \{'queue_running': \[\[number, prompt_id, ...\]\].*got '\{\"queue_running\": "
              r"\"all of them\"\}'; asked the server to interrupt"), _queue_of_another_shape, {}, True),
    (BadInput("ws-closes-at-once", "run vs the websocket",
              r"lost the connection to ComfyUI at \S+ and could not reconnect \(3 attempts .*websocket closed.*\); "
              r"asked the server to interrupt"), _closes_at_once, {}, True),
    (BadInput("prompt-forgotten-while-quiet", "run vs GET /history + /queue",
              r"the server at \S+ no longer knows prompt [0-9a-f-]{36} \(it was restarted\?\)"),
     _forgets_while_quiet, {}, False),
]


@pytest.mark.parametrize("case, setup, options, interrupted", [pytest.param(*c, id=c[0].id) for c in GARBAGE])
def test_a_server_that_answers_garbage_gets_one_clear_error(case, setup, options, interrupted, server, tmp_path):
    setup(server)
    code, out, err, seconds = _run(server.url, tmp_path, **options)
    assert code == EXIT_SERVER_GONE
    _the_error(case, err)
    assert "Traceback" not in err and out == ""
    if interrupted is None:  # nothing was queued: nothing to interrupt
        assert server.interrupts == []
    elif interrupted:  # the prompt it had queued is not left running
        prompt_id = server.queue_deletes[0]["delete"][0]
        assert server.interrupts == [{"prompt_id": prompt_id}]
    else:  # the server no longer has the prompt: nothing to interrupt
        assert server.interrupts == [] and len(server.prompts) == 1
    assert seconds < 3.0


def test_a_malformed_definition_of_a_node_the_workflow_does_not_use_is_no_error(server, tmp_path):
    server.object_info = {**SAMPLE_OBJECT_INFO, "SomeCustomNode": {"input": "anything", "input_order": 5}}
    server.script = [finish("success"), send("executing", node=None)]
    code, _, err, _ = _run(server.url, tmp_path, workflow=SAMPLE_UI_WORKFLOW)
    assert code == EXIT_OK, err
    assert len(server.prompts) == 1


def test_a_non_numeric_progress_message_is_ignored_and_the_run_goes_on(server, tmp_path):
    case = BadInput("progress-not-numeric", "run vs a progress message",
                    r"warning: ignoring progress messages .* not numbers >= 0 \(got value 'x', max None\)")
    server.files[("output", "SyncAV", VIDEO["filename"])] = b"clip"
    server.script = [send("executing", node="4"), send("progress", node="4", value="x", max=None),
                     send("progress", node="4", value=True, max=float("nan")),
                     *_success_with({"7": {"images": [VIDEO]}})]
    code, out, err, _ = _run(server.url, tmp_path, progress=True)
    assert code == EXIT_OK, err  # only the bar needed those numbers: the prompt ran and its file came
    _the_error(case, err, prefix="warning:")
    assert (tmp_path / "out" / "SyncAV" / VIDEO["filename"]).read_bytes() == b"clip"


def test_a_history_that_never_lists_the_prompt_takes_the_websockets_outputs(server, tmp_path):
    case = BadInput("history-never-lists-prompt", "run vs GET /history",
                    r"warning: GET /history/[0-9a-f-]{36} does not list the prompt the websocket says has ended; "
                    r"taking its outputs from the websocket messages")
    server.replies["GET /history"] = (200, "{}", "application/json")
    server.files[("output", "SyncAV", VIDEO["filename"])] = b"clip"
    server.script = _success_with({"7": {"images": [VIDEO]}})
    code, out, err, seconds = _run(server.url, tmp_path)
    assert code == EXIT_OK, err
    _the_error(case, err, prefix="warning:")
    assert (tmp_path / "out" / "SyncAV" / VIDEO["filename"]).read_bytes() == b"clip"
    assert seconds < 2.0


# ---- output file names and downloads ----------------------------------------------------------------------------

NAMES = [
    (BadInput("filename-with-nul", "run vs /history outputs",
              r"output of node 7 \(SaveVideo, 'Save Video'\): the server's file name 'a\\x00b\.mp4' \(subfolder ''\): "
              r"it holds a NUL or control character; not written"), {"filename": "a\0b.mp4", "subfolder": ""}),
    (BadInput("filename-absolute", "run vs /history outputs",
              r"file name '/tmp/evil\.mp4' \(subfolder ''\): a file name cannot hold a path separator"),
     {"filename": "/tmp/evil.mp4", "subfolder": ""}),
    (BadInput("subfolder-absolute", "run vs /history outputs",
              r"file name 'evil\.mp4' \(subfolder '/tmp'\): an absolute subfolder would leave the output folder"),
     {"filename": "evil.mp4", "subfolder": "/tmp"}),
    (BadInput("subfolder-dotdot-backslash", "run vs /history outputs",
              r"file name 'evil\.mp4' \(subfolder 'a\\\\\.\.\\\\\.\.'\): '\.\.' would leave the output folder"),
     {"filename": "evil.mp4", "subfolder": "a\\..\\.."}),
    (BadInput("filename-dotdot", "run vs /history outputs", r"file name '\.\.' \(subfolder 'x'\): '\.\.' would leave"),
     {"filename": "..", "subfolder": "x"}),
    (BadInput("filename-empty", "run vs /history outputs", r"file name '' \(subfolder ''\): '' is not a file name"),
     {"filename": "", "subfolder": ""}),
    (BadInput("filename-not-text", "run vs /history outputs",
              r"file name 5 \(subfolder ''\): expected text for 'filename', 'subfolder' and 'type', got int, str"),
     {"filename": 5, "subfolder": ""}),
    (BadInput("filename-too-long", "run vs /history outputs", r"a name is longer than 200 bytes"),
     {"filename": "é" * 150 + ".mp4", "subfolder": ""}),
]


@pytest.mark.parametrize("case, ref", [pytest.param(c, r, id=c.id) for c, r in NAMES])
def test_odd_output_file_names_are_never_written(case, ref, server, tmp_path):
    ref = {**ref, "type": "output"}
    if isinstance(ref["filename"], str):
        server.files[("output", ref["subfolder"], ref["filename"])] = b"evil"
    server.script = _success_with({"7": {"images": [ref, VIDEO]}})
    server.files[("output", "SyncAV", VIDEO["filename"])] = b"good"
    before = files_under(tmp_path)
    code, out, err, _ = _run(server.url, tmp_path)
    assert code == EXIT_FAILED  # not every file came: not a success
    _the_error(case, err)
    # the one safe file is there; nothing else was written, in --out or anywhere near it
    assert files_under(tmp_path) - before == {tmp_path / "out" / "SyncAV" / VIDEO["filename"]}
    assert out.count("wrote ") == 1


def test_a_view_answer_naming_another_file_cannot_move_it_out_of_the_folder(server, tmp_path):
    # the server's Content-Disposition tries ../ : the local name comes from the output reference only
    server.files[("output", "SyncAV", VIDEO["filename"])] = BigFile(
        1000, headers=(("Content-Disposition", 'attachment; filename="../../escaped.mp4"'),))
    server.script = _success_with({"7": {"images": [VIDEO]}})
    before = files_under(tmp_path.parent)
    code, out, err, _ = _run(server.url, tmp_path)
    assert code == EXIT_OK, err
    assert files_under(tmp_path.parent) - before == {tmp_path / "out" / "SyncAV" / VIDEO["filename"]}
    assert (tmp_path / "out" / "SyncAV" / VIDEO["filename"]).read_bytes() == BigFile.pattern(0, 1000)


def test_a_download_that_breaks_off_leaves_no_partial_file(server, tmp_path):
    case = BadInput("download-breaks-off", "run vs GET /view",
                    r"could not download 'clip_00001_\.mp4' of node 7 \(SaveVideo, 'Save Video'\): "
                    r"GET /view\?filename='clip_00001_\.mp4': the download broke off after \d+ bytes of 4194304")
    server.files[("output", "SyncAV", VIDEO["filename"])] = BigFile(4 << 20, break_after=1 << 20)
    server.script = _success_with({"7": {"images": [VIDEO]}})
    code, out, err, _ = _run(server.url, tmp_path)
    assert code == EXIT_SERVER_GONE
    _the_error(case, err)
    assert files_under(tmp_path / "out") == set()  # no half file, no temporary file left behind


def test_timeout_bounds_the_downloads_too(server, tmp_path):
    case = BadInput("timeout-while-downloading", "run --timeout vs a slow GET /view",
                    r"timed out after 1 s \(--timeout\) while downloading the outputs of prompt [0-9a-f-]{36} \(it had "
                    r"finished\); the files written so far are kept")
    server.files[("output", "", "first.flac")] = b"first"
    server.files[("output", "SyncAV", VIDEO["filename"])] = BigFile(20 << 20, pause_seconds=0.2)  # 4 s to send
    first = {"filename": "first.flac", "subfolder": "", "type": "output"}
    server.script = _success_with({"7": {"images": [first, VIDEO]}})
    code, out, err, seconds = _run(server.url, tmp_path, timeout_seconds=1.0)
    assert code == EXIT_TIMEOUT
    _the_error(case, err)
    assert files_under(tmp_path / "out") == {tmp_path / "out" / "first.flac"}  # and no partial second file
    assert seconds < 2.0


def test_a_missing_file_on_the_server_is_named(server, tmp_path):
    case = BadInput("view-404", "run vs GET /view",
                    r"could not download 'clip_00001_\.mp4' of node 7 .*: GET /view\?filename='clip_00001_\.mp4': "
                    r"expected HTTP 200, got HTTP 404")
    server.script = _success_with({"7": {"images": [VIDEO]}})
    code, out, err, _ = _run(server.url, tmp_path)
    assert code == EXIT_FAILED
    _the_error(case, err)


def test_a_huge_download_is_streamed_to_disk(server, tmp_path):
    size = 48 << 20
    server.files[("output", "SyncAV", VIDEO["filename"])] = BigFile(size)
    server.script = _success_with({"7": {"images": [VIDEO]}})
    tracemalloc.start()
    try:
        code, out, err, _ = _run(server.url, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == EXIT_OK, err
    path = tmp_path / "out" / "SyncAV" / VIDEO["filename"]
    assert path.stat().st_size == size
    with open(path, "rb") as handle:  # spot checks of the content at chunk boundaries
        for offset in (0, (1 << 20) - 3, 17 << 20, size - 5):
            handle.seek(offset)
            assert handle.read(5) == BigFile.pattern(offset, 5)
    assert peak < size // 4, f"peak Python memory {peak} bytes for a {size}-byte download"


LOCAL = [
    (BadInput("disk-full", "run --out while downloading",
              r"--out .*out: cannot write .*clip_00001_\.mp4 \(No space left on device\)"), "disk full"),
    (BadInput("subfolder-is-a-file", "run --out while downloading",
              r"--out .*out: cannot write .*SyncAV.clip_00001_\.mp4 \(.*out.SyncAV is a file, not a folder\)"),
     "file in the way"),
]


@pytest.mark.parametrize("case, what", [pytest.param(c, w, id=c.id) for c, w in LOCAL])
def test_local_write_errors_are_bad_out_not_a_lost_server(case, what, server, tmp_path, monkeypatch):
    server.files[("output", "SyncAV", VIDEO["filename"])] = b"clip" * 1000
    server.script = _success_with({"7": {"images": [VIDEO]}})
    if what == "disk full":
        class FullDisk(io.BytesIO):
            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(client_module, "open", lambda *args, **kwargs: FullDisk(), raising=False)
    else:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "SyncAV").write_text("a file where the subfolder should be")
    code, out, err, _ = _run(server.url, tmp_path)
    assert code == EXIT_BAD_INPUT
    _the_error(case, err)
    assert not list((tmp_path / "out").rglob("*.tmp*"))  # the temporary file is gone
