"""Regional compilation (runtime/compile.py): one compiled fusion step serves every block, and the compiled model
computes what the eager one does, with block swap, with gradient checkpointing, and after removal."""

import copy
import dataclasses
import logging
import shutil

import pytest
import torch

from comfyui_syncav.model.joint import fusion_step
from comfyui_syncav.runtime.block_swap import enable_block_swap
from comfyui_syncav.runtime.compile import compile_fusion_blocks, compiled_fusion_step, inductor_problems

from micro_models import micro_model

BLOCKS = 4


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them through ``inner``."""

    def __init__(self, inner: str = "eager"):
        self.inner = torch._dynamo.lookup_backend(inner)
        self.graphs = 0

    def __call__(self, graph, example_inputs):
        self.graphs += 1
        return self.inner(graph, example_inputs)


def four_block_model(prediction="velocity"):
    model = micro_model(prediction)
    config = model.config
    deeper = config.replace(video=dataclasses.replace(config.video, num_layers=BLOCKS),
                            audio=dataclasses.replace(config.audio, num_layers=BLOCKS))
    torch.manual_seed(0)
    return type(model)(deeper).eval()


def inputs(batch: int, video_rows: int | None = None, seed: int = 0):
    """Latents and texts for the micro model: video [Bv, 4, 2, 4, 4], audio [B, 6, 3], texts [rows, 4, 8]."""
    g = torch.Generator().manual_seed(seed)
    rows = batch if video_rows is None else video_rows
    return dict(video=torch.randn(rows, 4, 2, 4, 4, generator=g), audio=torch.randn(batch, 6, 3, generator=g),
                sigma_video=torch.rand(rows, generator=g), sigma_audio=torch.rand(batch, generator=g),
                text_video=torch.randn(rows, 4, 8, generator=g), text_audio=torch.randn(batch, 4, 8, generator=g))


def forward(model, x, **kwargs):
    with torch.inference_mode():
        return model(x["video"], x["audio"], x["sigma_video"], x["sigma_audio"], x["text_video"], x["text_audio"],
                     **kwargs)


def max_diff(outputs, references) -> float:
    return max((o - r).abs().max().item() for o, r in zip(outputs, references))


@pytest.fixture
def model(one_thread):
    return four_block_model()


def test_one_compiled_graph_serves_every_block_and_every_row_count(model):
    eager = copy.deepcopy(model)
    backend = CountingBackend()
    handle = compile_fusion_blocks(model, backend=backend)
    assert compiled_fusion_step(model) is handle and compiled_fusion_step(eager) is None
    assert backend.graphs == 0                     # nothing compiles before the first forward
    for batch in (2, 4, 3):                        # guidance steps with different numbers of passes
        x = inputs(batch, seed=batch)
        # The eager backend runs the traced operations themselves: measured max |diff| 0.0 (outputs up to ~2).
        assert max_diff(forward(model, x), forward(eager, x)) < 1e-6
    # One graph for the 4 blocks and the 3 row counts: the row dimension is dynamic from the first call, and the
    # first block's view inputs are copied so they need no variant of their own (without both: 3 graphs).
    assert backend.graphs == 1 and handle.compiled_variants == 1
    assert handle.compile_seconds > 0


def test_each_new_kind_of_call_compiles_once_and_matches_eager(model):
    eager = copy.deepcopy(model)
    backend = CountingBackend()
    compile_fusion_blocks(model, backend=backend)
    cut = torch.tensor([True, False, True])
    kinds = [  # (inputs, forward options, graphs compiled after this call)
        (inputs(3), {}, 1),
        (inputs(3), dict(cross_modal_rows=cut), 2),                     # gate tensor instead of None
        (inputs(5, video_rows=3), dict(audio_alone_rows=2), 3),         # audio rows past the video rows
        (inputs(3), dict(cross_modal=False), 4),                        # no cross-modal attention
        (inputs(4, seed=1), dict(cross_modal_rows=cut.repeat(2)[:4]), 4),   # seen kinds, other row counts
        (inputs(6, video_rows=4, seed=2), dict(audio_alone_rows=2), 4),
        (inputs(2, seed=3), dict(skip_blocks=(1, 2)), 4),               # fewer blocks run: same step
    ]
    for x, options, graphs in kinds:
        assert max_diff(forward(model, x, **options), forward(eager, x, **options)) < 1e-6, options   # measured 0.0
        assert backend.graphs == graphs, options


def test_batch_of_one_is_its_own_variant(model):
    """torch specialises sizes 0 and 1, so a single-row forward (no guidance) compiles once more, then holds."""
    backend = CountingBackend()
    compile_fusion_blocks(model, backend=backend)
    for batch, graphs in ((2, 1), (1, 2), (1, 2), (5, 2)):
        forward(model, inputs(batch, seed=batch))
        assert backend.graphs == graphs


def test_block_swap_runs_the_compiled_step(model):
    eager = copy.deepcopy(model)
    backend = CountingBackend()
    swap = enable_block_swap(model, blocks_on_gpu=1, device="cpu")
    handle = compile_fusion_blocks(model, backend=backend)
    for batch in (2, 3):
        x = inputs(batch, seed=batch)
        assert max_diff(forward(model, x), forward(eager, x)) < 1e-6   # measured 0.0
    assert swap.moves_in == 2 * (BLOCKS - 1)
    # One graph for the resident block and the swapped ones, or two where block swap's device copies are made under
    # inference mode: torch guards a parameter's dispatch keys, and an inference tensor's differ from a normal one's.
    assert backend.graphs <= 2
    handle.remove()
    swap.remove()
    assert model.fusion_step is fusion_step and "_fusion_block" not in vars(model)


def test_gradient_checkpointing_in_training_gives_the_eager_gradients(model):
    eager = copy.deepcopy(model)
    backend = CountingBackend("aot_eager")    # AOTAutograd: the forward/backward split inductor compiles
    compile_fusion_blocks(model, backend=backend)
    x = inputs(3)

    def gradients(m):
        m.train()
        m.set_gradient_checkpointing(True)
        m.zero_grad()
        video, audio = m(x["video"], x["audio"], x["sigma_video"], x["sigma_audio"], x["text_video"],
                         x["text_audio"])
        (video.square().mean() + audio.square().mean()).backward()
        return {name: p.grad.clone() for name, p in m.named_parameters() if p.grad is not None}

    grads, reference = gradients(model), gradients(eager)
    assert grads.keys() == reference.keys() and len(grads) > 100
    # Measured: max |diff| 1.5e-8 against gradients up to 1.4 (AOTAutograd's backward sums in another order).
    worst = max((grads[k] - reference[k]).abs().max().item() for k in grads)
    assert worst < 1e-6
    # Blocks 1-3 use block 0's graph; the recompute of checkpointing runs it again without compiling.
    assert backend.graphs == 1
    gradients(model)
    assert backend.graphs == 1


def test_remove_restores_the_eager_step_and_compiling_twice_is_refused(model):
    handle = compile_fusion_blocks(model, backend="eager")
    with pytest.raises(ValueError, match="compiled already"):
        compile_fusion_blocks(model, backend="eager")
    forward(model, inputs(2))
    assert handle.compiled_variants == 1
    assert handle.remove() is model and model.fusion_step is fusion_step and compiled_fusion_step(model) is None
    assert handle.compiled_variants == 0       # dropped
    with pytest.raises(ValueError, match="not installed"):
        handle.remove()
    with pytest.raises(RuntimeError, match="removed"):
        handle(*([None] * 14))
    again = compile_fusion_blocks(model, backend="eager")    # a fresh compilation after removal
    forward(model, inputs(2))
    assert again.compiled_variants == 1


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="model: expected a JointModel"):
        compile_fusion_blocks(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="model: expected a JointModel.*StandIn"):
        compile_fusion_blocks(type("StandIn", (), {})())
    with pytest.raises(ValueError, match="backend: expected a torch.compile backend.*'inductr'"):
        compile_fusion_blocks(model, backend="inductr")
    with pytest.raises(ValueError, match="mode / options: only the inductor backend"):
        compile_fusion_blocks(model, backend="eager", mode="max-autotune-no-cudagraphs")
    with pytest.raises(ValueError, match="mode: 'reduce-overhead' records CUDA graphs"):
        compile_fusion_blocks(model, mode="reduce-overhead")
    with pytest.raises(ValueError, match="dynamic: expected None, True or False"):
        compile_fusion_blocks(model, dynamic="batch")
    model.fusion_step = torch.compile(fusion_step, backend="eager")
    with pytest.raises(ValueError, match="must be a plain Python function"):
        compile_fusion_blocks(model, backend="eager")
    assert compiled_fusion_step(model) is None


def test_a_failing_backend_says_which_and_what_to_do(model):
    def broken(graph, example_inputs):
        raise RuntimeError("no compiler here")

    compile_fusion_blocks(model, backend=broken)
    with pytest.raises(RuntimeError, match=r"the broken backend could not compile the fusion step: "
                                           r"RuntimeError\('no compiler here'\).*run without compilation"):
        forward(model, inputs(2))


def test_missing_cpp_compiler_is_reported_when_compiling_with_inductor(model, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inductor_problems(model) == ["inductor on the CPU needs a C++ compiler and 'no-such-c++-compiler' "
                                        "($CXX) was not found"]
    with caplog.at_level(logging.WARNING, logger="comfyui_syncav.runtime.compile"):
        handle = compile_fusion_blocks(model)
    assert "needs a C++ compiler" in caplog.text and "backend='aot_eager'" in caplog.text
    handle.remove()
    monkeypatch.delenv("CXX")
    assert inductor_problems(model) == ([] if shutil.which("g++") else [
        "inductor on the CPU needs a C++ compiler and 'g++' ($CXX) was not found"])


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on the CPU needs a C++ compiler (g++)")
def test_inductor_compiles_the_step_on_the_cpu(model):
    eager = copy.deepcopy(model)
    handle = compile_fusion_blocks(model, backend="inductor")
    for batch in (2, 3):
        x = inputs(batch, seed=batch)
        # Generated kernels fuse and reorder float32 sums: measured max |diff| 5e-7 on outputs up to ~2.
        assert max_diff(forward(model, x), forward(eager, x)) < 1e-5
    assert handle.compiled_variants == 1
