"""Training with a small frozen base: block swap in the backward pass (LoRA resident, frozen weights swapped), the
frozen base in fp8, and the trainer's options for both (config, train-dpo flags, DPO Trainer node inputs)."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_syncav.model.batch import AVBatch, PreferenceBatch
from comfyui_syncav.runtime.block_swap import enable_block_swap, installed_block_swap
from comfyui_syncav.runtime.fp8 import FP8_OPS, layer_weight_keys, quantize_to_fp8
from comfyui_syncav.runtime.lora import LoraSpec, add_lora, lora_layers
from comfyui_syncav.train.dpo_loss import DPOConfig
from comfyui_syncav.train.dpo_training import DPOTrainingConfig, check_shard_base
from comfyui_syncav.train.loop import (MemoryConfig, TrainConfig, place_frozen_base, store_frozen_layers_in_fp8,
                                       train, trainable_parameters)
from comfyui_syncav.train.objectives import make_loss_fn
from comfyui_syncav.train.value_rules import ValueRuleError

from ovi_stand_ins import ovi_like_model

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = 4


def lora_model(fp8: bool = False):
    """A 4-block Ovi-shaped model with a rank-2 LoRA whose B is random (both factors then get gradients)."""
    model = ovi_like_model(layers=BLOCKS)
    torch.manual_seed(3)
    add_lora(model, LoraSpec(rank=2, alpha=2.0))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.05)
    if fp8:
        store_frozen_layers_in_fp8(model)
    return model


def pairs(model, batch: int = 2) -> PreferenceBatch:
    cfg = model.config
    g = torch.Generator().manual_seed(1)

    def clip():
        return AVBatch(torch.randn(batch, cfg.video.in_channels, 2, 4, 4, generator=g),
                       torch.randn(batch, 6, cfg.audio.in_channels, generator=g),
                       torch.randn(batch, 5, cfg.video.text_dim, generator=g) * 0.1,
                       torch.randn(batch, 3, cfg.audio.text_dim, generator=g) * 0.1)
    winner = clip()
    return PreferenceBatch(winner, winner._replace(video=winner.video.flip(2), audio=winner.audio.flip(1)))


DPO_LOSS = make_loss_fn(DPOConfig())


def dpo_step(model, batch):
    """The trainer's DPO loss (reference pass without grad, policy pass) and its backward, gradient checkpointed."""
    model.train()
    model.set_gradient_checkpointing(True)
    loss, _ = DPO_LOSS(model, batch, torch.Generator().manual_seed(5))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in trainable_parameters(model).items()}


def poison_masters(swap):
    """Fill the offloaded master copies with NaN and copy blocks in from clean clones instead: any use of a swapped
    block's weights outside the copy brought in for it (e.g. a backward reading them after the block went out)
    turns the gradients into NaN."""
    clean = {i: [t.clone() for t in swap._masters(i)] for i in swap.swapped}
    for i in swap.swapped:
        for t in swap._masters(i):
            t.fill_(math.nan)
    swap._masters = clean.__getitem__


@pytest.mark.parametrize("fp8", [False, True], ids=["fp32-base", "fp8-base"])
@pytest.mark.parametrize("prefetch", [False, True])
def test_block_swap_in_the_backward_gives_the_loss_and_lora_gradients_of_the_resident_model(fp8, prefetch):
    batch = pairs(ovi_like_model(layers=BLOCKS))
    expected_loss, expected_grads = dpo_step(lora_model(fp8), batch)

    model = lora_model(fp8)
    swap = enable_block_swap(model, blocks_on_gpu=1, device="cpu", prefetch=prefetch, keep_trainable=True)
    poison_masters(swap)
    loss, grads = dpo_step(model, batch)
    # Measured: bit-identical on the CPU (the same operations on copies of the same values), for both bases.
    assert torch.equal(loss, expected_loss)
    assert grads.keys() == expected_grads.keys() and len(grads) == 2 * 2 * 12 * BLOCKS  # A, B x towers x layers
    assert all(torch.equal(grads[k], expected_grads[k]) for k in grads)
    assert all(g.abs().max() > 0 for g in grads.values())
    # Three swapped blocks: in for the reference pass, the policy pass and the backward's recomputation.
    assert (swap.moves_in, swap.moves_in_backward) == (9, 3)
    assert not any(swap.on_device(j) for j in swap.swapped)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_block_swap_in_the_backward_on_cuda_gives_the_resident_gradients():
    """Masters in pinned CPU memory, copies made on a side stream: a backward that read a master would fail on the
    device mismatch; one that read a copy before its transfer finished would give other gradients."""
    batch = pairs(ovi_like_model(layers=BLOCKS))
    cuda_batch = PreferenceBatch(batch.winner.to("cuda"), batch.loser.to("cuda"))
    expected_loss, expected_grads = dpo_step(lora_model().cuda(), cuda_batch)
    model = lora_model().cuda()
    swap = enable_block_swap(model, blocks_on_gpu=1, device="cuda", keep_trainable=True)
    assert swap.prefetch and next(model.video_model.blocks[3].self_attn.q.base_layer.parameters()).is_pinned()
    assert model.video_model.blocks[3].self_attn.q.lora_A["default"].weight.is_cuda
    loss, grads = dpo_step(model, cuda_batch)
    assert (swap.moves_in, swap.moves_in_backward) == (9, 3)
    # Not measured on a GPU yet: the same kernels on the same values, up to the attention backward's atomics.
    assert torch.allclose(loss, expected_loss, rtol=1e-5, atol=0)
    assert all(torch.allclose(grads[k], expected_grads[k], rtol=1e-4, atol=1e-6) for k in grads)


def test_swapped_blocks_keep_their_lora_factors_resident_and_the_optimizer_moves_them():
    batch = pairs(ovi_like_model(layers=BLOCKS))
    model = lora_model()
    params = trainable_parameters(model)
    swap = enable_block_swap(model, blocks_on_gpu=1, device="cpu", keep_trainable=True)
    poison_masters(swap)
    # Only frozen tensors are swapped: the LoRA factors of blocks 1..3 have no slot, and stay the same objects.
    swapped_ids = {id(original) for i in swap.swapped for _, _, original in swap._slots[i]}
    assert swap.trainable_resident == 2 * 2 * 12 * (BLOCKS - 1) and not swapped_ids & {id(p) for p in params.values()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-2)
    before = {k: p.detach().clone() for k, p in params.items()}
    dpo_step(model, batch)
    optimizer.step()
    assert trainable_parameters(model) == params      # the very Parameter objects the optimizer holds
    late = [k for k in params if ".blocks.3." in k]
    assert late and all(not torch.equal(params[k], before[k]) for k in late)

    # The same step on the resident model lands on the same weights.
    plain = lora_model()
    plain_params = trainable_parameters(plain)
    plain_optimizer = torch.optim.AdamW(list(plain_params.values()), lr=1e-2)
    dpo_step(plain, batch)
    plain_optimizer.step()
    assert all(torch.equal(params[k], plain_params[k]) for k in params)


def test_block_swap_for_sampling_refuses_to_train_a_swapped_parameter():
    """Installed without keep_trainable, a swapped block's LoRA factors are swapped too: a backward would give their
    gradients to the copies, so running such a block with grad enabled is an error, not a silent no-op."""
    model = lora_model()
    enable_block_swap(model, blocks_on_gpu=1, device="cpu")
    with pytest.raises(RuntimeError, match="fusion block 1 is swapped with parameters that require grad.*"
                                           "keep_trainable=True"):
        dpo_step(model, pairs(model))


def test_fp8_base_keeps_the_lora_precision_and_computes_the_rounded_function():
    model = lora_model(fp8=True)
    base = model.video_model.blocks[0].self_attn.q.base_layer
    assert isinstance(base, FP8_OPS.Linear) and base.weight.dtype == torch.float8_e4m3fn
    assert isinstance(model.video_model.patch_embedding, FP8_OPS.Conv3d)
    assert {p.dtype for p in trainable_parameters(model).values()} == {torch.float32}
    fp8 = {name for name, p in model.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert fp8 == {k for k in layer_weight_keys(model) if ".lora_" not in k}   # every frozen matrix, nothing else
    assert {p.dtype for name, p in model.named_parameters() if name not in fp8} == {torch.float32}  # biases, norms
    assert model.compute_dtype == torch.float32                      # computes as it did before

    # The same model with its matrices rounded and kept in fp32: the fp8 storage adds no error of its own.
    rounded = lora_model()
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if not p.requires_grad and name.endswith("weight") and p.dim() >= 2:
                p.copy_(quantize_to_fp8(p).float())
    batch = pairs(rounded)
    loss, grads = dpo_step(model, batch)
    ref_loss, ref_grads = dpo_step(rounded, batch)
    # Measured: bit-identical (an fp8 value upcast to fp32 is exact, and the layers then compute the same).
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[k], ref_grads[k]) for k in grads)


# ------------------------------------------------------------------------------------------------ the trainer

def run_loop(tmp_path, memory: MemoryConfig, name: str, steps: int = 2):
    model = lora_model()
    batch = pairs(model)
    cfg = TrainConfig(steps=steps, lr=1e-2, warmup_steps=0, ema_decay=None, memory=memory, log_every=1)
    train(model, lambda step, g: batch, DPO_LOSS, cfg, tmp_path / name, progress=False)
    return model


def test_the_loop_trains_with_block_swap_and_an_fp8_base_like_without_swap(tmp_path):
    swapped = run_loop(tmp_path, MemoryConfig(base_fp8=True, blocks_on_gpu=1), "swap")
    swap = installed_block_swap(swapped)
    assert swap is not None and swap.swapped == (1, 2, 3)
    assert swapped.gradient_checkpointing                         # block swap turns checkpointing on
    # 2 steps x 3 swapped blocks x (reference, policy, recomputation)
    assert (swap.moves_in, swap.moves_in_backward) == (18, 6)
    assert swapped.video_model.blocks[2].ffn[0].base_layer.weight.dtype == torch.float8_e4m3fn

    # Without swap (checkpointing on, as swap has it): the same LoRA after two optimizer steps.
    resident = lora_model()
    resident.set_gradient_checkpointing(True)
    batch = pairs(resident)
    cfg = TrainConfig(steps=2, lr=1e-2, warmup_steps=0, ema_decay=None, gradient_checkpointing=True,
                      memory=MemoryConfig(base_fp8=True), log_every=1)
    train(resident, lambda step, g: batch, DPO_LOSS, cfg, tmp_path / "resident", progress=False)
    assert installed_block_swap(resident) is None
    a, b = trainable_parameters(swapped), trainable_parameters(resident)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], lora_model().state_dict()[k]) for k in a)


def test_a_model_loaded_with_block_swap_is_swapped_again_for_training():
    """build_ovi_pipeline(blocks_on_gpu=...) installs block swap before the trainer adds adapters: the trainer
    swaps it again so the new adapters stay resident, keeping the count unless the config gives one."""
    model = ovi_like_model(layers=BLOCKS)
    enable_block_swap(model, 2, "cpu")
    add_lora(model, LoraSpec(rank=2, alpha=2.0))
    swap = place_frozen_base(model, MemoryConfig(), "cpu")
    assert swap is installed_block_swap(model) and swap.blocks_on_gpu == 2 and swap.trainable_resident > 0
    again = place_frozen_base(model, MemoryConfig(blocks_on_gpu=3), "cpu")
    assert again.swapped == (3,) and installed_block_swap(model) is again


@pytest.mark.parametrize("fields, message", [
    (dict(blocks_on_gpu=-1), "MemoryConfig.blocks_on_gpu: expected a whole number >= 0, got -1"),
    (dict(blocks_on_gpu=2.5), "MemoryConfig.blocks_on_gpu: expected a whole number >= 0, got 2.5"),
    (dict(blocks_on_gpu=True), "MemoryConfig.blocks_on_gpu: expected a whole number >= 0, got True"),
    (dict(base_fp8="yes"), "MemoryConfig.base_fp8: expected True or False, got 'yes'"),
])
def test_memory_config_refuses_bad_values(fields, message):
    with pytest.raises(ValueRuleError, match=message):
        MemoryConfig(**fields)


def test_dpo_config_carries_the_memory_options_into_the_loop_and_its_json():
    config = DPOTrainingConfig(memory={"base_fp8": True, "blocks_on_gpu": 3})       # the JSON form
    assert config.memory == MemoryConfig(True, 3) and config.train_config().memory is config.memory
    assert config.to_dict()["memory"] == {"base_fp8": True, "blocks_on_gpu": 3}
    assert DPOTrainingConfig(**{**config.to_dict(), "curriculum": config.curriculum}).memory == config.memory
    assert DPOTrainingConfig().train_config().memory == MemoryConfig()
    check_shard_base(True, MemoryConfig())
    with pytest.raises(ValueRuleError, match="shard_base: expected False when the frozen base is in fp8"):
        check_shard_base(True, MemoryConfig(blocks_on_gpu=2))


def test_fp8_refuses_a_layer_that_cannot_cast_its_weight():
    class Plain(torch.nn.Linear):
        pass

    model = ovi_like_model()
    model.video_model.blocks[0].self_attn.q.__class__ = Plain
    with pytest.raises(ValueError, match=r"base_fp8: video_model.blocks.0.self_attn.q.weight is a Plain"):
        store_frozen_layers_in_fp8(model.requires_grad_(False))


# ------------------------------------------------------------------------------------------------ front ends

def test_train_dpo_takes_base_fp8_and_blocks_on_gpu(tmp_path, capsys, monkeypatch):
    from comfyui_syncav.cli import main
    from comfyui_syncav.train import loop

    placed = []
    place = loop.place_frozen_base
    monkeypatch.setattr(loop, "place_frozen_base", lambda *a: placed.append(place(*a)) or placed[-1])
    out = tmp_path / "run"
    assert main(["train-dpo", "--steps", "1", "--batch-size", "1", "--rank", "2", "--base-fp8", "--blocks-on-gpu",
                 "1", "--out", str(out)]) == 0
    (swap,) = placed
    assert swap.swapped == (1, 2, 3, 4, 5) and swap.moves_in_backward == 5  # the embedded model's 6 blocks
    assert swap.model.video_model.blocks[3].ffn[0].base_layer.weight.dtype == torch.float8_e4m3fn
    assert "trained 1 steps" in capsys.readouterr().out
    for extra, message in ((["--blocks-on-gpu", "-2"], "--blocks-on-gpu: expected a whole number >= 0, got -2"),
                           (["--blocks-on-gpu", "2", "--shard-base"], "--shard-base: expected False when")):
        assert main(["train-dpo", "--out", str(tmp_path / "bad")] + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_dpo_trainer_node_takes_base_fp8_and_blocks_on_gpu(tmp_path, monkeypatch):
    comfy_nodes = pytest.importorskip("comfy_nodes")
    from comfyui_syncav.nodes import dpo_trainer
    from comfyui_syncav.ovi.checkpoint_choice import EMBEDDED_DEFAULT

    monkeypatch.setenv("SYNCAV_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("SYNCAV_MODELS_DIR", str(tmp_path / "models"))
    optional = comfy_nodes.info("SyncAVDPOTrainer")["input"]["optional"]
    assert optional["base_fp8"][1]["default"] is False and optional["blocks_on_gpu"][1]["default"] == -1
    configs = []
    monkeypatch.setattr(dpo_trainer, "train_dpo", lambda pipeline, out, config, **kw: configs.append(config) or
                        (_ for _ in ()).throw(RuntimeError("stop")))
    with torch.inference_mode():
        model, codecs, text_encoder = comfy_nodes.node("SyncAVLoader").load(EMBEDDED_DEFAULT, "auto")
        spec = comfy_nodes.node("SyncAVNegatives").build("curriculum", DPOTrainingConfig().curriculum.to_json(),
                                                         "staged", "", codecs, 0, 0.0, 0)[0]
        settings = dict(objective="dpo", steps=1, batch_size=1, lr=1e-3, rank=2, beta_video=0.0, beta_audio=0.0,
                        save_every=100, output_name="run", resume=True, seed=0)
        trainer = comfy_nodes.node("SyncAVDPOTrainer")
        for extra in ({}, dict(base_fp8=True, blocks_on_gpu=0)):
            with pytest.raises(RuntimeError, match="stop"):
                trainer.train(model, codecs, text_encoder, spec, **settings, **extra)
        with pytest.raises(ValueError, match="blocks_on_gpu: expected a whole number >= 0, got -3"):
            trainer.train(model, codecs, text_encoder, spec, **settings, blocks_on_gpu=-3)
    assert [c.memory for c in configs] == [MemoryConfig(), MemoryConfig(base_fp8=True, blocks_on_gpu=0)]
