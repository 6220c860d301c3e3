"""The CLI writes a playable mp4 with its soundtrack, and refuses bad input with one clear line."""

import numpy as np
import pytest

from comfyui_syncav.cli import main
from comfyui_syncav.files.media_io import probe_mp4


def test_generate_writes_h264_with_aac_of_the_asked_length(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    rc = main(["generate", "--prompt", "a red ball bouncing, high clicks", "--seconds", "1.5", "--steps", "2",
               "--out", str(out)])
    assert rc == 0
    info = probe_mp4(out)
    assert info["video"]["codec"] == "h264" and info["video"]["frames"] == 24  # 1.5 s at 16 fps
    assert (info["video"]["width"], info["video"]["height"]) == (32, 32)
    assert info["audio"]["codec"] == "aac" and info["audio"]["sample_rate"] == 8000
    assert abs(info["audio"]["seconds"] - 1.5) < 0.15  # aac pads to whole 1024-sample frames
    assert "wrote" in capsys.readouterr().out


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["generate", "--prompt", "  ", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "prompt: expected a description of the video, received an empty prompt" in capsys.readouterr().err
    assert main(["generate", "--prompt", "ball", "--width", "30", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_generate_with_a_lora_changes_the_clip_and_strength_zero_does_not(tmp_path):
    _write_random_lora(tmp_path / "l.safetensors")

    def frames(*extra):
        out = tmp_path / f"clip{len(extra)}{extra[-1] if extra else ''}.mp4"
        assert main(["generate", "--prompt", "a red ball bouncing", "--steps", "2", "--seconds", "0.5",
                     "--out", str(out), *extra]) == 0
        return out.read_bytes()

    base = frames()
    assert frames("--lora", str(tmp_path / "l.safetensors"), "--lora-strength-video", "0",
                  "--lora-strength-audio", "0") == base
    assert frames("--lora", str(tmp_path / "l.safetensors")) != base


def _write_random_lora(path):
    """A LoRA on the embedded default's FFNs with random B factors (so it changes the output), saved to path."""
    import torch

    from comfyui_syncav.runtime.lora import LoraSpec, add_lora, save_lora
    from comfyui_syncav.generation.pipeline import build_embedded_default

    model = build_embedded_default().model
    add_lora(model, LoraSpec(rank=4, targets=("ffn",)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    save_lora(model, path)


def test_lora_embedded_sync_is_the_shipped_file(tmp_path, monkeypatch, capsys):
    from comfyui_syncav.generation import pipeline as pipeline_module

    shipped = tmp_path / "embedded_sync_lora.safetensors"
    _write_random_lora(shipped)
    monkeypatch.setattr(pipeline_module, "EMBEDDED_SYNC_LORA_FILE", shipped)

    from comfyui_syncav.files import media_io

    written = []
    write_mp4 = media_io.write_mp4
    # The frames and sound handed to the mp4 writer, not the file: h264 does not re-encode the same frames to the
    # same decoded pixels run after run (measured: 0.011 mean difference on identical frames).
    monkeypatch.setattr(media_io, "write_mp4", lambda path, frames, fps, waveform, rate: (
        written.append((np.array(frames), np.array(waveform))), write_mp4(path, frames, fps, waveform, rate)))

    def clip(*extra):
        out = tmp_path / f"clip{len(extra)}.mp4"
        assert main(["generate", "--prompt", "a red ball bouncing", "--steps", "2", "--seconds", "0.5",
                     "--out", str(out), *extra]) == 0
        return written[-1]

    by_name, by_path, without = clip("--lora", "embedded-sync"), clip("--lora", str(shipped), "--seed", "0"), clip()
    for a, b, c in zip(by_name, by_path, without):
        # the named LoRA is the file; a LoRA changes the clip
        assert np.array_equal(a, b) and np.abs(a - c).mean() > 0.01
    monkeypatch.setattr(pipeline_module, "EMBEDDED_SYNC_LORA_FILE", tmp_path / "absent.safetensors")
    assert main(["generate", "--prompt", "a red ball bouncing", "--steps", "2", "--seconds", "0.5",
                 "--out", str(tmp_path / "x.mp4"), "--lora", "embedded-sync"]) != 0
    assert "sync LoRA (absent.safetensors) is not in this package's weights/ folder" in capsys.readouterr().err


def test_train_default_options_reach_the_recipe():
    from comfyui_syncav.cli import build_parser
    from comfyui_syncav.cli.train import default_recipe

    plain = default_recipe(build_parser().parse_args(["train-default", "--out", "run", "--steps", "10"]))
    assert (plain.train.steps, plain.train.lr, plain.loss.noise.shift, plain.data_start_step) == (10, 1e-3, 1.0, 0)
    continued = default_recipe(build_parser().parse_args(
        ["train-default", "--out", "run", "--steps", "20", "--lr", "5e-4", "--data-start-step", "5200",
         "--noise-shift", "3"]))
    assert (continued.train.steps, continued.train.lr, continued.loss.noise.shift, continued.data_start_step) == \
        (20, 5e-4, 3.0, 5200)
    assert continued.loss.noise.lambda_video == plain.loss.noise.lambda_video  # the rest of the recipe is untouched
    assert plain.cross_modal_window_frames is None and plain.joint_config().cross_modal_window_frames is None
    harmony = default_recipe(build_parser().parse_args(
        ["train-default", "--out", "run", "--steps", "5", "--cross-modal-window", "1.5"]))
    assert harmony.joint_config().cross_modal_window_frames == 1.5


def test_train_default_refuses_a_window_below_half_a_frame(tmp_path, capsys):
    assert main(["train-default", "--out", str(tmp_path / "run"), "--steps", "1", "--cross-modal-window", "0.2"]) == 2
    assert "cross_modal_window_frames must be None (global fusion) or a finite number >= 0.5" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_default_refuses_a_non_positive_noise_shift(tmp_path, capsys):
    assert main(["train-default", "--out", str(tmp_path / "run"), "--steps", "1", "--noise-shift", "0"]) == 2
    assert "--noise-shift: expected a finite number > 0, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_atomic_writes_use_hidden_tmp_names_flush_to_disk_and_are_never_listed(tmp_path, monkeypatch):
    """A kill mid-write leaves only a hidden ``.tmp`` file: not a name ComfyUI lists (.safetensors, .mp4 ...), and
    the SyncAV LoRA list skips it (and older ``.x.tmp.safetensors`` leftovers). The data and the rename are fsynced
    before and after the file is published."""
    import os

    from comfyui_syncav.files import atomic as atomic_files
    pytest.importorskip("comfy_api.latest", reason="ComfyUI's node API not found (set COMFYUI_DIR)")
    from comfyui_syncav.nodes import comfy_bridge
    from comfyui_syncav.nodes.comfy_bridge import listed_lora_names

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic_files.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with atomic_files.atomic_path(tmp_path / "kept.safetensors") as tmp:
        name = os.path.basename(tmp)
        assert name.startswith(".kept.safetensors.") and name.endswith(".tmp"), name
        open(tmp, "wb").write(b"data")
        assert synced == []                       # nothing published yet
    assert (tmp_path / "kept.safetensors").read_bytes() == b"data"
    assert len(synced) == (2 if os.name == "posix" else 1)   # the file, then its folder
    for leftover in (name, ".kept.safetensors.abc123.tmp.safetensors", ".hidden/b.safetensors", "c.safetensors.tmp"):
        (tmp_path / leftover).parent.mkdir(exist_ok=True)
        (tmp_path / leftover).write_bytes(b"")
    monkeypatch.setattr(comfy_bridge, "lora_folders", lambda: [str(tmp_path)])
    assert comfy_bridge.lora_names() != ["kept.safetensors"]   # the raw list sees the leftovers ...
    assert listed_lora_names() == ["kept.safetensors"]        # ... the node does not


def test_output_check_lets_good_paths_through_without_writing(tmp_path):
    from comfyui_syncav.files.atomic import OutputPathError, check_output_path

    (tmp_path / "old.mp4").write_bytes(b"old")
    assert check_output_path(tmp_path / "old.mp4", "--out", suffixes=(".mp4",)) == tmp_path / "old.mp4"  # replaced
    assert check_output_path(tmp_path / "a" / "b" / "clip.MP4", "--out", suffixes=(".mp4",)).name == "clip.MP4"
    assert check_output_path(tmp_path / "run", "--out", folder=True, writes=("x.png",)) == tmp_path / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.mp4"]          # no folder made, no probe left
    try:
        check_output_path(tmp_path / "a" / "clip.mp4", "--out", parent_must_exist=True)
    except OutputPathError as error:
        assert "does not exist" in str(error)
    else:
        raise AssertionError("a missing folder was accepted with parent_must_exist")


def test_os_errors_become_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    from comfyui_syncav.cli import entry as cli

    def disk_full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "clip.mp4"))

    monkeypatch.setattr(cli, "convert_command", disk_full)
    assert cli.main(["convert", "in.pth", "out.safetensors"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'clip.mp4'}: No space left on device"


def test_generate_sync_anchors_change_the_clip_and_unknown_ones_are_refused(tmp_path, capsys):
    def clip(anchors):
        out = tmp_path / f"{anchors}.mp4"
        assert main(["generate", "--prompt", "a red ball bouncing", "--steps", "2", "--seconds", "0.5",
                     "--sync-anchors", anchors, "--out", str(out)]) == 0
        return out.read_bytes()

    assert clip("cross_modal_cut") != clip("harmony")
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "ball", "--sync-anchors", "loud", "--out", str(tmp_path / "x.mp4")])
    assert "invalid choice: 'loud'" in capsys.readouterr().err


def test_generate_on_the_embedded_model_defaults_to_its_text_scale(tmp_path):
    from comfyui_syncav.generation.pipeline import EMBEDDED_TEXT_SCALE

    def clip(*text_scale):
        out = tmp_path / f"text{'_'.join(text_scale) or '_default'}.mp4"
        assert main(["generate", "--prompt", "a red ball bouncing", "--steps", "2", "--seconds", "0.5",
                     *(("--text-scale", *text_scale) if text_scale else ()), "--out", str(out)]) == 0
        return out.read_bytes()

    assert EMBEDDED_TEXT_SCALE == 2.0
    default = clip()
    assert default == clip("2") and default != clip("4")


def test_train_codec_refuses_the_shipped_weights_folder_and_bad_steps(tmp_path, capsys):
    from comfyui_syncav.generation.pipeline import EMBEDDED_VIDEO_DECODER_FILE

    before = EMBEDDED_VIDEO_DECODER_FILE.read_bytes()
    assert main(["train-codec", "--out", str(EMBEDDED_VIDEO_DECODER_FILE.parent), "--steps", "1"]) == 2
    assert "shipped video decoder" in capsys.readouterr().err
    assert EMBEDDED_VIDEO_DECODER_FILE.read_bytes() == before
    assert main(["train-codec", "--out", str(tmp_path / "run"), "--steps", "0"]) == 2
    assert "--steps: expected a whole number >= 1, got 0" in capsys.readouterr().err
    assert main(["train-codec", "--out", str(tmp_path / "run"), "--refine-steps", "-2"]) == 2
    assert "--refine-steps: expected a whole number >= 1, got -2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
