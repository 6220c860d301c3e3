"""Harmony's global-local interaction (JointConfig.cross_modal_window_frames): which tokens see which, that the
local path is local and the global path global, and that the option changes no parameter."""

import dataclasses

import pytest
import torch

from comfyui_syncav.generation.pipeline import embedded_config
from comfyui_syncav.model import JointModel
from comfyui_syncav.model.checkpoint import load_joint_model, save_joint_model
from comfyui_syncav.model.config import PRESETS
from comfyui_syncav.model.interaction import window_masks
from comfyui_syncav.model.rope import Rotation, audio_angles, video_angles
from comfyui_syncav.model.tower import TORCH_OPS, CrossAttention

from micro_models import micro_model


def test_window_masks_on_the_embedded_geometry():
    # 16 latent frames of 2 x 2 tokens (8 per second), 250 audio latents (125 per second): 0.064 frames apart.
    video_sees, audio_sees = window_masks((16, 2, 2), 250, 0.064, 1.0)
    assert video_sees.shape == (64, 250) and audio_sees.shape == (250, 64)
    # Frame 5 is centred at 5.5 frames = 687.5 ms; audio j at (j + 0.5) * 8 ms: |Δ| <= 1 frame = 125 ms.
    seen = torch.nonzero(video_sees[5 * 4]).flatten()
    assert seen.tolist() == list(range(70, 102))           # (70.5 .. 101.5) * 8 ms = 564 .. 812 ms
    assert torch.equal(video_sees[5 * 4], video_sees[5 * 4 + 3])   # every token of a frame sees the same audio
    assert torch.equal(audio_sees, video_sees.T)                # symmetric where no row needed its nearest key
    assert int(video_sees[0].sum()) == 23                    # frame 0 (62.5 ms): audio centred 4 .. 180 ms
    # Audio latent 100 (804 ms) sees frames 5 and 6 (687.5 and 812.5 ms centres) but not 7 (937.5 ms).
    frames_seen = sorted({int(i) // 4 for i in torch.nonzero(audio_sees[100]).flatten()})
    assert frames_seen == [5, 6]


def test_every_token_keeps_a_key_with_the_narrowest_window():
    video_sees, audio_sees = window_masks((3, 1, 1), 7, 0.3, 0.5)
    assert bool(video_sees.any(dim=1).all()) and bool(audio_sees.any(dim=1).all())


def test_local_path_is_local_and_global_path_sees_the_mean():
    torch.manual_seed(0)
    attn = CrossAttention(TORCH_OPS, 16, 2, True, 1e-6).eval()
    x, text, other = torch.randn(1, 4, 16), torch.randn(1, 3, 16), torch.randn(1, 10, 16)
    own, far = Rotation(audio_angles(4, 8, 1.0)), Rotation(audio_angles(10, 8, 1.0))
    visible = torch.zeros(4, 10, dtype=torch.bool)
    visible[:, :3] = True                                   # every query sees other tokens 0..2 only
    # Outside the window only the global (mean) path may react to a change of the other tower.
    moved = other.clone()
    moved[0, 6] += 2.0 * torch.randn(16)          # (not a constant: the pre-attention LayerNorm removes one)
    with torch.no_grad():
        base = attn(x, text, None, other, own, far, other_visible=visible)
        after = attn(x, text, None, moved, own, far, other_visible=visible)
        glob = lambda o: attn.o(attn.v_fusion(attn.pre_attn_norm_fusion(o).mean(dim=1, keepdim=True)))
        bias = attn.o.bias
        expected_change = (glob(moved) - bias) - (glob(other) - bias)
        assert torch.allclose(after - base, expected_change.expand_as(after), atol=1e-5)
        assert float(expected_change.abs().max()) > 1e-3          # the global path does react
        # Ovi's global fusion: the same change reaches the queries through the attention itself.
        full_base = attn(x, text, None, other, own, far)
        full_after = attn(x, text, None, moved, own, far)
        assert not torch.allclose(full_after - full_base, expected_change.expand_as(after), atol=1e-3)
        # Changing a token inside the window changes more than the global path does.
        inside = other.clone()
        inside[0, 1] += 2.0 * torch.randn(16)
        changed = attn(x, text, None, inside, own, far, other_visible=visible) - base
        global_only = (glob(inside) - bias) - (glob(other) - bias)
        assert float((changed - global_only).abs().max()) > 1e-3


def test_the_option_adds_no_parameter_and_survives_a_checkpoint(tmp_path):
    config = embedded_config()
    windowed = config.replace(cross_modal_window_frames=1.5)
    torch.manual_seed(0)
    model = JointModel(windowed)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in JointModel(config).state_dict().items()}
    save_joint_model(model, tmp_path / "w.safetensors")
    loaded = load_joint_model(tmp_path / "w.safetensors")
    assert loaded.config.cross_modal_window_frames == 1.5
    video, audio = torch.randn(2, 16, 4, 8, 8), torch.randn(2, 63, 32)
    sigma, text = torch.tensor([0.9, 0.4]), torch.randn(2, 5, 64)
    with torch.no_grad():
        a = model(video, audio, sigma, sigma, text, text)
        b = loaded(video, audio, sigma, sigma, text, text)
        plain = JointModel(config)
        plain.load_state_dict(model.state_dict())
        c = plain(video, audio, sigma, sigma, text, text)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert float((a[0] - c[0]).abs().max()) > 1e-2           # the window does change the computation


def test_windowed_rows_match_separate_forwards_and_the_cut_ignores_the_window():
    base = micro_model()
    model = JointModel(base.config.replace(cross_modal_window_frames=1.0))
    model.load_state_dict(base.state_dict())
    model.eval()
    video, audio = torch.randn(3, 4, 4, 4, 4), torch.randn(3, 9, 3)
    sigma, text = torch.tensor([0.9, 0.5, 0.2]), torch.randn(3, 4, 8)
    with torch.no_grad():
        joint = model(video, audio, sigma, sigma, text, text)
        rows = [model(video[i:i + 1], audio[i:i + 1], sigma[i:i + 1], sigma[i:i + 1], text[i:i + 1], text[i:i + 1])
                for i in range(3)]
        cut = model(video, audio, sigma, sigma, text, text, cross_modal=False)
        cut_plain = base(video, audio, sigma, sigma, text, text, cross_modal=False)
    assert torch.allclose(joint[0], torch.cat([r[0] for r in rows]), atol=1e-5)
    assert torch.allclose(joint[1], torch.cat([r[1] for r in rows]), atol=1e-5)
    assert torch.allclose(cut[0], cut_plain[0], atol=1e-6) and torch.allclose(cut[1], cut_plain[1], atol=1e-6)


def test_gradients_reach_the_cross_modal_projections_through_both_paths():
    base = micro_model()
    model = JointModel(base.config.replace(cross_modal_window_frames=0.5))
    video, audio = torch.randn(2, 4, 4, 4, 4), torch.randn(2, 9, 3)
    sigma, text = torch.tensor([0.9, 0.5]), torch.randn(2, 4, 8)
    out = model(video, audio, sigma, sigma, text, text)
    (out[0].square().mean() + out[1].square().mean()).backward()
    block = model.video_model.blocks[0].cross_attn
    assert float(block.v_fusion.weight.grad.abs().sum()) > 0 and float(block.k_fusion.weight.grad.abs().sum()) > 0


def test_ovi_presets_keep_global_fusion_and_bad_windows_are_refused():
    assert all(p.cross_modal_window_frames is None for p in PRESETS.values())
    config = embedded_config()
    for bad in (0.0, 0.25, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="cross_modal_window_frames"):
            config.replace(cross_modal_window_frames=bad)
    assert dataclasses.replace(config, cross_modal_window_frames=2).cross_modal_window_frames == 2
