"""fp8 checkpoints (weights kept in fp8, computed per layer in a wider dtype) and block swap."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_syncav.model import load_joint_model
from comfyui_syncav.runtime.block_swap import enable_block_swap
from comfyui_syncav.runtime.fp8 import FP8_OPS, layer_weight_keys, quantize_to_fp8

from ovi_stand_ins import ovi_like_model

SIGMA = torch.tensor([0.7], dtype=torch.float64)   # the reference case's t = 700


@pytest.fixture(scope="module")
def case(reference_dir):
    return load_file(str(reference_dir / "ovi_tiny_case.safetensors"))


@pytest.fixture(scope="module")
def fp8_files(reference_dir, tmp_path_factory):
    """The reference weights with every Linear / Conv weight (the matrices) rounded to float8_e4m3fn, biases,
    norms and modulation tables untouched (as the public Ovi fp8 conversion stores them); and the same rounded
    values stored back in fp32."""
    weights = load_file(str(reference_dir / "ovi_tiny_weights.safetensors"))
    quantised = {k: quantize_to_fp8(v) if k.endswith(".weight") and v.dim() >= 2 else v for k, v in weights.items()}
    folder = tmp_path_factory.mktemp("fp8")
    save_file(quantised, str(folder / "ovi_tiny_fp8.safetensors"))
    save_file({k: v.float() for k, v in quantised.items()}, str(folder / "ovi_tiny_dequantised.safetensors"))
    return folder / "ovi_tiny_fp8.safetensors", folder / "ovi_tiny_dequantised.safetensors", quantised


def _run(model, case, dtype):
    with torch.no_grad():
        v, a = model(case["input.video"][None].to(dtype), case["input.audio"][None].to(dtype), SIGMA, SIGMA,
                     case["input.context_video"][None].to(dtype), case["input.context_audio"][None].to(dtype))
    return v[0].float(), a[0].float()


def test_fp8_file_keeps_its_matrices_in_fp8(fp8_files):
    path, _, quantised = fp8_files
    model = load_joint_model(path, num_heads=4)
    fp8_keys = {k for k, v in quantised.items() if v.dtype == torch.float8_e4m3fn}
    assert len(fp8_keys) == 65 and fp8_keys == layer_weight_keys(model)
    state = model.state_dict()
    assert {k for k, v in state.items() if v.dtype == torch.float8_e4m3fn} == fp8_keys
    assert {v.dtype for k, v in state.items() if k not in fp8_keys} == {torch.bfloat16}   # norms, biases, tables
    assert isinstance(model.video_model.blocks[0].self_attn.q, FP8_OPS.Linear)
    assert isinstance(model.audio_model.patch_embedding[0], FP8_OPS.Conv1d)
    assert model.compute_dtype == torch.bfloat16 and model.working_dtype() == torch.bfloat16
    # an explicit dtype upcasts everything (the old behaviour)
    upcast = load_joint_model(path, num_heads=4, dtype=torch.float32)
    assert {v.dtype for v in upcast.state_dict().values()} == {torch.float32}


def test_fp8_model_computes_exactly_the_dequantised_function(fp8_files, case):
    """The fp8 path adds no error of its own: computing in fp32, it equals an fp32 model holding the rounded values."""
    path, dequantised_path, _ = fp8_files
    model = load_joint_model(path, num_heads=4)
    model.compute_dtype = torch.float32
    reference = load_joint_model(dequantised_path, num_heads=4)
    for out, ref in zip(_run(model, case, torch.float32), _run(reference, case, torch.float32)):
        assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_fp8_model_matches_the_fp32_reference_within_fp8_error(fp8_files, case, compute):
    model = load_joint_model(fp8_files[0], num_heads=4)
    model.compute_dtype = compute
    video, audio = _run(model, case, compute)
    # Measured (e4m3 keeps 3 mantissa bits, ~3 % rms per weight): video max |diff| 0.30, relative L2 0.067;
    # audio 0.27 / 0.099, in fp32 and bf16 compute alike. Bounds are about twice that. Output std is ~1; the
    # exact-function test above catches structural mistakes (they move outputs by 0.1 to 4).
    for out, ref, rel_bound in ((video, case["output_fp32.video"], 0.13), (audio, case["output_fp32.audio"], 0.2)):
        assert (out - ref).abs().max() < 0.6
        assert (out - ref).norm() / ref.norm() < rel_bound


def test_bf16_file_still_loads_as_bf16(reference_dir):
    model = load_joint_model(reference_dir / "ovi_tiny_weights_bf16.safetensors", num_heads=4)
    assert {v.dtype for v in model.state_dict().values()} == {torch.bfloat16}
    assert model.compute_dtype is None and not isinstance(model.video_model.blocks[0].self_attn.q, FP8_OPS.Linear)


# ------------------------------------------------------------------------------------------------ block swap

def _inputs(model):
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    return (torch.randn(1, cfg.video.in_channels, 2, 4, 4, generator=g), torch.randn(1, 6, cfg.audio.in_channels,
                                                                                      generator=g),
            torch.tensor([0.6]), torch.tensor([0.4]), torch.randn(1, 5, cfg.video.text_dim, generator=g) * 0.1,
            torch.randn(1, 3, cfg.audio.text_dim, generator=g) * 0.1)


def _watch_blocks(model, swap, device):
    """At the start of every fusion block: (block index, blocks whose weights are on the compute device, swapped
    blocks whose video-tower parameters hold a copy rather than their offloaded master, the same for the audio
    tower). Read through a forward pre-hook on each block's self-attention."""
    n = model.config.num_blocks

    def pointers(tower, j):
        return [p.data_ptr() for p in tower.blocks[j].parameters()]

    masters = {(tower, j): pointers(tower, j) for tower in (model.video_model, model.audio_model)
               for j in swap.swapped}
    seen = []

    def hook(i):
        def record(module, args):
            placed = {j for j in range(n) if swap.on_device(j)
                      and next(model.video_model.blocks[j].parameters()).device.type == torch.device(device).type}
            copies = [{j for j in swap.swapped if pointers(tower, j) != masters[tower, j]}
                      for tower in (model.video_model, model.audio_model)]
            seen.append((i, placed, *copies))
        return record

    handles = [model.video_model.blocks[i].self_attn.register_forward_pre_hook(hook(i)) for i in range(n)]
    return seen, handles


@pytest.mark.parametrize("prefetch", [False, True])
def test_block_swap_moves_blocks_in_and_out_and_keeps_the_output(prefetch):
    model = ovi_like_model(layers=4)
    inputs = _inputs(model)
    with torch.no_grad():
        expected = model(*inputs)
    swap = enable_block_swap(model, blocks_on_gpu=1, device="cpu", offload_device="cpu", prefetch=prefetch)
    assert swap.swapped == (1, 2, 3)
    seen, handles = _watch_blocks(model, swap, "cpu")
    with torch.no_grad():
        out = model(*inputs)
    assert all(torch.equal(o, e) for o, e in zip(out, expected))
    # Block 0 stays resident; each swapped block is in (as a copy, in both towers) only while it runs.
    assert seen == [(0, {0}, set(), set()), (1, {0, 1}, {1}, {1}), (2, {0, 2}, {2}, {2}), (3, {0, 3}, {3}, {3})]
    assert swap.moves_in == 3 and not any(swap.on_device(j) for j in swap.swapped)
    # skip-layer guidance on a swapped block: the others still swap, the output is the plain model's
    with torch.no_grad():
        skipped = model(*inputs, skip_blocks=(2,))
    swap.remove()
    for h in handles:
        h.remove()
    assert "_fusion_block" not in vars(model)
    with torch.no_grad():
        again = model(*inputs, skip_blocks=(2,))
    assert all(torch.equal(s, a) for s, a in zip(skipped, again))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_block_swap_on_cuda_keeps_only_the_resident_blocks_on_the_gpu():
    model = ovi_like_model(layers=4)
    inputs = _inputs(model)
    with torch.no_grad():
        expected = model(*inputs)
    swap = enable_block_swap(model, blocks_on_gpu=2, device="cuda")
    assert next(model.video_model.blocks[3].parameters()).device.type == "cpu"
    assert next(model.video_model.patch_embedding.parameters()).device.type == "cuda"
    seen, _ = _watch_blocks(model, swap, "cuda")
    with torch.no_grad():
        out = model(*(x.cuda() for x in inputs))
    assert [placed for _, placed, _, _ in seen] == [{0, 1}, {0, 1}, {0, 1, 2}, {0, 1, 3}]
    for o, e in zip(out, expected):
        assert torch.allclose(o.cpu(), e, atol=1e-4)


def test_block_swap_refuses_bad_settings():
    model = ovi_like_model()
    with pytest.raises(ValueError, match="blocks_on_gpu"):
        enable_block_swap(model, -1, "cpu")
    enable_block_swap(model, 1, "cpu")
    with pytest.raises(ValueError, match="already"):
        enable_block_swap(model, 1, "cpu")


def test_generate_with_block_swap_gives_the_same_clip(text_encoder):
    from comfyui_syncav.generation.generate import generate_clip
    from comfyui_syncav.generation.pipeline import build_embedded_default

    pipeline = build_embedded_default()
    with torch.inference_mode():
        plain = generate_clip(pipeline, "a red ball bounces", seconds=0.5, steps=2)
        swap = enable_block_swap(pipeline.model, 1, "cpu")
        swapped = generate_clip(pipeline, "a red ball bounces", seconds=0.5, steps=2)
    assert swap.moves_in > 0
    assert torch.equal(plain.frames, swapped.frames) and torch.equal(plain.waveform, swapped.waveform)


def test_cli_generate_takes_blocks_on_gpu(tmp_path, monkeypatch):
    from comfyui_syncav.cli import main
    from comfyui_syncav.runtime import block_swap
    from comfyui_syncav.files.media_io import probe_mp4

    swaps, enable = [], block_swap.enable_block_swap

    def spy(*args, **kwargs):
        swaps.append(enable(*args, **kwargs))
        return swaps[-1]

    monkeypatch.setattr(block_swap, "enable_block_swap", spy)
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", "a red ball bouncing", "--seconds", "0.5", "--steps", "2",
                 "--blocks-on-gpu", "1", "--out", str(out)]) == 0
    (swap,) = swaps
    assert swap.swapped == (1, 2, 3, 4, 5) and swap.moves_in > 0  # the embedded model's 6 blocks, one resident
    video = probe_mp4(out)["video"]
    assert (video["frames"], video["width"], video["height"], video["fps"]) == (8, 32, 32, 16.0)   # 0.5 s
