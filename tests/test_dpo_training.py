"""The SyncDPO trainer (train/dpo_training.py) on a micro joint model with the embedded codecs and BounceBench clips."""

import json
import random
import re

import pytest
import torch

from comfyui_syncav.runtime.lora import (KEY_PREFIX, LoraSpec, check_lora_fits, load_lora, lora_layers,
                                       lora_state_dict)
from comfyui_syncav.files.safetensors_io import load_tensors, read_header
from comfyui_syncav.negatives.curriculum import DEFAULT_CURRICULUM
from comfyui_syncav.train.dpo_loss import DPOConfig
from comfyui_syncav.train.dpo_training import (CURVES_FILE, HISTORY_FILE, LORA_FILE, DPOTrainingConfig,
                                               PreferencePairs, train_dpo)
from comfyui_syncav.train.noise_mix import NoiseMix
from comfyui_syncav.train.embedded_training import BounceBatches
from comfyui_syncav.train.loop import CHECKPOINT_NAME
from comfyui_syncav.negatives.rules import RULES
from micro_models import micro_pipeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**changes) -> DPOTrainingConfig:
    base = DPOTrainingConfig(steps=3, batch_size=2, lr=3e-3, lora=LoraSpec(rank=4, alpha=4), warmup_steps=1,
                             save_every=100, log_every=1, seed=5)
    return base.with_changes(**changes)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, text_encoder):
    """The reference: 3 DPO steps in one go."""
    out = tmp_path_factory.mktemp("straight")
    pipeline = micro_pipeline(text_encoder)
    base = {k: v.clone() for k, v in pipeline.model.state_dict().items()}
    result = train_dpo(pipeline, out, tiny_config(), progress=False)
    return out, result, base


def test_dpo_run_writes_a_comfy_lora_curves_and_per_rule_history(straight_run, text_encoder):
    out, result, base = straight_run
    assert result.state.step == 3 and result.lora_path == out / LORA_FILE
    tensors, metadata = load_lora(out / LORA_FILE)
    # ComfyUI's key convention: diffusion_model.<module>.lora_A.weight / .lora_B.weight / .alpha, no peft names
    convention = re.compile(re.escape(KEY_PREFIX) + r"(video|audio)_model\.blocks\.\d+\.[\w.]+\."
                            r"(lora_A\.weight|lora_B\.weight|alpha)")
    assert all(convention.fullmatch(k) and ".default." not in k for k in tensors), sorted(tensors)[:3]
    assert any(".cross_attn.k_fusion." in k for k in tensors)
    check_lora_fits(micro_pipeline(text_encoder).model, tensors)
    assert metadata["objective"] == "dpo" and metadata["step"] == "3"
    assert json.loads(metadata["training_config"])["lora"]["rank"] == 4
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)       # the adapters trained

    assert (out / CURVES_FILE).read_bytes()[:8] == PNG_SIGNATURE
    assert result.curves_rgb.dtype.name == "uint8" and result.curves_rgb.shape[2] == 3
    history = json.loads((out / HISTORY_FILE).read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    for h in history:
        assert {"loss", "video_accuracy", "audio_accuracy", "video_dpo", "audio_dpo"} <= set(h)
        shares = {k: v for k, v in h.items() if k.startswith("rule/") and k.endswith("/share")}
        assert shares and sum(shares.values()) == pytest.approx(1.0)
        drawn = [k.split("/")[1] for k, v in shares.items() if v > 0]
        assert all(f"rule/{rule}/audio_accuracy" in h or f"rule/{rule}/video_accuracy" in h for rule in drawn)
    # Only the adapters trained: the base weights are bit for bit the ones the model started with.
    state = result.model.state_dict()
    for name, value in base.items():
        key = name if name in state else name.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")
        assert torch.equal(state[key], value), name


def test_losers_differ_from_winners_keep_the_text_and_follow_the_curriculum(text_encoder):
    pipeline = micro_pipeline(text_encoder)
    winners = BounceBatches(4, 0.0, text_encoder, pipeline.video_codec, pipeline.audio_codec)
    total = 10
    pairs = PreferencePairs(winners, pipeline.video_codec, pipeline.audio_codec, DEFAULT_CURRICULUM, total)
    for step in (0, 5, 9):                                      # one step in each stage
        batch = pairs(step, torch.Generator().manual_seed(step))
        w, l = batch.winner, batch.loser
        assert len(batch.rules) == 4 and all(rule in RULES for rule in batch.rules)
        for row, rule in enumerate(batch.rules):
            changed = not torch.equal(w.video[row], l.video[row]) or not torch.equal(w.audio[row], l.audio[row])
            assert changed, f"step {step} row {row}: {rule} left the winner as it was"
            stream = RULES[rule].stream
            untouched = (w.video, l.video) if stream == "audio" else (w.audio, l.audio)
            assert torch.equal(untouched[0][row], untouched[1][row])      # the other stream is the winner's
        assert torch.equal(w.text_video, l.text_video) and torch.equal(w.text_audio, l.text_audio)
        current = DEFAULT_CURRICULUM.stage_at(step, total)
        if step == 0:                                           # the first stage replays nothing
            assert {r for r in batch.rules} <= {c.rule for c in current.rules}
        # Same step, same generator seed: the same pairs (a resumed run rebuilds them).
        again = pairs(step, torch.Generator().manual_seed(step))
        assert again.rules == batch.rules and torch.equal(again.loser.audio, l.audio)


def test_ablation_settings_restrict_the_rules(text_encoder):
    config = tiny_config(curriculum_mode="none", families=("reverse",))
    assert {c.rule for s in config.curriculum.effective_stages for c in s.rules} == {"audio_reversal",
                                                                                    "video_reversal"}
    pipeline = micro_pipeline(text_encoder)
    winners = BounceBatches(4, 0.0, text_encoder, pipeline.video_codec, pipeline.audio_codec)
    pairs = PreferencePairs(winners, pipeline.video_codec, pipeline.audio_codec, config.curriculum, 10)
    assert set(pairs(0, torch.Generator().manual_seed(0)).rules) <= {"audio_reversal", "video_reversal"}
    config_from_json = tiny_config(curriculum=DEFAULT_CURRICULUM.to_json())
    assert config_from_json.curriculum == DEFAULT_CURRICULUM
    with pytest.raises(ValueError, match="objective"):
        tiny_config(objective="ppo")


def test_the_saved_training_config_loads_back_and_older_run_files_still_do():
    config = tiny_config(dpo=DPOConfig(beta_audio=500.0, noise=NoiseMix(shift=3.0, driven_fraction=0.25)))
    saved = json.loads(config.to_json())
    assert DPOTrainingConfig(**saved) == config
    # Run files hold the DPO settings flat, the noise mix beside the betas, as they did before NoiseMix existed.
    older = {"beta_video": None, "beta_audio": 500.0, "weight_video": 1.0, "weight_audio": 1.0, "sft_weight": 0.0,
             "driven_fraction": 0.25, "lambda_video": 0.1, "lambda_audio": 0.3, "shared_sigma_fraction": 0.5,
             "logit_mean": 0.0, "logit_std": 1.0, "shift": 3.0}
    assert saved["dpo"] == older
    assert DPOTrainingConfig(**{**saved, "dpo": older}).dpo == config.dpo
    # The SFT baseline trains with the very noise mix of the DPO settings.
    assert tiny_config(objective="sft", dpo=config.dpo).loss_config().noise is config.dpo.noise


def test_interrupted_and_resumed_run_gives_a_bit_identical_lora(straight_run, tmp_path, text_encoder):
    out, _, _ = straight_run
    stop_at = random.Random().randint(1, 2)                    # any step must do

    def interrupt(step, logs):
        if step == stop_at:
            raise Interrupt

    pipeline = micro_pipeline(text_encoder)
    torch.rand(3)                      # other global random state than the straight run's: the seed must decide
    with pytest.raises(Interrupt):
        train_dpo(pipeline, tmp_path, tiny_config(), callback=interrupt, progress=False)
    # The loop's checkpoint holds the adapters (peft names) and their optimizer state, nothing of the frozen base.
    state = load_tensors(tmp_path / CHECKPOINT_NAME)
    params = [k for k in state if k.startswith("param.")]
    assert params and all(".lora_A." in k or ".lora_B." in k for k in params)
    assert read_header(tmp_path / CHECKPOINT_NAME)[1]["step"] == str(stop_at)
    assert load_lora(tmp_path / LORA_FILE)[1]["step"] == str(stop_at)     # the interrupted run's LoRA so far

    result = train_dpo(micro_pipeline(text_encoder), tmp_path, tiny_config(), progress=False)  # a "new process"
    assert result.state.step == 3
    straight, resumed = load_tensors(out / LORA_FILE), load_tensors(tmp_path / LORA_FILE)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), f"differs after a stop at {stop_at}"
    losses = lambda d: [h["loss"] for h in json.loads((d / HISTORY_FILE).read_text())]  # noqa: E731
    assert losses(tmp_path) == losses(out)


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_and_lora_loadable(straight_run, tmp_path, monkeypatch,
                                                                                text_encoder):
    import comfyui_syncav.files.safetensors_io as safetensors_io
    real_save_file = safetensors_io.save_file

    def half_written_then_killed(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:                       # what a kill mid-write leaves behind
            f.truncate(f.seek(0, 2) // 2)
        raise OSError("killed while writing")

    def break_saves_after_step_1(step, logs):
        if step == 1:
            monkeypatch.setattr(safetensors_io, "save_file", half_written_then_killed)

    with pytest.raises(OSError, match="killed"):
        train_dpo(micro_pipeline(text_encoder), tmp_path, tiny_config(save_every=1),
                  callback=break_saves_after_step_1, progress=False)
    monkeypatch.setattr(safetensors_io, "save_file", real_save_file)
    # Step 2's writes all failed: the files under their final names are step 1's, whole and loadable.
    assert read_header(tmp_path / CHECKPOINT_NAME)[1]["step"] == "1"
    load_tensors(tmp_path / CHECKPOINT_NAME)
    tensors, metadata = load_lora(tmp_path / LORA_FILE)
    assert metadata["step"] == "1"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # ... and training resumes from them to the straight run's LoRA.
    train_dpo(micro_pipeline(text_encoder), tmp_path, tiny_config(save_every=1), progress=False)
    straight, resumed = load_tensors(straight_run[0] / LORA_FILE), load_tensors(tmp_path / LORA_FILE)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_sft_objective_trains_only_the_lora(tmp_path, text_encoder):
    pipeline = micro_pipeline(text_encoder)
    base = {k: v.clone() for k, v in pipeline.model.state_dict().items()}
    # ComfyUI runs nodes under inference mode: the trainer must leave it itself.
    with torch.inference_mode():
        result = train_dpo(pipeline, tmp_path, tiny_config(objective="sft", steps=2), progress=False)
    tensors, metadata = load_lora(tmp_path / LORA_FILE)
    assert metadata["objective"] == "sft" and metadata["step"] == "2"
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)
    live = lora_state_dict(result.model)
    assert all(torch.equal(live[k], tensors[k]) for k in tensors)
    state = result.model.state_dict()
    for name, value in base.items():
        key = name if name in state else name.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")
        assert torch.equal(state[key], value), name
    history = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert {"loss", "video", "audio"} <= set(history[-1])
    assert not any(k.startswith("rule/") for h in history for k in h)
    assert (tmp_path / CURVES_FILE).read_bytes()[:8] == PNG_SIGNATURE
    assert lora_layers(result.model)


def test_a_model_with_adapters_of_another_spec_is_refused(tmp_path, text_encoder):
    pipeline = micro_pipeline(text_encoder)
    train_dpo(pipeline, tmp_path / "a", tiny_config(objective="sft", steps=1), progress=False)
    with pytest.raises(ValueError, match="another spec"):
        train_dpo(pipeline, tmp_path / "b", tiny_config(objective="sft", steps=1, lora=LoraSpec(rank=2, alpha=2)),
                  progress=False)
