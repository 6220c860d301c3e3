"""Block expansion (model/growth.py) and train-default's --blocks: a deeper network starts as the trained one."""

import pytest
import torch

from comfyui_syncav.model import JointModel, load_joint_model, save_joint_model
from comfyui_syncav.model.growth import deepen, expansion_sources
from micro_models import micro_model


def _inputs(model: JointModel, seed: int = 1):
    cfg, g = model.config, torch.Generator().manual_seed(seed)
    video = torch.randn(2, cfg.video.in_channels, 3, 4, 4, generator=g)
    audio = torch.randn(2, 12, cfg.audio.in_channels, generator=g)
    text = torch.randn(2, cfg.video.text_len, cfg.video.text_dim, generator=g)
    sigma = torch.tensor([0.8, 0.3])
    return video, audio, sigma, sigma.flip(0), text, text


def test_copies_spread_evenly_and_follow_their_source():
    assert expansion_sources(4, 6) == [0, 1, 1, 2, 3, 3]
    assert expansion_sources(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert expansion_sources(2, 3) == [0, 1, 1]
    assert expansion_sources(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"can only deepen \(4 blocks -> 3\)"):
        expansion_sources(4, 3)


def test_the_deeper_model_computes_what_the_trained_one_computes_and_its_new_blocks_learn():
    model = micro_model()
    with torch.no_grad():          # trained-looking weights: no zero or identity that would hide a wrong copy
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    deeper = deepen(model, 3)
    assert deeper.config.num_blocks == 3 and deeper.config.with_num_blocks(2) == model.config
    inputs = _inputs(model)
    with torch.no_grad():
        before, after = model(*inputs), deeper(*inputs)
    for old, new in zip(before, after):
        # Adding an exact zero changes no bit; the tolerance only covers BLAS kernels that round by alignment.
        assert (new - old).abs().max().item() < 1e-5, (new - old).abs().max().item()
    # The copy is block 1's inner weights with its output projections at zero, in both towers.
    for tower in (deeper.video_model, deeper.audio_model):
        assert torch.equal(tower.blocks[2].self_attn.q.weight, tower.blocks[1].self_attn.q.weight)
        assert tower.blocks[2].ffn[2].weight.abs().max() == 0 and tower.blocks[1].ffn[2].weight.abs().max() > 0
    # The zero projections get a gradient at once: the new block is not stuck at the identity.
    loss = sum(out.square().mean() for out in deeper(*inputs))
    loss.backward()
    assert deeper.video_model.blocks[2].cross_attn.o.weight.grad.abs().max() > 1e-6
    assert deeper.audio_model.blocks[2].self_attn.o.weight.grad.abs().max() > 1e-6


def test_a_deepened_file_loads_with_its_depth(tmp_path):
    deeper = deepen(micro_model(), 4)
    save_joint_model(deeper, tmp_path / "deep.safetensors")
    loaded = load_joint_model(tmp_path / "deep.safetensors")
    assert loaded.config.num_blocks == 4
    inputs = _inputs(deeper, seed=2)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(deeper(*inputs), loaded(*inputs)))


def test_train_default_blocks_option_reaches_the_recipe_and_never_cuts(tmp_path, capsys):
    from comfyui_syncav.cli import build_parser, main
    from comfyui_syncav.cli.train import default_recipe
    from comfyui_syncav.generation.pipeline import embedded_config

    recipe = default_recipe(build_parser().parse_args(["train-default", "--out", "run", "--steps", "5",
                                                       "--blocks", "6", "--warmup-steps", "100"]))
    assert recipe.joint_config() == embedded_config().with_num_blocks(6) and recipe.train.warmup_steps == 100
    assert default_recipe(build_parser().parse_args(["train-default", "--out", "run", "--steps", "5"])
                          ).joint_config().num_blocks == 4
    deep = tmp_path / "deep.safetensors"
    save_joint_model(deepen(JointModel(embedded_config()), 5), deep)
    assert main(["train-default", "--out", str(tmp_path / "run"), "--steps", "1", "--init", str(deep),
                 "--blocks", "4"]) == 2
    error = capsys.readouterr().err
    assert "--blocks: --init" in error and "has 5 fusion blocks, more than the 4 asked for" in error, error
    assert not (tmp_path / "run").exists()
    assert main(["train-default", "--out", str(tmp_path / "run"), "--steps", "1", "--blocks", "0"]) == 2
    assert "--blocks: expected a whole number >= 1, got 0" in capsys.readouterr().err
    assert main(["train-default", "--out", str(tmp_path / "run"), "--steps", "1", "--warmup-steps", "-1"]) == 2
    assert "--warmup-steps: expected a whole number >= 0, got -1" in capsys.readouterr().err


def test_continuing_a_deeper_network_keeps_its_depth_without_blocks(tmp_path):
    """The shipped weights have more blocks than the tiny preset: --init them alone and training goes on at their
    depth (the recipe written with the weights says so), where it used to refuse them as a cut."""
    from comfyui_syncav.generation.pipeline import embedded_config
    from comfyui_syncav.train.embedded_training import EmbeddedRecipe, train_embedded_default

    deep = tmp_path / "deep.safetensors"
    save_joint_model(deepen(JointModel(embedded_config()), 5), deep)
    recipe = EmbeddedRecipe(batch_size=2).with_steps(1)
    assert recipe.keeping_depth_of(None).joint_config().num_blocks == 4
    train_embedded_default(tmp_path / "run", recipe, init_weights=deep, progress=False)
    trained = load_joint_model(tmp_path / "run" / "embedded_default.safetensors")
    assert trained.config == embedded_config().with_num_blocks(5)
