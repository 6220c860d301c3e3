"""A short run of tests/kill_resume.py: a real DPO training process killed with SIGKILL 3 times (at random moments and
during a save), resumed each time, must leave loadable files and end bit-identical to a straight run. The 20-kill
version is ``python tests/kill_resume.py --kills 20``."""

import signal
import time

import pytest

from comfyui_syncav.runtime.lora import load_lora
from comfyui_syncav.files.safetensors_io import read_header
from kill_resume import CHECKPOINT, PUBLISHED, main, start

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def test_three_kills_then_resume_equal_the_straight_run(capsys):
    assert main(["--kills", "3", "--steps", "7", "--seed", "1"]) == 0
    result = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(item.split("=") for item in result.split()[1:])
    assert fields["identical"] == "1" and float(fields["max_abs_diff"]) == 0.0, result
    assert int(fields["loads_ok"]) == int(fields["kills"]) >= 1, result


def test_sigterm_saves_the_last_completed_step_like_ctrl_c(tmp_path):
    process = start("dpo", tmp_path, steps=50, save_every=100)
    completed = 0
    deadline = time.monotonic() + 300
    while completed < 2 and time.monotonic() < deadline:      # let two steps complete, then stop it politely
        line = process.stdout.readline()
        if line.startswith("step "):
            completed = int(line.split()[1])
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode != 0 and "TrainingTerminated" in err, err[-2000:]
    printed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")]
    last_step = printed[-1] if printed else completed
    _, header = read_header(tmp_path / CHECKPOINT)
    assert int(header["step"]) == last_step                  # saved on the way out, not only every save_every
    _, published = load_lora(tmp_path / PUBLISHED)
    assert int(published["step"]) == last_step
    assert not [p for p in tmp_path.glob(".*") if p.is_file()], "a temporary file was left behind"
