"""Diffusion-DPO in flow-matching form (train/dpo_loss.py) on a micro joint model with LoRA."""

import math

import pytest
import torch

from comfyui_syncav.model import JointModel
from comfyui_syncav.runtime.lora import LoraSpec, add_lora, disabled_adapters, lora_layers
from comfyui_syncav.train.dpo_loss import DEFAULT_BETA, DPOConfig, av_dpo_loss, dpo_loss, paired_errors
from comfyui_syncav.train.noise_mix import NoiseMix, draw_noise
from comfyui_syncav.train.objectives import make_loss_fn
from comfyui_syncav.model.batch import AVBatch, PreferenceBatch
from comfyui_syncav.train.loop import TrainConfig, train
from micro_models import micro_model


pytestmark = pytest.mark.usefixtures("one_thread")


def pair(batch: int = 4, seed: int = 7) -> tuple[AVBatch, AVBatch]:
    """Winner: random clips; loser: the same clips with the audio shifted 3 latent steps (a temporal negative)."""
    g = torch.Generator().manual_seed(seed)
    winner = AVBatch(video=torch.randn(batch, 4, 2, 4, 4, generator=g), audio=torch.randn(batch, 6, 3, generator=g),
                     text_video=torch.randn(batch, 3, 8, generator=g), text_audio=torch.randn(batch, 3, 8, generator=g))
    return winner, winner._replace(audio=winner.audio.roll(3, dims=1))


def lora_model(prediction="x0", randomize_b=False) -> JointModel:
    model = add_lora(micro_model(prediction), LoraSpec(rank=4, alpha=4))
    if randomize_b:  # stands for a trained adapter: B = 0 would make policy == reference
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                b = layer.lora_B["default"].weight
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
    return model


def test_dpo_loss_matches_hand_computed_case():
    # Values chosen exactly representable in binary so the arithmetic below is exact.
    err_w = torch.tensor([0.5, 0.5, 0.75], requires_grad=True)
    ref_w = torch.tensor([0.5625, 0.5, 0.5])
    err_l = torch.tensor([0.625, 0.5, 0.5])
    ref_l = torch.tensor([0.5625, 0.5, 0.5])
    beta = 32.0
    loss, logs = dpo_loss(err_w, err_l, ref_w, ref_l, beta)
    # row 0: (0.5 - 0.5625) - (0.625 - 0.5625) = -0.125 -> logit -16 * -0.125 = 2 -> loss log(1 + e^-2) = 0.126928
    # row 1: a tie -> logit 0 -> log 2 = 0.693147
    # row 2: (0.75 - 0.5) - 0 = 0.25 -> logit -4 -> loss log(1 + e^4) = 4.018150
    expected = torch.tensor([math.log1p(math.exp(-2)), math.log(2), math.log1p(math.exp(4))])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert logs["accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)      # a tie counts half
    assert logs["reward_margin"] == pytest.approx((2 + 0 - 4) / 3)
    assert logs["winner_reward"] == pytest.approx(-16 * (-0.0625 + 0 + 0.25) / 3)
    # d loss_i / d err_w_i = beta/2 * sigmoid(-logit_i): 16 * sigmoid(-2), 16 * 0.5, 16 * sigmoid(4)
    loss.sum().backward()
    expected_grad = 16 * torch.sigmoid(-torch.tensor([2.0, 0.0, -4.0]))
    assert torch.allclose(err_w.grad, expected_grad, atol=1e-5)


def test_identical_winner_and_loser_give_log2_and_half_accuracy():
    e = torch.tensor([0.3, 0.7])
    loss, logs = dpo_loss(e, e, e * 0.9, e * 0.9, beta=1000.0)
    assert torch.allclose(loss, torch.full((2,), math.log(2)))
    assert logs["accuracy"] == 0.5 and logs["reward_margin"] == 0.0
    empty = torch.zeros(0)
    loss, logs = dpo_loss(empty, empty, empty, empty, beta=1.0)
    assert loss.shape == (0,) and math.isnan(logs["accuracy"])

    model = lora_model(randomize_b=True)           # policy != reference, so only the pair's identity can tie
    winner, _ = pair()
    loss, logs = av_dpo_loss(model, winner, winner, torch.Generator().manual_seed(0), DPOConfig())
    assert float(loss.detach()) == pytest.approx(2 * math.log(2), abs=1e-6)   # one log 2 per modality
    assert logs["video_dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs["audio_dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(logs["video_reward_margin"]) < 1e-3 and abs(logs["audio_reward_margin"]) < 1e-3


def test_reference_is_the_adapter_disabled_network_without_a_second_copy():
    base = micro_model()
    base_numel = sum(p.numel() for p in base.parameters())
    model = lora_model(randomize_b=True)
    winner, loser = pair()
    noise = draw_noise(winner, DPOConfig().noise, torch.Generator().manual_seed(1))
    with torch.no_grad():
        with disabled_adapters(model):
            reference = paired_errors(model, winner, loser, noise)
        expected = paired_errors(base, winner, loser, noise)
        policy = paired_errors(model, winner, loser, noise)
    for got, want, trained in zip(reference, expected, policy):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(trained, want)   # the adapters were really on outside the context

    # One set of base weights: the model holds base + LoRA parameters and nothing else, before and after a step.
    lora_numel = sum(l.lora_A["default"].weight.numel() + l.lora_B["default"].weight.numel()
                     for l in lora_layers(model).values())
    storages = lambda m: {p.untyped_storage().data_ptr() for p in m.parameters()}  # noqa: E731
    before = storages(model)
    assert sum(p.numel() for p in model.parameters()) == base_numel + lora_numel
    loss, _ = av_dpo_loss(model, winner, loser, torch.Generator().manual_seed(1), DPOConfig())
    loss.backward()
    assert storages(model) == before and len(before) == len(list(model.parameters()))
    # the reference context left the adapters on and trainable
    assert all(p.requires_grad for l in lora_layers(model).values() for p in l.lora_B.parameters())


def test_av_dpo_loss_is_dpo_of_policy_against_base_with_driven_rows_and_sft():
    cfg = DPOConfig(beta_video=800.0, beta_audio=1200.0, noise=NoiseMix(driven_fraction=0.5), sft_weight=0.25,
                    weight_video=1.0, weight_audio=0.5)
    model, base = lora_model(randomize_b=True), micro_model()
    winner, loser = pair(batch=8)
    loss, logs = av_dpo_loss(model, winner, loser, torch.Generator().manual_seed(5), cfg,
                             rules=["shift"] * 5 + ["reverse"] * 3)

    noise = draw_noise(winner, cfg.noise, torch.Generator().manual_seed(5))   # the same draws
    # 8 rows, half driven: [joint 0-3 | audio-driven video 4-5 | video-driven audio 6-7]
    assert torch.all(noise.sigma_audio[4:6] == 0) and torch.all(noise.sigma_video[6:] == 0)
    with torch.no_grad():
        pol, ref = paired_errors(model, winner, loser, noise), paired_errors(base, winner, loser, noise)
    l_video, _ = dpo_loss(pol.video_winner, pol.video_loser, ref.video_winner, ref.video_loser, 800.0)
    l_audio, _ = dpo_loss(pol.audio_winner, pol.audio_loser, ref.audio_winner, ref.audio_loser, 1200.0)
    expected = (1.0 * l_video[:4].mean() + 0.5 * l_audio[:4].mean()
                + 0.1 * l_video[4:6].mean() + 0.3 * l_audio[6:].mean()
                + 0.25 * (1.0 * pol.video_winner[:6].mean() + 0.5 * torch.cat([pol.audio_winner[:4],
                                                                               pol.audio_winner[6:]]).mean()))
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    for key in ("video_accuracy", "audio_accuracy", "video_reward_margin", "audio_reward_margin",
                "rule/shift/video_accuracy", "rule/reverse/audio_reward_margin", "audio_driven_video_dpo"):
        assert math.isfinite(logs[key]), key
    assert logs["audio_driven_video_dpo"] == pytest.approx(float(l_video[4:6].mean()), rel=1e-5)


def test_default_betas_follow_the_error_convention():
    assert DPOConfig().betas(micro_model("velocity").config) == {"video": 1000.0, "audio": 1000.0}
    assert DPOConfig().betas(micro_model("x0").config) == {"video": DEFAULT_BETA["x0"], "audio": 3000.0}
    assert DPOConfig(beta_audio=50).betas(micro_model("x0").config)["audio"] == 50.0
    with pytest.raises(ValueError, match="beta_video"):
        DPOConfig(beta_video=0)
    winner, loser = pair()
    with pytest.raises(ValueError, match="same shape"):
        av_dpo_loss(lora_model(), winner, loser._replace(audio=loser.audio[:, :5]), torch.Generator(), DPOConfig())
    with pytest.raises(ValueError, match="no LoRA adapters"):
        av_dpo_loss(micro_model(), winner, loser, torch.Generator(), DPOConfig())


def test_dpo_steps_lower_the_loss_and_move_only_lora():
    model = lora_model()
    winner, loser = pair()
    cfg = DPOConfig()
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss, logs = av_dpo_loss(model, winner, loser, torch.Generator().manual_seed(0), cfg)  # fixed draws
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(2 * math.log(2), abs=1e-6)   # LoRA init: policy == reference
    assert losses[-1] < 0.5 * losses[0], losses
    assert logs["video_accuracy"] > 0.5 and logs["audio_accuracy"] > 0.5
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base_before.items())
    assert all(not torch.equal(after[n], p) for n, p in lora_before.items() if ".lora_B." in n)
    assert all(".lora_" in n for n in lora_before)


def test_dpo_trains_through_the_shared_loop(tmp_path):
    model = lora_model()
    winner, loser = pair()
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = TrainConfig(steps=2, lr=1e-3, warmup_steps=1, ema_decay=None, log_every=1)
    result = train(model, lambda step, g: PreferenceBatch(winner, loser), make_loss_fn(DPOConfig()), cfg, tmp_path,
                   progress=False)
    assert result.state.step == 2 and "video_accuracy" in result.state.history[-1]
    assert all(torch.equal(dict(model.named_parameters())[n], p) for n, p in base_before.items())
    # The loop's optimizer stepped the adapters (B starts at zero).
    assert all(layer.lora_B["default"].weight.abs().max() > 0 for layer in lora_layers(model).values())


def test_prompts_of_other_lengths_are_zero_padded_like_the_towers_do():
    model = lora_model(randomize_b=True)
    winner, loser = pair()
    short = loser._replace(text_video=loser.text_video[:, :2])
    padded = loser._replace(text_video=torch.cat([loser.text_video[:, :2], torch.zeros(4, 1, 8)], dim=1))
    with torch.no_grad():
        a, _ = av_dpo_loss(model, winner, short, torch.Generator().manual_seed(2), DPOConfig())
        b, _ = av_dpo_loss(model, winner, padded, torch.Generator().manual_seed(2), DPOConfig())
    assert torch.equal(a, b)
