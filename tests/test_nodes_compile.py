"""SyncAV Loader's compile input: "regional" hands the library's regional compilation a model the sampler then runs."""

from __future__ import annotations

import torch

from comfy_nodes import info, node, options
from comfyui_syncav.ovi.checkpoint_choice import EMBEDDED_DEFAULT
from comfyui_syncav.runtime import compile as compile_module
from comfyui_syncav.runtime.compile import compiled_fusion_step

from test_compile import CountingBackend
from test_nodes import generate


def joint(model):
    return model.model.diffusion_model


def test_compile_input_is_off_by_default_and_explains_itself():
    assert options("SyncAVLoader", "compile") == ["off", "regional"]
    # optional: API-format workflows saved before the input existed still validate
    spec = info("SyncAVLoader")["input"]["optional"]["compile"][1]
    assert spec["default"] == "off"
    assert "first sampling step is slower" in spec["tooltip"] and "TorchCompileModel" in spec["tooltip"]


def test_regional_compiles_with_inductor_and_off_leaves_the_model_eager():
    with torch.inference_mode():
        off = node("SyncAVLoader").load(EMBEDDED_DEFAULT, "auto")      # a workflow saved before the input existed
        regional = node("SyncAVLoader").load(EMBEDDED_DEFAULT, "auto", "regional")
    assert compiled_fusion_step(joint(off[0])) is None
    handle = compiled_fusion_step(joint(regional[0]))
    assert handle is not None and handle.backend == "inductor" and handle.mode is None
    assert handle.compiled_variants == 0       # compiles at the first step, not in the Loader


def test_the_sampler_runs_the_compiled_step_and_makes_the_eager_clip(monkeypatch):
    handles = []
    compile_fusion_blocks = compile_module.compile_fusion_blocks

    def with_counting_backend(model):
        # The eager backend keeps this fast (inductor's C++ build takes a minute on a small CPU).
        backend = CountingBackend()
        handles.append((compile_fusion_blocks(model, backend=backend), backend))
        return handles[-1][0]

    monkeypatch.setattr(compile_module, "compile_fusion_blocks", with_counting_backend)
    with torch.inference_mode():
        eager = node("SyncAVLoader").load(EMBEDDED_DEFAULT, "auto", "off")
        compiled = node("SyncAVLoader").load(EMBEDDED_DEFAULT, "auto", "regional")
    (handle, backend), = handles
    assert compiled_fusion_step(joint(compiled[0])) is handle
    (frames, audio, fps), _ = generate(compiled, seconds=1.0, steps=2)
    (frames_eager, audio_eager, _), _ = generate(eager, seconds=1.0, steps=2)
    assert backend.graphs == 1 and handle.compiled_variants == 1   # every step and block: one compiled graph
    # The eager backend runs the traced operations themselves: measured max |diff| 0.0.
    assert (frames - frames_eager).abs().max() < 1e-5
    assert (audio["waveform"] - audio_eager["waveform"]).abs().max() < 1e-5
