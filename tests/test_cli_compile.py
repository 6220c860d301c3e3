"""``generate --compile regional``: the clip is made through the compiled fusion step and is the eager clip."""

import numpy as np
import pytest

from comfyui_syncav.cli import main
from comfyui_syncav.cli.common import COMPILE_CHOICES
from comfyui_syncav.files.media_io import decode_clip
from comfyui_syncav.runtime import compile as compile_module

from test_compile import CountingBackend


def test_cli_choices_are_the_librarys():
    assert COMPILE_CHOICES == compile_module.COMPILE_CHOICES


def test_generate_compile_regional_makes_the_eager_clip_through_the_compiled_step(tmp_path, monkeypatch):
    handles = []
    compile_fusion_blocks = compile_module.compile_fusion_blocks

    def with_counting_backend(model):
        # The option's wiring with the eager backend: inductor's C++ build of the step takes a minute on a small CPU
        # (tests/test_compile.py runs it once).
        backend = CountingBackend()
        handles.append((compile_fusion_blocks(model, backend=backend), backend))
        return handles[-1][0]

    monkeypatch.setattr(compile_module, "compile_fusion_blocks", with_counting_backend)

    def clip(*extra):
        out = tmp_path / f"clip{len(extra)}.mp4"
        assert main(["generate", "--prompt", "a red ball bouncing", "--steps", "2", "--seconds", "0.5",
                     "--out", str(out), *extra]) == 0
        frames, waveform = decode_clip(out, 8, 16.0, 4000, 8000)
        return frames.astype(np.float32) / 255, waveform

    eager = clip()
    assert handles == []                       # off by default
    compiled = clip("--compile", "regional")
    (handle, backend), = handles
    # Every block of every step ran one compiled variant: each step's batched forward is of the same kind.
    assert handle.compiled_variants == 1 and backend.graphs == 1
    for a, b in zip(compiled, eager):
        # The eager backend computes exactly the eager step (test_compile.py); what differs is the codecs' rounding.
        assert np.abs(a - b).max() < 0.01


def test_generate_refuses_an_unknown_compile_choice(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--prompt", "ball", "--compile", "whole", "--out", str(tmp_path / "x.mp4")])
    assert stop.value.code == 2
    assert "--compile: invalid choice: 'whole'" in capsys.readouterr().err
