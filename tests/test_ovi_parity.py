"""Our joint model computes the same function as Ovi's reference code on the reference fixture."""

import json

import pytest
import torch
from safetensors.torch import load_file

from comfyui_syncav.model import load_joint_model, save_joint_model

SIGMA = torch.tensor([0.7], dtype=torch.float64)  # the fixture's t = 700 on Ovi's 0..1000 scale
FP32_ATOL = 1e-4  # the reference README's tolerance for an fp32 implementation


@pytest.fixture(scope="module")
def case(reference_dir):
    return load_file(str(reference_dir / "ovi_tiny_case.safetensors"))


@pytest.fixture(scope="module")
def model_fp32(reference_dir):
    return load_joint_model(reference_dir / "ovi_tiny_weights.safetensors", num_heads=4)


def _run(model, case, dtype=torch.float32, sigma_video=SIGMA, **kw):
    with torch.no_grad():
        v, a = model(case["input.video"][None].to(dtype), case["input.audio"][None].to(dtype), sigma_video, SIGMA,
                     case["input.context_video"][None].to(dtype), case["input.context_audio"][None].to(dtype), **kw)
    return v[0].float(), a[0].float()


def test_loader_reads_config_off_ovi_shapes(model_fp32, reference_dir):
    meta = json.loads((reference_dir / "ovi_tiny_case.json").read_text())
    cfg = model_fp32.config
    assert (cfg.video.dim, cfg.video.ffn_dim, cfg.num_blocks, cfg.video.text_len) == (64, 128, 2, 512)
    assert cfg.video.patch_size == (1, 2, 2) and cfg.video.in_channels == 48 and cfg.audio.in_channels == 20
    assert cfg.audio.rope_scale == pytest.approx(meta["audio_config"]["temporal_rope_scaling_factor"], abs=1e-5)
    assert sum(p.numel() for p in model_fp32.parameters()) == meta["weights"]["n_params"]


@pytest.mark.parametrize("variant, kwargs", [("", {}), ("_slg", {"skip_blocks": (1,)})])
def test_fp32_matches_reference(model_fp32, case, variant, kwargs):
    v, a = _run(model_fp32, case, **kwargs)
    assert (v - case[f"output_fp32.video{variant}"]).abs().max() < FP32_ATOL
    assert (a - case[f"output_fp32.audio{variant}"]).abs().max() < FP32_ATOL


def test_fp32_per_token_noise_level_matches_reference_i2v(model_fp32, case):
    # The reference gives t = 0 to the 16 video tokens of latent frame 0 (3 x 4 x 4 token grid).
    sigma_video = SIGMA.repeat(1, 48)
    sigma_video[:, :16] = 0
    v, a = _run(model_fp32, case, sigma_video=sigma_video)
    assert (v - case["output_fp32.video_i2v"]).abs().max() < FP32_ATOL
    assert (a - case["output_fp32.audio_i2v"]).abs().max() < FP32_ATOL


def test_fp32_intermediate_blocks_match(model_fp32, case):
    """Block outputs, through a hook: localises a departure if the end-to-end check ever fails."""
    outs = []
    original = model_fp32._fusion_block

    def spy(*args):
        result = original(*args)
        outs.append(result)
        return result

    model_fp32._fusion_block = spy
    try:
        _run(model_fp32, case)
    finally:
        del model_fp32._fusion_block
    for i, (v, a) in enumerate(outs):
        assert (v - case[f"intermediate_fp32.block{i}_out.video"]).abs().max() < FP32_ATOL
        assert (a - case[f"intermediate_fp32.block{i}_out.audio"]).abs().max() < FP32_ATOL


@pytest.mark.parametrize("variant, kwargs", [("", {}), ("_slg", {"skip_blocks": (1,)})])
def test_bf16_checkpoint_matches_bf16_reference(reference_dir, case, variant, kwargs):
    model = load_joint_model(reference_dir / "ovi_tiny_weights_bf16.safetensors", num_heads=4)
    assert model.video_model.patch_embedding.weight.dtype == torch.bfloat16
    v, a = _run(model, case, dtype=torch.bfloat16, **kwargs)
    for out, ref in ((v, case[f"output.video{variant}"]), (a, case[f"output.audio{variant}"])):
        # A few bf16 ulps (1 ulp = 2^-5 for |x| in [4, 8)); the reference's own bf16-vs-fp32 gap is 3.3e-2.
        assert (out - ref).abs().max() <= 0.0625
        assert ((out - ref).norm() / ref.norm()) < 0.012


def test_saved_model_reloads_identically(model_fp32, case, tmp_path):
    save_joint_model(model_fp32, tmp_path / "m.safetensors")
    again = load_joint_model(tmp_path / "m.safetensors")  # config from metadata: no num_heads needed
    assert again.config == model_fp32.config
    v1, a1 = _run(model_fp32, case)
    v2, a2 = _run(again, case)
    # Same weights, same function; kernels may pick another summation order for another memory layout.
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-5)


def test_structural_switches_change_the_output(model_fp32, case):
    """cross_modal=False must really cut the towers apart (the reference ablation moves outputs by 2-4)."""
    v, a = _run(model_fp32, case)
    v_alone, a_alone = _run(model_fp32, case, cross_modal=False)
    assert (v - v_alone).abs().max() > 0.5 and (a - a_alone).abs().max() > 0.5
