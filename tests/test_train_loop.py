"""The shared training loop and the joint flow-matching loss."""

import pytest
import torch

from comfyui_syncav.files.safetensors_io import CheckpointError, save_tensors_atomic
from comfyui_syncav.model.batch import AVBatch
from comfyui_syncav.train.flow_loss import FlowLossConfig, av_flow_loss, flow_matching_error
from comfyui_syncav.train.noise_mix import NoiseMix, sample_sigmas, task_rows
from comfyui_syncav.train.loop import CHECKPOINT_NAME, TrainConfig, learning_rate, train
from comfyui_syncav.train.value_rules import named_as
from micro_models import micro_model


def random_batch(step: int, generator: torch.Generator, batch: int = 5) -> AVBatch:
    return AVBatch(video=torch.randn(batch, 4, 2, 4, 4, generator=generator),
                   audio=torch.randn(batch, 6, 3, generator=generator),
                   text_video=torch.randn(batch, 3, 8, generator=generator),
                   text_audio=torch.randn(batch, 3, 8, generator=generator))


def loss_fn(model, batch, generator):
    return av_flow_loss(model, batch, generator, FlowLossConfig())


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_training_gives_identical_weights(tmp_path):
    cfg = TrainConfig(steps=6, lr=3e-3, warmup_steps=2, save_every=100, log_every=1)
    straight = micro_model()
    train(straight, random_batch, loss_fn, cfg, tmp_path / "a", progress=False)

    resumed = micro_model()

    def stop_at_3(step, logs):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(resumed, random_batch, loss_fn, cfg, tmp_path / "b", callback=stop_at_3, progress=False)
    assert (tmp_path / "b" / CHECKPOINT_NAME).is_file()
    fresh = micro_model()  # a new process would rebuild the model: resume must restore everything itself
    result = train(fresh, random_batch, loss_fn, cfg, tmp_path / "b", progress=False)
    assert result.state.step == 6
    a, b = straight.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["video_model.head.head.weight"], micro_model().state_dict()["video_model.head.head.weight"])


def test_loss_falls_when_fitting_one_batch(tmp_path):
    model = micro_model()
    fixed = random_batch(0, torch.Generator().manual_seed(7), batch=8)
    cfg = TrainConfig(steps=120, lr=3e-3, warmup_steps=10, ema_decay=None, save_every=1000, log_every=20)
    result = train(model, lambda step, g: fixed, loss_fn, cfg, tmp_path, progress=False)
    first, last = result.state.history[0]["loss"], result.state.history[-1]["loss"]
    assert last < 0.6 * first, (first, last)


def test_frozen_tower_does_not_move(tmp_path):
    model = micro_model()
    for p in model.video_model.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, random_batch, loss_fn, TrainConfig(steps=3, warmup_steps=1, ema_decay=None), tmp_path,
          progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("video_model."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("audio_model."))


def test_cross_task_rows_give_the_driving_stream_sigma_zero():
    seen = {}

    class Recorder(torch.nn.Module):
        config = micro_model().config

        def forward(self, video, audio, sv, sa, tv, ta, **kw):
            seen.update(sv=sv.clone(), sa=sa.clone())
            return torch.zeros_like(video), torch.zeros_like(audio)

    batch = random_batch(0, torch.Generator().manual_seed(1), batch=10)
    cfg = FlowLossConfig(noise=NoiseMix(driven_fraction=0.4))
    assert task_rows(10, 0.4) == (6, 2, 2)
    av_flow_loss(Recorder(), batch, torch.Generator().manual_seed(2), cfg)
    assert torch.all(seen["sa"][6:8] == 0) and torch.all(seen["sv"][6:8] > 0)   # audio-driven video
    assert torch.all(seen["sv"][8:] == 0) and torch.all(seen["sa"][8:] > 0)     # video-driven audio
    assert torch.all(seen["sv"][:6] > 0) and torch.all(seen["sa"][:6] > 0)


def test_x0_models_are_scored_on_x0():
    cfg = micro_model("x0").config
    pred, target = torch.full((2, 3), 2.0), torch.zeros(2, 3)
    sigma = torch.tensor([0.5, 0.01])  # 0.01 is below the 0.05 floor
    error = flow_matching_error(pred, target, sigma, cfg)
    assert torch.allclose(error, torch.tensor([(2 * 0.5) ** 2, (2 * 0.05) ** 2]))
    assert torch.allclose(flow_matching_error(pred, target, sigma, micro_model("velocity").config),
                          torch.tensor([4.0, 4.0]))


def test_sigmas_and_learning_rate_schedule():
    s = sample_sigmas(10000, NoiseMix(), torch.Generator().manual_seed(0))
    assert 0 < s.min() and s.max() < 1 and abs(float(s.median()) - 0.5) < 0.02
    shifted = sample_sigmas(10000, NoiseMix(shift=3.0), torch.Generator().manual_seed(0))
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.02)  # 3 * 0.5 / (1 + 2 * 0.5)
    cfg = TrainConfig(steps=1000, lr=1e-3, warmup_steps=100, min_lr_fraction=0.1)
    assert learning_rate(0, cfg) == pytest.approx(1e-5)
    assert learning_rate(99, cfg) == pytest.approx(1e-3)
    assert learning_rate(999, cfg) == pytest.approx(1e-4, rel=1e-3)


def test_foreign_checkpoint_is_refused(tmp_path):
    save_tensors_atomic({"x": torch.zeros(1)}, tmp_path / CHECKPOINT_NAME, {"format": "something else"})
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(micro_model(), random_batch, loss_fn, TrainConfig(steps=2), tmp_path, progress=False)


def test_logs_with_varying_keys_are_averaged_per_key():
    from comfyui_syncav.train.loop import average_logs
    assert average_logs([{"loss": 1.0, "rule/shift": 0.5}, {"loss": 3.0}, {"loss": 2.0, "rule/shift": 1.5}]) == \
        {"loss": 2.0, "rule/shift": 1.0}


def test_config_values_are_checked_by_their_owner_and_named_by_the_front_end():
    with pytest.raises(ValueError, match=r"^TrainConfig\.lr: expected a finite number > 0, got nan$"):
        TrainConfig(steps=1, lr=float("nan"))
    with pytest.raises(ValueError, match=r"^TrainConfig\.steps: expected a whole number >= 1, got 2\.5$"):
        TrainConfig(steps=2.5)
    with pytest.raises(ValueError, match=r"^NoiseMix\.driven_fraction: expected a fraction in \[0, 1\], got 1\.5$"):
        FlowLossConfig(noise=NoiseMix(driven_fraction=1.5))
    # A front end renames the fields it knows (bare or with their config's name) and leaves the others as they are.
    with pytest.raises(ValueError, match=r"^--lr: expected a finite number > 0, got 0\.0$"), named_as({"lr": "--lr"}):
        TrainConfig(steps=1, lr=0.0)
    with pytest.raises(ValueError, match=r"^noise_shift: expected"), named_as({"NoiseMix.shift": "noise_shift"}):
        NoiseMix(shift=-1.0)
    with pytest.raises(ValueError, match=r"^NoiseMix\.logit_std: expected"), named_as({"lr": "--lr"}):
        NoiseMix(logit_std=0.0)
