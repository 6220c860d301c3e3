"""LoRA on the joint model (runtime/lora.py): peft injection, ComfyUI-convention files, merging with strengths."""

import re

import pytest
import torch

from comfyui_syncav.model import JointConfig, JointModel
from comfyui_syncav.runtime.lora import (LoraSpec, add_lora, apply_lora, comfy_lora_key_map, disabled_adapters,
                                       load_lora, lora_layers, lora_state_dict, save_lora, split_by_tower)
from comfyui_syncav.files.safetensors_io import CheckpointError, save_tensors_atomic
from comfyui_syncav.nodes.comfy_types import SyncAVModel
from micro_models import micro_model


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(batch=2):
    g = torch.Generator().manual_seed(11)
    return (torch.randn(batch, 4, 2, 4, 4, generator=g), torch.randn(batch, 6, 3, generator=g),
            torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.9]),
            torch.randn(batch, 3, 8, generator=g), torch.randn(batch, 3, 8, generator=g))


@torch.no_grad()
def outputs(model):
    return model(*inputs())


def trained_lora_model(spec=LoraSpec(rank=4, alpha=8)) -> JointModel:
    """A LoRA model whose adapters moved away from init (as training would), deterministically."""
    model = add_lora(micro_model(), spec)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            b = layer.lora_B["default"].weight
            b.copy_(0.2 * torch.randn(b.shape, generator=g))
    return model


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lora_init_leaves_the_output_unchanged_and_trains_only_adapters():
    base_out = outputs(micro_model())
    model = add_lora(micro_model(), LoraSpec(rank=4, alpha=4))
    for got, want in zip(outputs(model), base_out):
        assert torch.equal(got, want)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(re.search(r"\.lora_[AB]\.default\.weight$", n) for n in trainable)
    assert len(lora_layers(model)) == 2 * 2 * 12        # towers x blocks x (8 attention + 2 fusion + 2 ffn)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model, LoraSpec())


def test_spec_chooses_towers_and_groups():
    model = add_lora(micro_model(), LoraSpec(rank=2, alpha=2, targets=("fusion",), towers=("audio",)))
    assert sorted(lora_layers(model)) == [f"audio_model.blocks.{i}.cross_attn.{k}_fusion"
                                          for i in (0, 1) for k in ("k", "v")]
    assert LoraSpec.from_json(LoraSpec(targets=["ffn"]).to_json()) == LoraSpec(targets=("ffn",))
    with pytest.raises(ValueError, match="targets"):
        LoraSpec(targets=("mlp",))


def test_disabled_adapters_is_the_base_model_and_restores_state():
    base_out = outputs(micro_model())
    model = trained_lora_model()
    trained_out = outputs(model)
    frozen = lora_layers(model)["video_model.blocks.0.ffn.0"].lora_A["default"].weight
    frozen.requires_grad_(False)     # a caller's choice the context must not undo
    with disabled_adapters(model):
        for got, want in zip(outputs(model), base_out):
            assert torch.equal(got, want)
    for got, want in zip(outputs(model), trained_out):
        assert torch.equal(got, want)
    assert not frozen.requires_grad
    assert lora_layers(model)["video_model.blocks.0.ffn.2"].lora_B["default"].weight.requires_grad
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with disabled_adapters(micro_model()):
            pass


def test_keys_follow_comfyui_convention_and_key_map():
    model = trained_lora_model()
    tensors = lora_state_dict(model)
    pattern = re.compile(r"^diffusion_model\.(video|audio)_model\.blocks\.[01]\."
                         r"(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_fusion|v_fusion)|ffn\.[02])"
                         r"\.(lora_A\.weight|lora_B\.weight|alpha)$")
    assert len(tensors) == 48 * 3 and all(pattern.match(k) for k in tensors)
    alpha = tensors["diffusion_model.video_model.blocks.0.self_attn.q.alpha"]
    assert alpha.dim() == 0 and float(alpha) == 8.0
    assert tensors["diffusion_model.video_model.blocks.0.ffn.0.lora_A.weight"].shape == (4, 16)   # [rank, in]
    assert tensors["diffusion_model.video_model.blocks.0.ffn.0.lora_B.weight"].shape == (32, 4)   # [out, rank]

    # ComfyUI: "diffusion_model.<path>" -> a real key of the ModelPatcher's model (SyncAVModel wraps the joint model)
    plain = micro_model()
    key_map = comfy_lora_key_map(plain)
    patcher_keys = set(SyncAVModel(plain).state_dict())
    prefixes = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in tensors}
    assert all(key_map[p] == p + ".weight" and key_map[p] in patcher_keys for p in prefixes)
    assert all(v in patcher_keys for v in key_map.values())
    # On the peft-wrapped model the map points at the base weight peft keeps under base_layer.
    assert comfy_lora_key_map(model)["diffusion_model.video_model.blocks.0.self_attn.q"] == \
        "diffusion_model.video_model.blocks.0.self_attn.q.base_layer.weight"
    halves = split_by_tower(tensors)
    assert len(halves["video"]) == len(halves["audio"]) == 72


def test_save_load_apply_reproduces_the_trained_output(tmp_path):
    model = trained_lora_model()
    trained_out = outputs(model)
    path = tmp_path / "sync.safetensors"
    save_lora(model, path, {"steps": 3, "note": "test"})
    tensors, metadata = load_lora(path)
    assert metadata["base_model"] == "micro" and metadata["steps"] == "3" and metadata["note"] == "test"
    assert LoraSpec.from_json(metadata["lora_spec"]) == LoraSpec(rank=4, alpha=8)
    assert JointConfig.from_json(metadata["base_config"]) == micro_model().config

    fresh = micro_model()
    handle = apply_lora(fresh, tensors)
    for got, want in zip(outputs(fresh), trained_out):
        assert torch.allclose(got, want, atol=1e-5)
    assert handle.num_layers == 48


def test_strengths_zero_exact_half_between_and_restore():
    tensors = lora_state_dict(trained_lora_model())
    model = micro_model()
    base_w, base_out = weights(model), outputs(model)

    with apply_lora(model, tensors, strength_video=0.0, strength_audio=0.0) as handle:
        assert handle.num_layers == 0
        for got, want in zip(outputs(model), base_out):
            assert torch.equal(got, want)                              # strength 0: the base, bit for bit

    full = apply_lora(model, tensors)
    full_w, full_out = weights(model), outputs(model)
    full.restore()
    for k, v in weights(model).items():
        assert torch.allclose(v, base_w[k], rtol=0, atol=1e-6), k     # restored to within rounding

    half = apply_lora(model, tensors, strength_video=0.5, strength_audio=0.5)
    half_out = outputs(model)
    key = "video_model.blocks.1.cross_attn.k_fusion.weight"
    assert torch.allclose(weights(model)[key], (base_w[key] + full_w[key]) / 2, atol=1e-6)   # linear in strength
    for base_o, half_o, full_o in zip(base_out, half_out, full_out):
        to_half, to_full = (half_o - base_o).norm(), (full_o - base_o).norm()
        assert 0 < to_half < to_full
    half.restore()


def test_audio_strength_zero_leaves_the_audio_tower_exactly_base():
    tensors = lora_state_dict(trained_lora_model())
    model = micro_model()
    base_w = weights(model)
    apply_lora(model, tensors, strength_video=1.0, strength_audio=0.0)
    after = weights(model)
    assert all(torch.equal(after[k], base_w[k]) for k in after if k.startswith("audio_model."))
    assert any(not torch.equal(after[k], base_w[k]) for k in after if k.startswith("video_model."))


def test_a_lora_for_another_architecture_is_a_clear_error(tmp_path):
    tensors = lora_state_dict(trained_lora_model())
    wider = micro_model(dim=24)
    before = weights(wider)
    expected = (r"does not fit this model \(48 of 48 modules differ.*"
                r"video_model.blocks.0.self_attn.q: LoRA gives \[out, in\] = \[16, 16\], "
                r"the model's weight is \[24, 24\]")
    with pytest.raises(CheckpointError, match=expected):
        apply_lora(wider, tensors)
    assert all(torch.equal(v, before[k]) for k, v in weights(wider).items())   # nothing half-applied

    renamed = {k.replace("self_attn.q", "attn.qkv"): v for k, v in tensors.items()}
    with pytest.raises(CheckpointError, match="attn.qkv: no such linear layer"):
        apply_lora(micro_model(), renamed)

    save_tensors_atomic({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 2)}, tmp_path / "sd.safetensors")
    with pytest.raises(CheckpointError, match="do not follow the LoRA key convention"):
        load_lora(tmp_path / "sd.safetensors")
    lone_a = {k: v for k, v in tensors.items() if not k.endswith("lora_B.weight")}
    with pytest.raises(CheckpointError, match="lora_A and lora_B must both be present"):
        apply_lora(micro_model(), lone_a)


def test_lora_over_an_fp8_base_gets_factors_in_the_compute_dtype_and_trains():
    from comfyui_syncav.runtime.fp8 import FP8_OPS, layer_weight_keys, quantize_to_fp8

    base = micro_model(prediction="velocity")
    with torch.device("meta"):
        fp8 = JointModel(base.config, FP8_OPS)
    keys = layer_weight_keys(fp8)
    fp8.load_state_dict({k: (quantize_to_fp8(v) if k in keys else v) for k, v in base.state_dict().items()},
                        assign=True)
    fp8.compute_dtype = torch.float32
    add_lora(fp8, LoraSpec(rank=4))
    factors = {name: p for name, p in fp8.named_parameters() if p.requires_grad}
    assert factors and {p.dtype for p in factors.values()} == {torch.float32}   # peft alone makes them fp8
    g = torch.Generator().manual_seed(0)
    video, audio = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 5, 3, generator=g)
    out_v, out_a = fp8(video, audio, torch.tensor([0.5]), torch.tensor([0.5]), torch.randn(1, 4, 8, generator=g),
                       torch.randn(1, 3, 8, generator=g))
    (out_v.square().mean() + out_a.square().mean()).backward()
    grads = [p.grad for name, p in factors.items() if "lora_B" in name]   # B starts at 0, A does not
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().max() > 0 for g in grads)
