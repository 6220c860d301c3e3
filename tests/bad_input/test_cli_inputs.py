"""Bad input for the command line (``generate``, ``eval``, ``train-default``, ``convert``, ``bouncebench``) and its
output files.

Every case is refused with exit 2 and one ``error:`` line naming the argument, what was expected and what came,
BEFORE any generation, training, evaluation, conversion or clip writing starts: the functions that do that work are
replaced by ones that fail the test if reached, nothing new appears on disk, and each case takes well under a
second. Memory limits are pinned (``available_memory_bytes``) so the estimate cases give the same answer on any
machine.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch
from bad_input.harness import BadInput, expect_cli_error, files_under, params

from comfyui_syncav.ovi import convert as convert_module
from comfyui_syncav.generation import generate as generate_module
from comfyui_syncav.generation.pipeline import EMBEDDED_MODEL_FILE
from comfyui_syncav.bouncebench import export as bouncebench_module
from comfyui_syncav.train import embedded_training as training_module
from comfyui_syncav.bouncebench import evaluation as evaluation_module  # noqa: F401  (imported before the timing)

MEMORY_LIMIT_BYTES = 4 * 2 ** 30
SECONDS_PER_CASE = 1.0


class WorkStarted(AssertionError):
    """Raised by the stand-ins of the long-running functions: the input got past every check."""


def _work_started(*_args, **_kwargs):
    raise WorkStarted("the command started its work instead of refusing the input")


@pytest.fixture(autouse=True)
def _no_work(monkeypatch):
    monkeypatch.setattr(generate_module, "sample_av", _work_started)          # generate and eval
    monkeypatch.setattr(training_module, "train", _work_started)              # train-default
    monkeypatch.setattr(bouncebench_module, "write_dataset", _work_started)   # bouncebench
    monkeypatch.setattr(convert_module, "convert_checkpoint", _work_started)  # convert
    monkeypatch.setattr(generate_module, "available_memory_bytes",
                        lambda: (float(MEMORY_LIMIT_BYTES), "memory (pinned by the test)"))


@pytest.fixture(scope="module")
def lora_bytes(tmp_path_factory) -> bytes:
    """A valid LoRA of the embedded default (random, small), as bytes to copy into each case's folder."""
    from comfyui_syncav.runtime.lora import LoraSpec, add_lora, save_lora
    from comfyui_syncav.generation.pipeline import build_embedded_default

    model = build_embedded_default().model
    add_lora(model, LoraSpec(rank=2, targets=("ffn",)))
    path = tmp_path_factory.mktemp("lora") / "l.safetensors"
    save_lora(model, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def other_network_bytes(tmp_path_factory) -> bytes:
    """A joint model of the ``tiny`` preset as is (not fitted to the embedded codecs): another network."""
    from comfyui_syncav.model.checkpoint import save_joint_model
    from comfyui_syncav.model.config import get_preset
    from comfyui_syncav.model.joint import JointModel

    path = tmp_path_factory.mktemp("other") / "other.safetensors"
    save_joint_model(JointModel(get_preset("tiny")), path, {})
    return path.read_bytes()


def _needs_proc():
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc on this system")


def _needs_fifo():
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")


def _locked_folder(folder: Path, env) -> Path:
    """``folder`` made read-only (skips where permissions do not bind this process: root, some file systems)."""
    folder.mkdir()
    folder.chmod(0o555)
    env["cleanup"] = lambda: folder.chmod(0o755)
    try:
        (folder / "probe").write_text("")
    except PermissionError:
        return folder
    (folder / "probe").unlink()
    pytest.skip("this process writes into read-only folders (root?)")


def _unreadable(path: Path, env) -> Path:
    """``path`` made unreadable (skips where permissions do not bind this process)."""
    path.chmod(0)
    env["cleanup"] = lambda: path.chmod(0o644)
    try:
        path.open("rb").close()
    except PermissionError:
        return path
    pytest.skip("this process reads unreadable files (root?)")


def _file(path: Path, text: str = "not weights\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GEN = ["generate", "--prompt", "a red ball bouncing", "--steps", "2", "--seconds", "0.5"]
TRAIN = ["train-default", "--steps", "2", "--batch-size", "2"]
EVAL = ["eval", "--guidance", "plain", "--clips", "2", "--steps", "2"]


def _gen_cuda(t, env):
    if torch.cuda.is_available():
        pytest.skip("this PyTorch build has CUDA")
    return GEN + ["--device", "cuda", "--out", str(t / "c.mp4")]


def _gen_readonly(t, env):
    return GEN + ["--out", str(_locked_folder(t / "locked", env) / "c.mp4")]


def _gen_fifo(t, env):
    _needs_fifo()
    os.mkfifo(t / "pipe.mp4")
    return GEN + ["--out", str(t / "pipe.mp4")]


def _gen_out_symlink_to_lora(t, env):
    lora = env["lora"](t / "l.safetensors")
    (t / "link.mp4").symlink_to(lora)
    return GEN + ["--lora", str(lora), "--out", str(t / "link.mp4")]


def _gen_out_lora_dot_spelling(t, env):
    env["lora"](t / "sub" / "l.safetensors")
    env["chdir"](t)
    return GEN + ["--lora", "./sub/../sub/l.safetensors", "--out", "sub/l.safetensors"]


def _train_init_in_out(t, env):
    run = t / "run"
    env["other"](run / EMBEDDED_MODEL_FILE.name)   # any file: the check comes before the file is read
    return TRAIN + ["--out", str(run), "--init", str(run / EMBEDDED_MODEL_FILE.name)]


def _train_readonly(t, env):
    return TRAIN + ["--out", str(_locked_folder(t / "locked", env) / "run")]


def _train_init_unreadable(t, env):
    init = _unreadable(env["other"](t / "locked.safetensors"), env)
    return TRAIN + ["--out", str(t / "run"), "--init", str(init)]


def _convert_symlink(t, env):
    source = _file(t / "in.safetensors")
    (t / "alias.safetensors").symlink_to(source)
    return ["convert", str(source), str(t / "alias.safetensors")]


# (case, argv builder (case folder, helpers) -> argv)
CASES = [
    # ---- generate: where the clip goes
    (BadInput("gen-out-is-folder", "cli generate --out",
              r"--out .*: is a folder; expected a file path ending in \.mp4"),
     lambda t, env: GEN + ["--out", str(t)]),
    (BadInput("gen-out-parent-is-file", "cli generate --out",
              r"--out .*notes\.txt.clip\.mp4: .*notes\.txt is a file, not a folder"),
     lambda t, env: GEN + ["--out", str(_file(t / "notes.txt") / "clip.mp4")]),
    (BadInput("gen-out-in-proc", "cli generate --out",
              r"--out /proc/self/clip\.mp4: cannot create a file in folder /proc/self .*expected a writable folder"),
     lambda t, env: (_needs_proc(), GEN + ["--out", "/proc/self/clip.mp4"])[1]),
    (BadInput("gen-out-read-only-folder", "cli generate --out",
              r"--out .*locked.c\.mp4: cannot create a file in folder .*locked .*expected a writable folder"),
     _gen_readonly),
    (BadInput("gen-out-extension-avi", "cli generate --out",
              r"--out .*clip\.avi: expected a file name ending in \.mp4, got '\.avi'"),
     lambda t, env: GEN + ["--out", str(t / "clip.avi")]),
    (BadInput("gen-out-no-extension", "cli generate --out",
              r"--out .*clip: expected a file name ending in \.mp4, got no extension"),
     lambda t, env: GEN + ["--out", str(t / "clip")]),
    (BadInput("gen-out-empty", "cli generate --out", r"--out: expected a file path, got ''"),
     lambda t, env: GEN + ["--out", ""]),
    (BadInput("gen-out-named-pipe", "cli generate --out",
              r"--out .*pipe\.mp4: exists and is not a regular file .*expected a file path"),
     _gen_fifo),
    (BadInput("gen-out-is-the-lora", "cli generate --out",
              r"--out .*l\.safetensors: is the --lora file .*l\.safetensors; expected an output distinct"),
     lambda t, env: GEN + ["--lora", str(env["lora"](t / "l.safetensors")), "--out", str(t / "l.safetensors")]),
    (BadInput("gen-out-links-to-the-lora", "cli generate --out",
              r"--out .*link\.mp4: is the --lora file .*l\.safetensors; expected an output distinct"),
     _gen_out_symlink_to_lora),
    (BadInput("gen-out-lora-other-spelling", "cli generate --out",
              r"--out sub/l\.safetensors: is the --lora file \./sub/\.\./sub/l\.safetensors"),
     _gen_out_lora_dot_spelling),
    # ---- generate: the clip asked for
    (BadInput("gen-seconds-inf", "cli generate --seconds",
              r"seconds: expected a finite length in seconds > 0, got inf"),
     lambda t, env: GEN + ["--seconds", "inf", "--out", str(t / "c.mp4")]),
    (BadInput("gen-seconds-nan", "cli generate --seconds",
              r"seconds: expected a finite length in seconds > 0, got nan"),
     lambda t, env: GEN + ["--seconds", "nan", "--out", str(t / "c.mp4")]),
    (BadInput("gen-seconds-zero", "cli generate --seconds", r"seconds: expected a finite length .* > 0, got 0\.0"),
     lambda t, env: GEN + ["--seconds", "0", "--out", str(t / "c.mp4")]),
    (BadInput("gen-seconds-negative", "cli generate --seconds", r"seconds: expected a finite length .* got -2\.0"),
     lambda t, env: GEN + ["--seconds", "-2", "--out", str(t / "c.mp4")]),
    (BadInput("gen-seconds-too-long-for-memory", "cli generate --seconds",
              r"seconds / width / height: the decoded frames and sound of a 1e\+06 s clip of 32x32 px .*need at "
              r"least [\d.]+ GiB, more than this machine's 4 GiB"),
     lambda t, env: GEN + ["--seconds", "1e6", "--out", str(t / "c.mp4")]),
    (BadInput("gen-size-too-large-for-memory", "cli generate --width/--height",
              r"seconds / width / height: .* of 80000x80000 px .*need at least [\d.e+]+ GiB, more than this machine's "
              r"4 GiB"),
     lambda t, env: GEN + ["--width", "80000", "--height", "80000", "--out", str(t / "c.mp4")]),
    (BadInput("gen-width-negative", "cli generate --width", r"width: expected a positive number of pixels, got -32"),
     lambda t, env: GEN + ["--width", "-32", "--out", str(t / "c.mp4")]),
    (BadInput("gen-steps-zero", "cli generate --steps", r"steps: expected an integer >= 1, got 0"),
     lambda t, env: GEN + ["--steps", "0", "--out", str(t / "c.mp4")]),
    (BadInput("gen-steps-huge", "cli generate --steps",
              r"steps: expected at most 10000 sampling steps, got 1000000000"),
     lambda t, env: GEN + ["--steps", "1000000000", "--out", str(t / "c.mp4")]),
    (BadInput("gen-seed-negative", "cli generate --seed", r"seed: expected an integer in 0\.\.\d+, received -1"),
     lambda t, env: GEN + ["--seed", "-1", "--out", str(t / "c.mp4")]),
    (BadInput("gen-sync-interval-reversed", "cli generate --sync-interval",
              r"--sync-interval: expected START,END fractions with 0 <= START <= END <= 1.*got '0\.8,0\.2'"),
     lambda t, env: GEN + ["--sync-interval", "0.8,0.2", "--out", str(t / "c.mp4")]),
    (BadInput("gen-device-cuda-on-cpu-build", "cli generate --device",
              r"--device cuda: not available here \(.*\); expected cpu"),
     _gen_cuda),
    (BadInput("gen-device-nonsense", "cli generate --device",
              r"--device: expected a device such as cpu, cuda or cuda:1, got 'nonsense'"),
     lambda t, env: GEN + ["--device", "nonsense", "--out", str(t / "c.mp4")]),
    (BadInput("gen-lora-missing", "cli generate --lora", r"--lora: .*absent\.safetensors: no such file"),
     lambda t, env: GEN + ["--lora", str(t / "absent.safetensors"), "--out", str(t / "c.mp4")]),
    (BadInput("gen-lora-not-weights", "cli generate --lora", r"--lora: .*notes\.txt: not a safetensors file"),
     lambda t, env: GEN + ["--lora", str(_file(t / "notes.txt")), "--out", str(t / "c.mp4")]),
    # ---- train-default
    (BadInput("train-out-is-file", "cli train-default --out",
              r"--out .*notes\.txt: is a file; expected a folder"),
     lambda t, env: TRAIN + ["--out", str(_file(t / "notes.txt"))]),
    (BadInput("train-out-parent-is-file", "cli train-default --out",
              r"--out .*notes\.txt.run: .*notes\.txt is a file, not a folder"),
     lambda t, env: TRAIN + ["--out", str(_file(t / "notes.txt") / "run")]),
    (BadInput("train-out-read-only", "cli train-default --out",
              r"--out .*locked.run: cannot create a file in folder .*locked .*expected a writable folder"),
     _train_readonly),
    (BadInput("train-out-export-is-folder", "cli train-default --out",
              r"--out .*run: loss\.png in it is a folder; expected a file path there"),
     lambda t, env: ((t / "run" / "loss.png").mkdir(parents=True), TRAIN + ["--out", str(t / "run")])[1]),
    (BadInput("train-init-would-be-overwritten", "cli train-default --init",
              r"--out .*run: would overwrite \(with embedded_default\.safetensors\) the --init file"),
     _train_init_in_out),
    (BadInput("train-out-is-the-shipped-weights-folder", "cli train-default --out",
              r"--out .*weights: would overwrite \(with embedded_default\.safetensors\) the shipped weights file"),
     lambda t, env: TRAIN + ["--out", str(EMBEDDED_MODEL_FILE.parent)]),
    (BadInput("train-init-unreadable", "cli train-default --init",
              r"--init: .*locked\.safetensors: cannot be read \(Permission denied\)"),
     _train_init_unreadable),
    (BadInput("train-init-missing", "cli train-default --init", r"--init: .*absent\.safetensors: no such file"),
     lambda t, env: TRAIN + ["--out", str(t / "run"), "--init", str(t / "absent.safetensors")]),
    (BadInput("train-init-not-weights", "cli train-default --init", r"--init: .*notes\.txt: not a safetensors file"),
     lambda t, env: TRAIN + ["--out", str(t / "run"), "--init", str(_file(t / "notes.txt"))]),
    (BadInput("train-init-is-a-folder", "cli train-default --init", r"--init: .*: is a folder; expected a "),
     lambda t, env: TRAIN + ["--out", str(t / "run"), "--init", str(t)]),
    (BadInput("train-init-another-network", "cli train-default --init",
              r"--init .*other\.safetensors: holds another network than the embedded default"),
     lambda t, env: TRAIN + ["--out", str(t / "run"), "--init", str(env["other"](t / "other.safetensors"))]),
    (BadInput("train-batch-size-zero", "cli train-default --batch-size",
              r"--batch-size: expected a whole number >= 1, got 0"),
     lambda t, env: TRAIN + ["--batch-size", "0", "--out", str(t / "run")]),
    (BadInput("train-batch-size-too-large-for-memory", "cli train-default --batch-size",
              r"--batch-size: the frames and sound of a batch of 100000 BounceBench clips need at least [\d.e+]+ GiB, "
              r"more than this machine's 4 GiB"),
     lambda t, env: TRAIN + ["--steps", "1", "--batch-size", "100000", "--out", str(t / "run")]),
    (BadInput("train-steps-beyond-the-split", "cli train-default --steps",
              r"--steps / --batch-size / --data-start-step: \(0 \+ 1000000000 steps\) x 2 clips .* more than the "
              r"BounceBench train split's 1000000000"),
     lambda t, env: TRAIN + ["--steps", "1000000000", "--out", str(t / "run")]),
    (BadInput("train-steps-zero", "cli train-default --steps", r"--steps: expected a whole number >= 1, got 0"),
     lambda t, env: TRAIN + ["--steps", "0", "--out", str(t / "run")]),
    (BadInput("train-lr-nan", "cli train-default --lr", r"--lr: expected a finite number > 0, got nan"),
     lambda t, env: TRAIN + ["--lr", "nan", "--out", str(t / "run")]),
    (BadInput("train-noise-shift-inf", "cli train-default --noise-shift",
              r"--noise-shift: expected a finite number > 0, got inf"),
     lambda t, env: TRAIN + ["--noise-shift", "inf", "--out", str(t / "run")]),
    # ---- eval
    (BadInput("eval-json-folder-missing", "cli eval --json",
              r"--json .*missing.r\.json: folder .*missing' does not exist; expected an existing folder"),
     lambda t, env: EVAL + ["--json", str(t / "missing" / "r.json")]),
    (BadInput("eval-json-is-folder", "cli eval --json", r"--json .*: is a folder; expected a file path"),
     lambda t, env: EVAL + ["--json", str(t)]),
    (BadInput("eval-json-in-proc", "cli eval --json",
              r"--json /proc/self/r\.json: cannot create a file in folder /proc/self"),
     lambda t, env: (_needs_proc(), EVAL + ["--json", "/proc/self/r.json"])[1]),
    (BadInput("eval-json-is-the-lora", "cli eval --json", r"--json .*l\.safetensors: is the --lora file"),
     lambda t, env: EVAL + ["--lora", str(env["lora"](t / "l.safetensors")), "--json", str(t / "l.safetensors")]),
    (BadInput("eval-json-is-the-shipped-weights", "cli eval --json",
              r"--json .*embedded_default\.safetensors: is the shipped weights file"),
     lambda t, env: EVAL + ["--json", str(EMBEDDED_MODEL_FILE)]),
    (BadInput("eval-clips-beyond-the-split", "cli eval --clips",
              r"--clips / --seed: .*count 2000000 must fit in the val split's 1000000 seeds"),
     lambda t, env: EVAL + ["--clips", "2000000", "--json", str(t / "r.json")]),
    (BadInput("eval-clips-too-many-for-memory", "cli eval --clips",
              r"clips: the frames and sound of 900000 standard clips \(generated and real\) need at least "
              r"[\d.e+]+ GiB, "
              r"more than this machine's 4 GiB"),
     lambda t, env: EVAL + ["--clips", "900000", "--json", str(t / "r.json")]),
    (BadInput("eval-steps-huge", "cli eval --steps", r"steps: expected at most 10000 sampling steps"),
     lambda t, env: EVAL + ["--steps", "20000", "--json", str(t / "r.json")]),
    (BadInput("eval-device-nonsense", "cli eval --device", r"--device: expected a device such as cpu.*'gpu0'"),
     lambda t, env: EVAL + ["--device", "gpu0", "--json", str(t / "r.json")]),
    # ---- bouncebench
    (BadInput("bench-out-is-file", "cli bouncebench --out", r"--out .*notes\.txt: is a file; expected a folder"),
     lambda t, env: ["bouncebench", "--clips", "1", "--out", str(_file(t / "notes.txt"))]),
    (BadInput("bench-out-in-proc", "cli bouncebench --out",
              r"--out /proc/self/bench: cannot create a file in folder /proc/self"),
     lambda t, env: (_needs_proc(), ["bouncebench", "--clips", "1", "--out", "/proc/self/bench"])[1]),
    (BadInput("bench-clips-zero", "cli bouncebench --clips",
              r"--clips / --start: expected at least 1 clip from a start >= 0, got --clips 0"),
     lambda t, env: ["bouncebench", "--clips", "0", "--out", str(t / "bench")]),
    (BadInput("bench-clips-beyond-the-split", "cli bouncebench --clips",
              r"--clips / --start: .*must fit in the test split's 1000000 seeds"),
     lambda t, env: ["bouncebench", "--split", "test", "--clips", "5", "--start", "999999", "--out", str(t / "b")]),
    # ---- convert
    (BadInput("convert-out-is-the-input", "cli convert", r"output .*in\.safetensors: is the input file"),
     lambda t, env: ["convert", str(_file(t / "in.safetensors")), str(t / "in.safetensors")]),
    (BadInput("convert-out-links-to-the-input", "cli convert",
              r"output .*alias\.safetensors: is the input file .*in\.safetensors"),
     _convert_symlink),
    (BadInput("convert-out-extension", "cli convert",
              r"output .*out\.pth: expected a file name ending in \.safetensors, got '\.pth'"),
     lambda t, env: ["convert", str(_file(t / "in.pth")), str(t / "out.pth")]),
    (BadInput("convert-out-is-folder", "cli convert", r"output .*: is a folder; expected a file path ending in "
                                                      r"\.safetensors"),
     lambda t, env: ["convert", str(_file(t / "in.pth")), str(t)]),
]
ARGV = {case.id: build for case, build in CASES}


@pytest.mark.parametrize("case", params([case for case, _ in CASES]))
def test_cli_refuses_before_any_work(case, tmp_path, capsys, monkeypatch, lora_bytes, other_network_bytes):
    def write(data: bytes):
        def at(path: Path) -> Path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return path
        return at

    env = {"lora": write(lora_bytes), "other": write(other_network_bytes), "chdir": monkeypatch.chdir}
    argv = ARGV[case.id](tmp_path, env)
    before = files_under(tmp_path)
    shipped = {p: p.stat().st_mtime_ns for p in EMBEDDED_MODEL_FILE.parent.iterdir()}
    try:
        started = time.perf_counter()
        expect_cli_error(case, argv, capsys)
        seconds = time.perf_counter() - started
    finally:
        env.get("cleanup", lambda: None)()
    assert files_under(tmp_path) == before, f"{case.id}: files were written"
    assert {p: p.stat().st_mtime_ns for p in EMBEDDED_MODEL_FILE.parent.iterdir()} == shipped
    assert seconds < SECONDS_PER_CASE, f"{case.id}: took {seconds:.2f} s to refuse"


def test_the_cases_are_many_and_distinct():
    assert len(CASES) >= 20 and len(ARGV) == len(CASES)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_a_write_error_after_the_checks_is_one_line_naming_the_output(tmp_path, capsys, monkeypatch):
    """A folder that turns read-only while the command runs (after the up-front checks): ``cli.main`` turns the
    OSError into one line naming the output, not the temporary file, and leaves nothing behind."""
    from comfyui_syncav.cli import main
    from comfyui_syncav.files import atomic as atomic_files

    def failing_replace(source, target):
        raise PermissionError(13, "Permission denied", source, target)

    monkeypatch.setattr(generate_module, "sample_av", _noise_latents)
    monkeypatch.setattr(atomic_files.os, "replace", failing_replace)
    out = tmp_path / "clip.mp4"
    code = main(GEN + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {out}: Permission denied"], err
    assert files_under(tmp_path) == set()


def _noise_latents(model, noise_video, noise_audio, *rest, **options):
    """A stand-in sampler: the initial noise as the result (the write is what the test is about)."""
    return noise_video, noise_audio


def test_convert_reaches_the_converter_with_good_paths(tmp_path, capsys):
    """The checks let a good command through (the stand-in converter is reached): they refuse only bad input."""
    source = _file(tmp_path / "in.pth")
    with pytest.raises(WorkStarted):
        from comfyui_syncav.cli import main
        main(["convert", str(source), str(tmp_path / "sub" / "out.safetensors")])
    assert not (tmp_path / "sub").exists()   # checking a missing folder does not create it
