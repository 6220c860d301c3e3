"""``python -m comfyui_syncav train-dpo``: the DPO trainer from the command line, on BounceBench or on a folder of
real mp4 clips with captions, resumable, with clear errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_syncav.bouncebench.export import write_dataset
from comfyui_syncav.cli import main
from comfyui_syncav.files.safetensors_io import read_header
from comfyui_syncav.runtime.lora import load_lora

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_step(path) -> int:
    return int(read_header(path)[1]["step"])


def test_bouncebench_run_writes_a_lora_and_resumes_to_more_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-dpo", "--steps", "2", "--batch-size", "2", "--rank", "2", "--out", str(out)]) == 0
    assert "trained 2 steps (dpo)" in capsys.readouterr().out
    tensors, meta = load_lora(out / "lora.safetensors")
    assert lora_step(out / "lora.safetensors") == 2 and meta["objective"] == "dpo"
    assert all(key.startswith("diffusion_model.") for key in tensors)           # ComfyUI's LoRA keys
    # B starts at zero; two steps move it
    assert any(key.endswith("lora_B.weight") and tensors[key].abs().max() > 0 for key in tensors)
    first = {k: v.clone() for k, v in tensors.items()}
    assert (out / "curves.png").stat().st_size > 0 and len(json.loads((out / "history.json").read_text())) == 2

    # more steps: the run continues from step 2 (same LoRA before, moved after)
    assert main(["train-dpo", "--steps", "3", "--batch-size", "2", "--rank", "2", "--out", str(out)]) == 0
    assert lora_step(out / "lora.safetensors") == 3
    assert len(json.loads((out / "history.json").read_text())) == 3
    assert not all(torch.equal(first[k], v) for k, v in load_lora(out / "lora.safetensors")[0].items())

    # --no-resume never overwrites a run; another rank cannot resume it
    assert main(["train-dpo", "--steps", "3", "--rank", "2", "--out", str(out), "--no-resume"]) == 2
    assert "--out: a run named" in capsys.readouterr().err
    assert main(["train-dpo", "--steps", "4", "--rank", "4", "--out", str(out)]) == 2
    assert "--rank: the run" in capsys.readouterr().err and lora_step(out / "lora.safetensors") == 3


def test_a_folder_of_real_clips_trains_end_to_end_and_its_latents_are_cached(tmp_path, capsys):
    clips = tmp_path / "clips"
    write_dataset(clips, "train", 3, progress=False)               # mp4 (h264 + aac) + same-name .txt captions
    out = tmp_path / "run"
    args = ["train-dpo", "--data", str(clips), "--seconds", "1.0", "--size", "16", "--steps", "2",
            "--batch-size", "2", "--rank", "2", "--lora-towers", "audio", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 clip(s)" in printed and "trained 2 steps" in printed
    tensors, _ = load_lora(out / "lora.safetensors")
    assert tensors and all(".audio_model." in key for key in tensors)   # --lora-towers audio
    cached = sorted((clips / ".syncav_cache").glob("*.safetensors"))
    assert len(cached) == 3
    # a second run (SFT, another folder) reads the cache: no clip is decoded again
    stamps = [path.stat().st_mtime_ns for path in cached]
    assert main(args[:-1] + [str(tmp_path / "sft"), "--objective", "sft"]) == 0
    assert [path.stat().st_mtime_ns for path in cached] == stamps
    assert lora_step(tmp_path / "sft" / "lora.safetensors") == 2


@pytest.mark.parametrize("extra, message", [
    (["--data", "nowhere"], "--data nowhere: no such folder"),
    (["--lr", "0"], "--lr: expected a finite number > 0, got 0.0"),
    (["--steps", "0"], "--steps: expected a whole number >= 1, got 0"),
    (["--beta-audio", "-5"], "--beta-audio: expected a finite number > 0"),
    (["--model", "720x720_5s"], "--data: BounceBench clips are made for the embedded default"),
    (["--pairs", "scored", "--data", "."], "--pairs scored: the pairs are scored against BounceBench's captions"),
    (["--curriculum", "missing.json"], "missing.json: No such file or directory"),
])
def test_bad_input_is_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch, extra, message):
    from comfyui_syncav.generation import pipeline

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the input was checked")

    monkeypatch.setattr(pipeline, "build_embedded_default", no_model)
    monkeypatch.chdir(tmp_path)
    assert main(["train-dpo", "--out", str(tmp_path / "run")] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "lora.safetensors").exists()


def test_scored_pairs_are_sampled_once_and_cached_in_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    def args(steps):
        return ["train-dpo", "--pairs", "scored", "--prompts", "3", "--steps", str(steps), "--batch-size", "2",
                "--rank", "2", "--out", str(out)]

    assert main(args(1)) == 0
    printed = capsys.readouterr().out
    assert "scored pairs from 3 captions" in printed and lora_step(out / "lora.safetensors") == 1
    cache = out / "scored_pairs" / "pairs.safetensors"
    stamp = cache.stat().st_mtime_ns
    assert main(args(2)) == 0                        # resumed: the same pairs, from the cache
    assert cache.stat().st_mtime_ns == stamp and lora_step(out / "lora.safetensors") == 2


def test_an_ovi_model_trains_on_a_clip_folder_with_its_own_codecs(tmp_path, monkeypatch, capsys):
    """--model <Ovi variant>: the clips are encoded with Ovi's codecs (stood in for: the Wan2.2 VAE at 24 fps and
    MMAudio at 16 kHz) and captions with its UMT5; the LoRA trains on the Ovi-shaped joint model."""
    from ovi_stand_ins import StandInMMAudioCodec, StandInUMT5, StandInWanCodec, write_ovi_files

    from comfyui_syncav.ovi import pipeline as ovi_pipeline
    from comfyui_syncav.ovi.variants import get_variant

    write_ovi_files(tmp_path / "models", get_variant("720x720_5s"), text_encoder=True)
    monkeypatch.setattr(ovi_pipeline, "load_video_codec", lambda path, device=None, dtype=None: StandInWanCodec())
    monkeypatch.setattr(ovi_pipeline, "load_audio_codec",
                        lambda vae, vocoder, device=None, dtype=None: StandInMMAudioCodec())
    monkeypatch.setattr(ovi_pipeline, "umt5_loader", lambda *args, **kwargs: StandInUMT5)
    clips = tmp_path / "clips"
    write_dataset(clips, "train", 2, progress=False)
    out = tmp_path / "run"
    assert main(["train-dpo", "--model", "720x720_5s", "--models-dir", str(tmp_path / "models"), "--data", str(clips),
                 "--seconds", "1.0", "--size", "32", "--steps", "2", "--batch-size", "1", "--rank", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "25 frames (1.04167 s at 24 fps)" in printed and "audio 16000 Hz" in printed   # Ovi's rates
    tensors, _ = load_lora(out / "lora.safetensors")
    assert lora_step(out / "lora.safetensors") == 2 and tensors
