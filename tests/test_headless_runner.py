"""The headless runner against a fake ComfyUI server: success, rejections, failures, lost connections, timeouts."""

import copy
import io
import json
import socket
import time

import pytest
from fake_comfyui import (DROP, FORGET, HANG, SAMPLE_API_PROMPT, SAMPLE_OBJECT_INFO, SAMPLE_UI_WORKFLOW, SHUTDOWN,
                          FakeComfyUI, finish, pause, send)

from comfyui_syncav.cli import main
from comfyui_syncav.headless.runner import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SERVER_GONE,
                                            EXIT_TIMEOUT, run_workflow)

API_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "_meta": {"title": "Frames"}, "inputs": {"width": 64, "height": 48}},
    "4": {"class_type": "KSampler", "_meta": {"title": "Sampler"},
          "inputs": {"seed": 1, "steps": 20, "positive": ["1", 0]}},
    "7": {"class_type": "SaveVideo", "_meta": {"title": "Save Video"},
          "inputs": {"video": ["4", 0], "filename_prefix": "SyncAV/clip"}},
}
OBJECT_INFO = {
    "EmptyImage": {"input": {"required": {"width": ["INT", {}], "height": ["INT", {}]},
                             "optional": {"color": ["INT", {}]}}},
    "KSampler": {"input": {"required": {"seed": ["INT", {}], "steps": ["INT", {}], "positive": ["IMAGE", {}]}}},
    "SaveVideo": {"input": {"required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {}]}}},
}
VIDEO = {"filename": "clip_00001_.mp4", "subfolder": "SyncAV", "type": "output"}
AUDIO = {"filename": "clip_00001_.flac", "subfolder": "", "type": "output"}


@pytest.fixture
def server():
    fake = FakeComfyUI(OBJECT_INFO).start()
    yield fake
    fake.stop()


@pytest.fixture
def workflow_file(tmp_path):
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(API_WORKFLOW))
    return path


def _run(server, workflow, tmp_path, *overrides, **options):
    out, err = io.StringIO(), io.StringIO()
    options = {"reconnect_attempts": 3, "reconnect_backoff_seconds": 0.05, "idle_check_seconds": 5.0, **options}
    started = time.monotonic()
    code = run_workflow(workflow, server.url if server else options.pop("url"), overrides,
                        out_dir=tmp_path / "out", stdout=out, stderr=err, **options)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - started


def _successful_script(extra_outputs=None):
    outputs = {"7": {"images": [VIDEO], "animated": [True]}, **(extra_outputs or {})}
    return [
        send("execution_start"), send("execution_cached", nodes=["1"]),
        send("executing", node="4", display_node="4"),
        *[send("progress", node="4", value=v, max=3) for v in (1, 2, 3)],
        send("executing", node="7", display_node="7"),
        send("executed", node="7", display_node="7", output=outputs["7"]),
        send("execution_success"),
        finish("success", outputs),
        send("executing", node=None),
    ]


def test_success_downloads_every_output_with_its_bytes(server, workflow_file, tmp_path):
    video, audio = bytes(range(256)) * 40, b"fLaC" + bytes(1000)
    server.files[("output", "SyncAV", VIDEO["filename"])] = video
    server.files[("output", "", AUDIO["filename"])] = audio
    # node 9's audio was served from the cache: no "executed" message, only the history has it
    server.script = _successful_script({"9": {"audio": [AUDIO]}})
    # messages about another prompt (interruptions are broadcast to every client) are not about ours
    server.script[1:1] = [send("execution_interrupted", prompt_id="someone-else", node_id="4", node_type="KSampler",
                               executed=[]), send("executing", node=None, prompt_id="someone-else")]
    code, out, err, seconds = _run(server, workflow_file, tmp_path)
    assert code == EXIT_OK, err
    assert (tmp_path / "out" / "SyncAV" / VIDEO["filename"]).read_bytes() == video
    assert (tmp_path / "out" / AUDIO["filename"]).read_bytes() == audio
    assert f"({len(video)} bytes, node 7 (SaveVideo, 'Save Video'))" in out
    assert "node 4 KSampler: 100%" in err and "3/3" in err  # the progress bar of node 4 reached its end
    body = server.prompts[0]
    assert body["prompt"] == API_WORKFLOW and body["client_id"] == server.ws_connects[0]
    assert seconds < 2.0


def test_validation_error_names_node_class_and_input(server, workflow_file, tmp_path):
    server.reject = (400, {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "", "extra_info": {}},
        "node_errors": {"4": {"class_type": "KSampler", "dependent_outputs": ["7"], "errors": [
            {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "steps",
             "extra_info": {"input_name": "steps"}},
            {"type": "required_input_missing", "message": "Required input is missing", "details": "model",
             "extra_info": {"input_name": "model"}}]}}})
    code, out, err, _ = _run(server, workflow_file, tmp_path)
    assert code == EXIT_FAILED
    assert "rejected the prompt: Prompt outputs failed validation" in err
    assert "node 4 (KSampler, 'Sampler'), input 'steps': Value 0 smaller than min of 1" in err
    assert "node 4 (KSampler, 'Sampler'), input 'model': Required input is missing" in err
    assert out == ""


def test_execution_error_prints_node_class_and_exception(server, workflow_file, tmp_path):
    error = {"node_id": "4", "node_type": "KSampler", "executed": ["1"], "exception_type": "RuntimeError",
             "exception_message": "shapes 3 and 4 do not match",
             "traceback": ['  File "nodes.py", line 1, in sample\n    x = a @ b\n'], "current_inputs": {},
             "current_outputs": []}
    server.script = [send("executing", node="4"), send("execution_error", **error),
                     finish("error", messages=[["execution_error", error]]), send("executing", node=None)]
    code, out, err, _ = _run(server, workflow_file, tmp_path)
    assert code == EXIT_FAILED
    assert "error: node 4 (KSampler, 'Sampler') failed: RuntimeError: shapes 3 and 4 do not match" in err
    assert "x = a @ b" in err


def test_interruption_exits_nonzero_and_says_so(server, workflow_file, tmp_path):
    interrupted = {"node_id": "4", "node_type": "KSampler", "executed": []}
    server.script = [send("executing", node="4"), send("progress", node="4", value=1, max=10),
                     send("execution_interrupted", **interrupted),
                     finish("error", messages=[["execution_interrupted", interrupted]]), send("executing", node=None)]
    code, out, err, _ = _run(server, workflow_file, tmp_path)
    assert code == EXIT_INTERRUPTED
    assert "was interrupted at node 4 (KSampler, 'Sampler')" in err


def test_server_that_goes_away_is_retried_then_reported(server, workflow_file, tmp_path):
    server.script = [send("executing", node="4"), send("progress", node="4", value=1, max=10), SHUTDOWN]
    code, out, err, seconds = _run(server, workflow_file, tmp_path)
    assert code == EXIT_SERVER_GONE
    assert err.count("reconnect attempt") == 3
    assert f"lost the connection to ComfyUI at {server.url} and could not reconnect (3 attempts" in err
    assert seconds < 2.0


def test_dropped_websocket_with_the_prompt_finished_meanwhile_succeeds(server, workflow_file, tmp_path):
    server.files[("output", "SyncAV", VIDEO["filename"])] = b"video bytes"
    server.script = [send("executing", node="4"), finish("success", {"7": {"images": [VIDEO]}}), DROP]
    code, out, err, _ = _run(server, workflow_file, tmp_path)
    assert code == EXIT_OK, err
    assert "the prompt ended while the connection was down" in err
    assert len(server.ws_connects) == 2 and len(set(server.ws_connects)) == 1  # same client id after reconnecting
    assert (tmp_path / "out" / "SyncAV" / VIDEO["filename"]).read_bytes() == b"video bytes"


def test_dropped_websocket_while_still_running_keeps_following(server, workflow_file, tmp_path):
    server.files[("output", "SyncAV", VIDEO["filename"])] = b"v"
    server.script = [send("executing", node="4"), DROP, pause(0.3), *_successful_script()[4:]]
    code, out, err, _ = _run(server, workflow_file, tmp_path)
    assert code == EXIT_OK, err
    assert "still queued or running" in err and "3/3" in err  # progress after the reconnect was followed
    assert (tmp_path / "out" / "SyncAV" / VIDEO["filename"]).read_bytes() == b"v"


def test_restarted_server_that_forgot_the_prompt_is_reported(server, workflow_file, tmp_path):
    server.script = [send("executing", node="4"), FORGET, DROP]
    code, out, err, _ = _run(server, workflow_file, tmp_path)
    assert code == EXIT_SERVER_GONE
    assert f"the server at {server.url} no longer knows prompt" in err


def test_a_missed_end_message_is_found_through_the_history(server, workflow_file, tmp_path):
    server.files[("output", "SyncAV", VIDEO["filename"])] = b"late"
    # the prompt ends but the websocket never says so (and stays open)
    server.script = [send("executing", node="4"), finish("success", {"7": {"images": [VIDEO]}}), HANG]
    code, out, err, seconds = _run(server, workflow_file, tmp_path, idle_check_seconds=0.2)
    assert code == EXIT_OK, err
    assert (tmp_path / "out" / "SyncAV" / VIDEO["filename"]).read_bytes() == b"late"
    assert seconds < 2.0


def test_timeout_interrupts_the_prompt_and_exits_nonzero(server, workflow_file, tmp_path):
    server.script = [send("executing", node="4"), send("progress", node="4", value=1, max=100), HANG]
    code, out, err, seconds = _run(server, workflow_file, tmp_path, timeout_seconds=0.5)
    assert code == EXIT_TIMEOUT
    assert "timed out after 0.5 s" in err
    prompt_id = server.queue_deletes[0]["delete"][0]
    assert server.interrupts == [{"prompt_id": prompt_id}]
    assert 0.5 <= seconds < 2.0


def test_ui_workflow_is_converted_with_the_servers_object_info(tmp_path):
    fake = FakeComfyUI(SAMPLE_OBJECT_INFO).start()
    try:
        fake.script = [send("execution_success"), finish("success"), send("executing", node=None)]
        path = tmp_path / "workflow.json"
        path.write_text(json.dumps(SAMPLE_UI_WORKFLOW))
        code, out, err, _ = _run(fake, path, tmp_path)
    finally:
        fake.stop()
    assert code == EXIT_OK, err
    assert fake.prompts[0]["prompt"] == SAMPLE_API_PROMPT
    assert "produced no files" in err


def test_set_overrides_by_id_and_title_with_json_or_string_values(server, workflow_file, tmp_path):
    server.script = [finish("success"), send("executing", node=None)]
    code, _, err, _ = _run(server, workflow_file, tmp_path, "4.seed=7", "Sampler.steps=3", "Frames.color=255",
                           "7.filename_prefix=runs/a red ball", '1.width="64"')
    assert code == EXIT_OK, err
    sent = server.prompts[0]["prompt"]
    assert sent["4"]["inputs"] == {"seed": 7, "steps": 3, "positive": ["1", 0]}
    assert sent["1"]["inputs"] == {"width": "64", "height": 48, "color": 255}  # optional input known from object_info
    assert sent["7"]["inputs"]["filename_prefix"] == "runs/a red ball"


def test_set_with_unknown_node_or_input_lists_the_choices(server, workflow_file, tmp_path):
    code, _, err, _ = _run(server, workflow_file, tmp_path, "Nope.seed=1")
    assert code == EXIT_BAD_INPUT
    assert "no node has the id or title 'Nope'" in err and "4 (KSampler, 'Sampler')" in err
    code, _, err, _ = _run(server, workflow_file, tmp_path, "4.sed=1")
    assert code == EXIT_BAD_INPUT
    assert "has no input 'sed'; its inputs are: seed, steps, positive" in err
    code, _, err, _ = _run(server, workflow_file, tmp_path, "4seed=1")
    assert code == EXIT_BAD_INPUT and "expected NODE.INPUT=VALUE" in err
    assert server.prompts == []  # nothing was queued


def test_no_server_is_a_clear_failure(workflow_file, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err, _ = _run(None, workflow_file, tmp_path, url=f"http://127.0.0.1:{port}")
    assert code == EXIT_SERVER_GONE
    assert f"cannot reach ComfyUI at http://127.0.0.1:{port}" in err and "is the server running?" in err


def test_command_line_runs_a_workflow(server, workflow_file, tmp_path, capsys):
    server.files[("output", "SyncAV", VIDEO["filename"])] = b"clip"
    server.script = _successful_script()
    out_dir = tmp_path / "cli"
    assert main(["run", str(workflow_file), "--server", server.url, "--out", str(out_dir), "--set", "4.seed=9",
                 "--timeout", "30"]) == EXIT_OK
    assert (out_dir / "SyncAV" / VIDEO["filename"]).read_bytes() == b"clip"
    assert server.prompts[0]["prompt"]["4"]["inputs"]["seed"] == 9
    assert f"wrote {out_dir / 'SyncAV' / VIDEO['filename']}" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"inputs": {}}}))
    assert main(["run", str(bad), "--server", server.url]) == EXIT_BAD_INPUT
    assert "API-format node '1' should be an object with 'class_type'" in capsys.readouterr().err


def test_unsafe_output_names_are_not_written_outside_the_folder(server, workflow_file, tmp_path):
    evil = {"filename": "x.png", "subfolder": "../../etc", "type": "output"}
    server.files[("output", "../../etc", "x.png")] = b"nope"
    server.script = [finish("success", {"7": {"images": [evil]}}), send("executing", node=None)]
    code, out, err, _ = _run(server, copy.deepcopy(API_WORKFLOW), tmp_path)
    assert code == EXIT_FAILED  # the run's files are not all there: not a success
    assert "error: output of node 7 (SaveVideo, 'Save Video'): the server's file name 'x.png' (subfolder " \
           "'../../etc'): '..' would leave the output folder; not written" in err and out == ""
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "etc" / "x.png").exists()
