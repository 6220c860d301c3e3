"""Contract of the joint model: presets, per-modality noise levels, guidance switches, errors."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from comfyui_syncav.model import (CheckpointError, JointConfig, JointModel, TowerConfig, audio_rope_scale,
                                  get_preset, load_joint_model, save_joint_model)


def small_config(prediction="velocity", layers=2) -> JointConfig:
    common = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=layers, freq_dim=32, text_dim=16, text_len=8,
                  audio_embed_kernel=3)
    return JointConfig(
        video=TowerConfig(modality="video", in_channels=4, out_channels=4, patch_size=(1, 2, 2), **common),
        audio=TowerConfig(modality="audio", in_channels=6, out_channels=6, patch_size=(1,), rope_scale=0.5, **common),
        prediction=prediction)


def inputs(batch=2, frames=3, size=4, audio_len=10):
    return dict(video=torch.randn(batch, 4, frames, size, size), audio=torch.randn(batch, audio_len, 6),
                text_video=torch.randn(batch, 5, 16), text_audio=torch.randn(batch, 3, 16))


@pytest.fixture
def model():
    return JointModel(small_config()).eval()


def call(model, x, sigma_video, sigma_audio, **kw):
    with torch.no_grad():
        return model(x["video"], x["audio"], sigma_video, sigma_audio, x["text_video"], x["text_audio"], **kw)


def test_ovi_presets_have_exactly_the_published_keys_and_shapes(reference_dir):
    manifest = json.loads((reference_dir / "ovi_full_keys.json").read_text())
    expected = {k: shape for k, (shape, _dtype) in manifest["keys"].items()}
    for name in ("ovi-720-5s", "ovi-960-5s", "ovi-960-10s"):
        with torch.device("meta"):
            model = JointModel(get_preset(name))
        found = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert found == expected, name
        assert sum(v.numel() for v in model.state_dict().values()) == manifest["_meta"]["total_params"]


def test_audio_rope_scale_from_codec_rates_gives_ovis_value():
    assert audio_rope_scale(video_fps=24, video_frames=121, video_temporal_stride=4,
                            audio_latents_per_second=31.25) == pytest.approx(0.19676, abs=5e-6)
    assert get_preset("ovi-720-5s").audio.rope_scale == pytest.approx(0.19676, abs=5e-6)
    # A non-causal codec with 16 fps / stride 2 (8 latent Hz) against 62.5 audio latents/s.
    assert audio_rope_scale(16, 32, 2, 62.5) == pytest.approx((1 + 31 // 2) / 2 / 62.5)
    with pytest.raises(ValueError, match="positive"):
        audio_rope_scale(0, 121, 4, 31.25)


def test_rows_are_independent_and_noise_levels_per_modality(model):
    x = inputs()
    sv, sa = torch.tensor([0.9, 0.3]), torch.tensor([0.0, 0.6])  # row 0: audio clean at sigma 0
    v, a = call(model, x, sv, sa)
    for row in range(2):
        one = {k: t[row:row + 1] for k, t in x.items()}
        v1, a1 = call(model, one, sv[row:row + 1], sa[row:row + 1])
        assert torch.allclose(v[row:row + 1], v1, atol=1e-5) and torch.allclose(a[row:row + 1], a1, atol=1e-5)
    # The audio noise level reaches the video output through cross-modal attention, and not without it.
    v_other, _ = call(model, x, sv, torch.tensor([0.5, 0.6]))
    assert (v_other[0] - v[0]).abs().max() > 1e-3
    v_alone, _ = call(model, x, sv, sa, cross_modal=False)
    v_alone_other, _ = call(model, x, sv, torch.tensor([0.5, 0.6]), cross_modal=False)
    assert torch.allclose(v_alone, v_alone_other, atol=1e-6)


def test_per_token_noise_level_equals_per_sample_when_uniform(model):
    x = inputs()
    v1, a1 = call(model, x, torch.tensor([0.4, 0.4]), torch.tensor([0.2, 0.2]))
    v2, a2 = call(model, x, torch.full((2, 3 * 2 * 2), 0.4), torch.full((2, 10), 0.2))
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-5)
    with pytest.raises(ValueError, match="sigma_video"):
        call(model, x, torch.full((2, 7), 0.4), torch.tensor([0.2, 0.2]))


def test_skip_rows_skip_blocks_only_for_chosen_rows(model):
    x = inputs()
    s = torch.tensor([0.5, 0.5])
    v_mixed, a_mixed = call(model, x, s, s, skip_blocks=(1,), skip_rows=torch.tensor([True, False]))
    v_skip, a_skip = call(model, x, s, s, skip_blocks=(1,))
    v_full, a_full = call(model, x, s, s)
    assert torch.allclose(v_mixed[0], v_skip[0], atol=1e-5) and torch.allclose(a_mixed[0], a_skip[0], atol=1e-5)
    assert torch.allclose(v_mixed[1], v_full[1], atol=1e-5) and torch.allclose(a_mixed[1], a_full[1], atol=1e-5)
    assert (v_skip[0] - v_full[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="skip_blocks"):
        call(model, x, s, s, skip_blocks=(5,))


def test_x0_head_returns_velocity_with_floored_sigma():
    torch.manual_seed(1)
    velocity_model = JointModel(small_config("velocity")).eval()
    x0_model = JointModel(small_config("x0")).eval()
    x0_model.load_state_dict(velocity_model.state_dict())
    x = inputs()
    sv, sa = torch.tensor([0.5, 0.01]), torch.tensor([0.25, 0.0])
    raw_v, raw_a = call(velocity_model, x, sv, sa)  # same network: its raw output is the x0 estimate
    v, a = call(x0_model, x, sv, sa)
    floor = x0_model.config.x0_sigma_floor
    expected_v = (x["video"] - raw_v) / sv.clamp(min=floor).view(2, 1, 1, 1, 1)
    expected_a = (x["audio"] - raw_a) / sa.clamp(min=floor).view(2, 1, 1)
    assert torch.allclose(v, expected_v, atol=1e-4) and torch.allclose(a, expected_a, atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(2)
    model = JointModel(small_config())
    x = inputs()
    s = torch.tensor([0.3, 0.7])
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(checkpointing)
        v, a = model(x["video"], x["audio"], s, s, x["text_video"], x["text_audio"])
        (v.square().mean() + a.square().mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_layers_come_from_the_operations_namespace():
    made = []

    class CountingLinear(nn.Linear):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    ops = SimpleNamespace(Linear=CountingLinear, Conv1d=nn.Conv1d, Conv3d=nn.Conv3d)
    model = JointModel(small_config(), operations=ops)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(made) == len(linears) == 2 * (5 + 2 * 12 + 1)  # per tower: 5 embedding, 12 per block, 1 head
    assert isinstance(model.video_model.blocks[0].cross_attn.k_fusion, CountingLinear)


@pytest.mark.parametrize("change, message", [
    (dict(video=torch.randn(2, 4, 3, 5, 4)), "multiple of its patch size"),
    (dict(video=torch.randn(2, 3, 3, 4, 4)), "video latent must be"),
    (dict(audio=torch.randn(2, 10, 5)), "audio latent must be"),
    (dict(text_video=torch.randn(2, 5, 12)), "12 wide"),
    (dict(text_audio=torch.randn(2, 9, 16)), "at most 8"),
])
def test_bad_inputs_name_what_was_expected(model, change, message):
    x = {**inputs(), **change}
    with pytest.raises(ValueError, match=message):
        call(model, x, torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))


def test_bad_files_get_clear_errors(tmp_path):
    model = JointModel(small_config())
    good = tmp_path / "good.safetensors"
    save_joint_model(model, good)
    assert load_joint_model(good).config == model.config

    with pytest.raises(CheckpointError, match="no such file"):
        load_joint_model(tmp_path / "absent.safetensors")
    pickle_file = tmp_path / "model.ckpt"
    torch.save({"w": torch.zeros(3)}, pickle_file)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_joint_model(pickle_file)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_joint_model(truncated)

    from safetensors.torch import save_file
    other = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="not a joint audio-video.*input_blocks"):
        load_joint_model(other)
    deeper = JointModel(small_config(layers=3))
    with pytest.raises(CheckpointError, match="another architecture: .*missing keys, e.g. .*blocks.2"):
        load_joint_model(good, config=deeper.config)


def test_heads_are_not_guessed_for_small_files_without_config(tmp_path):
    from safetensors.torch import save_file
    model = JointModel(small_config())
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, bare)  # no config metadata
    with pytest.raises(CheckpointError, match="number of attention heads.*pass num_heads"):
        load_joint_model(bare)
    assert load_joint_model(bare, num_heads=2).config.video.num_heads == 2
