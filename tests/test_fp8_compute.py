"""fp8 compute: Linear layers with float8_e4m3fn weights multiply as scaled fp8 matmuls where the GPU has fp8 tensor
cores (runtime/fp8_matmul.py), and fall back to today's per-call upcast everywhere else.

torch 2.13 runs ``torch._scaled_mm`` on CPUs too (slower than bf16, so the library never chooses it there): the
tests of the fp8 path run it on the CPU, by calling ``scaled_fp8_linear`` or by letting ``fp8_matmul_supported``
say yes. A CPU computes it exactly (fp32 accumulation of the e4m3 products), so the errors measured here are those
of the e4m3 rounding of the activations; the CUDA tests (skipped without an sm >= 89 GPU) measure the same on
tensor cores.
"""

import dataclasses
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from comfyui_syncav.model.config import get_preset
from comfyui_syncav.model.joint import JointModel
from comfyui_syncav.runtime import fp8_matmul
from comfyui_syncav.runtime.fp8 import FP8_OPS, FP8_UPCAST_OPS, layer_weight_keys, quantize_linear_layers, \
    quantize_to_fp8
from comfyui_syncav.runtime.fp8_matmul import fp8_linear, fp8_matmul_applies, fp8_matmul_supported, \
    quantize_rows, quantize_weight_per_channel, scaled_fp8_linear, upcast_linear

# Relative error ||y - y_fp32|| / ||y_fp32|| that fp8 compute adds, measured on the CPU with the real _scaled_mm:
# one Linear (K 256, random weights and N(0, 1) inputs) 0.0264-0.0267 for bf16 / fp16 / fp32 inputs (e4m3's 3
# mantissa bits: ~2.6 % rms per activation); the tiny JointModel below 0.035 (video) and 0.038 (audio), where
# computing in bf16 from the same fp8 weights gives 0.0063 / 0.0069. Bounds: about 1.3x / 1.6x the measurements.
# On an H200 (tensor cores, fast accumulation) the same: 0.0266 for a 3072- to 14336-wide layer (bench/fp8_matmul.py).
LINEAR_TOLERANCE = 0.035
JOINT_TOLERANCE = 0.06



def _cpu_row_wise_scaled_mm() -> bool:
    """Whether this torch's CPU _scaled_mm takes row-wise scales (2.13 does; 2.11 takes per-tensor scales only)."""
    codes = torch.zeros(16, 16, dtype=torch.float8_e4m3fn)
    try:
        torch._scaled_mm(codes, codes.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16),
                         out_dtype=torch.bfloat16)
    except RuntimeError:
        return False
    return True


needs_fp8_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and fp8_matmul_supported("cuda")),
                                   reason="needs a CUDA GPU with fp8 tensor cores (compute capability >= 8.9)")
CPU_SCALED_MM = _cpu_row_wise_scaled_mm()
needs_cpu_scaled_mm = pytest.mark.skipif(not CPU_SCALED_MM, reason="this torch's CPU _scaled_mm has no row-wise "
                                                                   "scaling (torch 2.13's has)")
DEVICES = [pytest.param("cpu", marks=needs_cpu_scaled_mm), pytest.param("cuda", marks=needs_fp8_gpu)]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def relative_error(y, reference):
    return ((y.float() - reference.float()).norm() / reference.float().norm()).item()


def _layer(n=192, k=256, seed=0, device="cpu"):
    """(fp8 weight [n, k] rounded without a scale as Ovi's file stores it, bias [n] fp32)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g) * k ** -0.5
    return quantize_to_fp8(weight).to(device), (torch.randn(n, generator=g) * 0.1).to(device)


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    """Let the library take the fp8 path on the CPU (it never would: there it is slower than bf16)."""
    monkeypatch.setattr(fp8_matmul, "fp8_matmul_supported", lambda device: True)


@pytest.fixture
def scaled_mm_calls(monkeypatch):
    """The mat1 shapes of every torch._scaled_mm call."""
    calls, real = [], torch._scaled_mm

    def spy(mat1, *args, **kwargs):
        calls.append(tuple(mat1.shape))
        return real(mat1, *args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    return calls


# ------------------------------------------------------------------------------------------------ the fallback

def test_a_cpu_does_not_take_the_fp8_path():
    assert not fp8_matmul_supported("cpu") and not fp8_matmul_supported(torch.device("cpu"))
    if not torch.cuda.is_available():
        assert not fp8_matmul_supported("cuda")
    weight, _ = _layer()
    assert not fp8_matmul_applies(torch.randn(3, 256, dtype=torch.bfloat16), weight)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cpu_fallback_is_exactly_the_upcast(dtype, scaled_mm_calls):
    weight, bias = _layer()
    x = torch.randn(2, 7, 256).to(dtype)
    expected = F.linear(x, weight.to(dtype), bias.to(dtype))       # what runtime/fp8.py's Linear always did
    assert torch.equal(fp8_linear(x, weight, bias), expected)
    assert torch.equal(fp8_linear(x, weight, None), F.linear(x, weight.to(dtype)))
    layer, upcast = FP8_OPS.Linear(256, 192), FP8_UPCAST_OPS.Linear(256, 192)
    for module in (layer, upcast):
        module.weight, module.bias = torch.nn.Parameter(weight, requires_grad=False), torch.nn.Parameter(bias)
    with torch.no_grad():
        assert torch.equal(layer(x), expected) and torch.equal(upcast(x), expected)
    assert scaled_mm_calls == []
    if CPU_SCALED_MM:   # the fp8 path differs (so the equalities above say which path ran)
        assert not torch.equal(scaled_fp8_linear(x, weight, bias), expected)


# ------------------------------------------------------------------------------------------------ the fp8 path

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_fp8_linear_matches_fp32_within_the_tolerance(dtype, device):
    weight, bias = _layer(device=device)
    x = torch.randn(2, 300, 256).to(device)                        # [B, L, D]: flattened to 600 rows and back
    reference = F.linear(x, weight.float(), bias)
    y = scaled_fp8_linear(x.to(dtype), weight, bias.to(dtype))
    assert y.dtype == dtype and y.shape == (2, 300, 192)
    error = relative_error(y, reference)
    assert 0.015 < error < LINEAR_TOLERANCE                        # measured 0.0264-0.0267
    # rows stay rows: each output row's error is the same small fraction
    row_errors = (y.float() - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert row_errors.max() < 2 * LINEAR_TOLERANCE


@needs_cpu_scaled_mm
def test_per_channel_weight_scales():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(64, 128, generator=g) * torch.logspace(-3, 1, 64)[:, None]   # channels 10^4 apart
    q, scale = quantize_weight_per_channel(weight.to(torch.bfloat16))
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64,) and scale.dtype == torch.float32
    assert torch.allclose(q.float().abs().amax(dim=1), torch.full((64,), 448.0))
    dequantised = q.float() * scale[:, None]
    assert relative_error(dequantised, weight) < 0.04
    x = torch.randn(33, 128, dtype=torch.bfloat16)
    reference = F.linear(x.float(), dequantised)
    assert relative_error(scaled_fp8_linear(x, q, None, scale), reference) < LINEAR_TOLERANCE
    # the fallback applies the scales too
    assert relative_error(upcast_linear(x, q, None, scale), reference) < 0.005
    # unscaled rounding loses the smallest channel to subnormals and zeros (0.555 measured); scaled, it keeps 3 bits
    assert relative_error(quantize_to_fp8(weight)[0].float(), weight[0]) > 0.4
    assert relative_error(dequantised[0], weight[0]) < 0.04
    with pytest.raises(ValueError, match="weight"):
        quantize_weight_per_channel(torch.zeros(4, 4, 4))


def test_row_scales_are_powers_of_two_and_never_zero():
    x = torch.randn(6, 32)
    x[1] = 0.0                                                     # amax == 0
    x[2] *= 1e4
    x[3] *= 1e-6
    x[4, 5] = 448.0                                                # a row whose scale is exactly 1
    for dtype in DTYPES:
        q, scale = quantize_rows(x.to(dtype))
        assert q.dtype == torch.float8_e4m3fn and scale.shape == (6, 1) and scale.dtype == torch.float32
        assert (scale > 0).all() and torch.isfinite(scale).all()
        assert (torch.frexp(scale).mantissa == 0.5).all()          # exact powers of two
        assert torch.isfinite(q.float()).all()
        row_max = q.float().abs().amax(dim=1)
        assert ((row_max > 224) & (row_max <= 448))[[0, 2, 3, 4, 5]].all()   # the range is used, never passed
        assert (q[1].float() == 0).all()
        if dtype == torch.float32:
            assert scale[4].item() == 1.0
            within = (q.float() * scale - x).norm(dim=1) / x.norm(dim=1).clamp(min=1e-30)
            assert within[[0, 2, 3, 4, 5]].max() < 0.05            # every row to e4m3's precision, whatever its size


@pytest.mark.parametrize("device", DEVICES)
def test_a_zero_row_gives_the_bias(device):
    weight, bias = _layer(n=48, k=64, device=device)
    x = torch.randn(3, 64, dtype=torch.bfloat16, device=device)
    x[1] = 0
    y = scaled_fp8_linear(x, weight, bias.to(torch.bfloat16))
    assert torch.isfinite(y).all() and torch.equal(y[1], bias.to(torch.bfloat16))
    assert (scaled_fp8_linear(x, weight, None)[1] == 0).all()


@needs_cpu_scaled_mm
def test_what_takes_the_fp8_path(fp8_on_cpu, scaled_mm_calls):
    weight, bias = _layer(n=48, k=64)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    assert fp8_matmul_applies(x, weight)
    with fp8_matmul.upcast_only():     # training: the same (upcast) function with and without grad
        assert not fp8_matmul_applies(x, weight)
        assert torch.equal(fp8_linear(x, weight, bias), fp8_matmul.upcast_linear(x, weight, bias))
    assert scaled_mm_calls == []
    assert torch.equal(fp8_linear(x, weight, bias), scaled_fp8_linear(x, weight, bias))
    assert scaled_mm_calls == [(10, 64), (10, 64)]
    odd_n, odd_k = _layer(n=24, k=64), _layer(n=48, k=40)   # sides CUDA's _scaled_mm refuses (not multiples of 16)
    refused = [(x, *odd_n), (torch.randn(2, 5, 40, dtype=torch.bfloat16), *odd_k),
               (x, weight.to(torch.bfloat16), bias),                # not an fp8 weight
               (x, weight.to(torch.float8_e5m2), bias),             # not e4m3fn
               (x.to(torch.float64), weight, bias),
               (x.clone().requires_grad_(), weight, bias)]          # autograd: _scaled_mm has no backward
    scaled_mm_calls.clear()
    for xi, w, b in refused:
        assert not fp8_matmul_applies(xi, w)
        y = fp8_linear(xi, w, b)
        assert torch.equal(y, F.linear(xi, w.to(xi.dtype), b.to(xi.dtype)))
    assert scaled_mm_calls == []
    # and gradients flow through the fallback
    xg = x.float().requires_grad_()
    fp8_linear(xg, weight, bias).sum().backward()
    assert xg.grad is not None and torch.equal(xg.grad[0, 0], weight.float().sum(dim=0))


# ------------------------------------------------------------------------------------------------ a JointModel

def tiny_ovi_config():
    """Ovi's preset at a width of 64 (multiples of 16, so its Linear layers take the fp8 path), 2 blocks."""
    config = get_preset("ovi-720-5s")
    small = dict(dim=64, ffn_dim=128, num_heads=4, num_layers=2)
    return config.replace(video=dataclasses.replace(config.video, **small),
                          audio=dataclasses.replace(config.audio, **small))


def _fp8_state(config):
    torch.manual_seed(0)
    model = JointModel(config)
    keys = layer_weight_keys(model)
    return {k: quantize_to_fp8(v) if k in keys else v.to(torch.bfloat16) for k, v in model.state_dict().items()}


def _build(config, state, operations, device):
    with torch.device("meta"):
        model = JointModel(config, operations)
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, assign=True)
    return model.eval()


def _inputs(config, device):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, config.video.in_channels, 3, 8, 8, generator=g).to(device),
            torch.randn(1, 16, config.audio.in_channels, generator=g).to(device),
            torch.tensor([0.7], device=device), torch.tensor([0.7], device=device),
            (torch.randn(1, 8, config.video.text_dim, generator=g) * 0.1).to(device),
            (torch.randn(1, 8, config.audio.text_dim, generator=g) * 0.1).to(device))


def _run(model, inputs, dtype):
    model.compute_dtype = dtype
    video, audio, sv, sa, tv, ta = inputs
    with torch.no_grad():
        return [o.float().cpu() for o in model(video.to(dtype), audio.to(dtype), sv, sa, tv.to(dtype), ta.to(dtype))]


@pytest.mark.parametrize("device", DEVICES)
def test_a_joint_model_computing_in_fp8_matches_fp32(device, monkeypatch, scaled_mm_calls):
    config = tiny_ovi_config()
    state = _fp8_state(config)
    inputs = _inputs(config, device)
    reference = _run(_build(config, state, FP8_UPCAST_OPS, device), inputs, torch.float32)
    upcast = _run(_build(config, state, FP8_UPCAST_OPS, device), inputs, torch.bfloat16)
    if device == "cpu":
        monkeypatch.setattr(fp8_matmul, "fp8_matmul_supported", lambda d: True)
    model = _build(config, state, FP8_OPS, device)
    fp8 = _run(model, inputs, torch.bfloat16)
    fp8_layers = [m for m in model.modules() if isinstance(m, FP8_OPS.Linear)
                  and m.weight.shape[0] % 16 == 0 and m.weight.shape[1] % 16 == 0]
    assert len(scaled_mm_calls) == len(fp8_layers) == 59             # every such layer once; the audio head (20
    assert model.audio_model.head.head.weight.shape[0] == 20         # outputs) falls back
    for out, up, ref in zip(fp8, upcast, reference):
        assert relative_error(up, ref) < 0.015                       # measured 0.0063 / 0.0069 (bf16 compute)
        assert 0.02 < relative_error(out, ref) < JOINT_TOLERANCE     # measured 0.035 / 0.038 (CPU)


@needs_cpu_scaled_mm
def test_quantize_linear_layers_turns_a_bf16_model_into_an_fp8_compute_one(fp8_on_cpu, scaled_mm_calls):
    config = tiny_ovi_config()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        model = JointModel(config, FP8_OPS).eval()
    finally:
        torch.set_default_dtype(default)
    inputs = _inputs(config, "cpu")
    reference = _run(model, inputs, torch.float32)                   # bf16 weights, fp32 compute (fallback)
    keys = set(model.state_dict())
    assert scaled_mm_calls == []
    assert quantize_linear_layers(model) == 59 + 1                   # every Linear, the 20-wide audio head too
    assert set(model.state_dict()) == keys                           # the scales are not state: Ovi's keys stay
    linears = [m for m in model.modules() if isinstance(m, FP8_OPS.Linear)]
    assert all(m.weight.dtype == torch.float8_e4m3fn and m.weight_scale.shape == (m.out_features,) for m in linears)
    assert quantize_linear_layers(model) == 0
    fp8 = _run(model, inputs, torch.bfloat16)
    assert len(scaled_mm_calls) == 59
    # Weight and activation rounding together (per-channel scales): measured 0.052 (video), 0.067 (audio).
    for out, ref in zip(fp8, reference):
        assert relative_error(out, ref) < 0.1


# ------------------------------------------------------------------------------------------------ inside ComfyUI

COMFY_CHECK = textwrap.dedent("""
    import os, sys
    import torch
    import torch.nn.functional as F
    sys.path.append(os.environ["COMFYUI_DIR"])
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_patcher, comfy.ops
    from comfyui_syncav.nodes import comfy_bridge
    from comfyui_syncav.runtime import fp8_matmul
    from comfyui_syncav.runtime.fp8 import quantize_to_fp8

    manual_cast = comfy.ops.manual_cast
    assert comfy_bridge.comfy_available()
    assert comfy_bridge.operations() is manual_cast                # a CPU has no fp8 tensor cores
    fp8_matmul.fp8_matmul_supported = lambda device: True          # say it has: torch runs _scaled_mm on CPUs
    ops = comfy_bridge.operations()
    assert issubclass(ops, manual_cast) and issubclass(ops.Linear, manual_cast.Linear) and ops is not manual_cast
    assert ops.Conv3d is manual_cast.Conv3d and comfy_bridge.operations() is ops

    def layer(weight, bias):
        m = ops.Linear(weight.shape[1], weight.shape[0])
        m.weight = torch.nn.Parameter(weight, requires_grad=False)
        m.bias = torch.nn.Parameter(bias, requires_grad=False)
        return m

    torch.manual_seed(0)
    w8 = quantize_to_fp8(torch.randn(48, 64) * 0.125)
    b = torch.randn(48).to(torch.bfloat16)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        fp8 = layer(w8, b)
        assert torch.equal(fp8(x), fp8_matmul.scaled_fp8_linear(x, w8, b))
        # a LoRA patch in lowvram mode (ComfyUI's own LowVramPatch): computed in fp32, rounded back to fp8
        patch = comfy.model_patcher.LowVramPatch("w", {"w": [(1.0, (torch.randn(48, 64) * 0.05,), 1.0, None, None)]})
        patched = patch(w8.clone())
        assert patched.dtype == torch.float8_e4m3fn and not torch.equal(patched, w8)
        fp8.weight_function = [patch]
        assert torch.equal(fp8(x), fp8_matmul.scaled_fp8_linear(x, patched, b))
        # a patch that returns another dtype: the upcast, with the patched weight
        fp8.weight_function = [lambda w: w.to(torch.bfloat16) + 1]
        assert torch.equal(fp8(x), F.linear(x, w8.to(torch.bfloat16) + 1, b))
        # bf16 weights and sides _scaled_mm refuses: manual_cast's own cast
        w16 = torch.randn(48, 64, dtype=torch.bfloat16)
        assert torch.equal(layer(w16, b)(x.float()), F.linear(x.float(), w16.float(), b.float()))
        odd = quantize_to_fp8(torch.randn(24, 64) * 0.125)
        assert torch.equal(layer(odd, b[:24])(x), F.linear(x, odd.to(torch.bfloat16), b[:24]))
    print("COMFY FP8 OPS OK")
""")


@needs_cpu_scaled_mm
def test_comfyui_operations_multiply_fp8_weights_in_fp8_and_keep_patches():
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir or not os.path.isdir(comfy_dir):
        if os.environ.get("SYNCAV_REQUIRE_COMFYUI"):
            pytest.fail("SYNCAV_REQUIRE_COMFYUI is set but COMFYUI_DIR is not a ComfyUI checkout")
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout")
    # In its own process: importing ComfyUI's runtime (model management) changes global state. COMFYUI_PYTHONPATH:
    # the torchvision / torchaudio stand-ins ComfyUI's imports need where those are not installed (as for the server).
    env = {k: v for k, v in os.environ.items() if k != "SYNCAV_NO_COMFYUI"}
    extra = [p for p in (os.environ.get("COMFYUI_PYTHONPATH"), os.environ.get("PYTHONPATH")) if p]
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(extra)
    run = subprocess.run([sys.executable, "-c", COMFY_CHECK], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "COMFY FP8 OPS OK"


# ------------------------------------------------------------------------------------------------ CUDA

def _median_ms(fn, repeats=15):
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@needs_fp8_gpu
def test_the_fused_quantizer_gives_the_torch_path_bits():
    x = torch.randn(300, 3000, device="cuda") * torch.logspace(-4, 4, 300, device="cuda")[:, None]
    x[7] = 0
    for dtype in DTYPES:
        xd = x.to(dtype)
        fused, reference = quantize_rows(xd), fp8_matmul.quantize_rows_torch(xd)
        assert torch.equal(fused[1], reference[1])
        assert torch.equal(fused[0].view(torch.uint8), reference[0].view(torch.uint8))
    wide = torch.randn(3, fp8_matmul._fused_quantizer().MAX_ROW + 16, device="cuda")   # the torch path
    assert torch.equal(quantize_rows(wide)[0].view(torch.uint8),
                       fp8_matmul.quantize_rows_torch(wide)[0].view(torch.uint8))


@needs_fp8_gpu
def test_fp8_compute_on_the_gpu_is_faster_than_bf16_at_the_tolerance(scaled_mm_calls):
    """A 4096 x 4096 layer and 15,000 tokens (an Ovi clip's video tokens)."""
    weight, bias = _layer(n=4096, k=4096, device="cuda")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(15000, 4096, generator=g).to("cuda", torch.bfloat16)
    b16 = bias.to(torch.bfloat16)
    with torch.no_grad():
        reference = F.linear(x.float(), weight.float(), bias)
        y = fp8_linear(x, weight, b16)
        assert scaled_mm_calls == [(15000, 4096)]
        assert y.dtype == torch.bfloat16 and relative_error(y, reference) < LINEAR_TOLERANCE
        assert relative_error(fp8_linear(x.float(), weight, bias), reference) < LINEAR_TOLERANCE
        w16 = weight.to(torch.bfloat16)
        bf16_ms = _median_ms(lambda: F.linear(x, w16, b16))
        fp8_ms = _median_ms(lambda: fp8_linear(x, weight, b16))
    assert fp8_ms < 0.9 * bf16_ms, (fp8_ms, bf16_ms)
    odd = _layer(n=24, k=64, device="cuda")[0]                        # what the fallback is for
    with pytest.raises(RuntimeError):
        torch._scaled_mm(x[:5, :64].to(torch.float8_e4m3fn), odd.t(), scale_a=torch.ones(5, 1, device="cuda"),
                         scale_b=torch.ones(1, 24, device="cuda"), out_dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------------ the benchmark

@pytest.mark.bench_script
def test_fp8_matmul_benchmark_runs_tiny_on_the_cpu():
    script = Path(__file__).resolve().parents[1] / "bench" / "fp8_matmul.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(script), "--tiny", "--device", "cpu", "--repeats", "1", "--inner", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT ")
    values = {k: float(v) for k, v in (item.split("=") for item in lines[-1].split()[1:])}
    assert list(values) == ["bf16_ms", "fp8_ms", "fp8_speedup", "rel_err", "upcast_ms", "bf16_rel_err", "fp8_path"]
    assert values["fp8_path"] == 0                                   # the CPU takes the fallback
    assert values["rel_err"] == values["bf16_rel_err"] < 0.01        # which is the upcast: bf16's error
    assert all(0 < values[k] < 1000 for k in ("bf16_ms", "fp8_ms", "upcast_ms"))
    assert abs(values["fp8_speedup"] - values["bf16_ms"] / values["fp8_ms"]) < 0.01 * values["fp8_speedup"] + 1e-3
    assert sum("fp8 path not taken" in line for line in lines) == 3
