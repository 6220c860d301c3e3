"""The reproducibility contract (README "Reproducibility"): MKL's strict mode is on once the package is imported, and
what a training batch holds does not depend on the batches that came before it in the process."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from comfyui_syncav.runtime.reproducible_blas import reproducible_blas_status, resume_is_bit_identical
from comfyui_syncav.text.interface import EncodedText
from comfyui_syncav.train.embedded_training import BounceBatches
from micro_models import micro_pipeline


def test_the_package_switches_mkl_to_its_strict_mode_when_imported():
    if torch.backends.mkl.is_available() and not os.environ.get("MKL_CBWR"):
        assert reproducible_blas_status() == "on"
    assert resume_is_bit_identical()


def _status_in_a_fresh_process(code_before_import: str, env_changes: dict) -> str:
    script = textwrap.dedent(f"""
        import torch
        {code_before_import}
        from comfyui_syncav.runtime.reproducible_blas import reproducible_blas_status
        print(reproducible_blas_status())
    """)
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | env_changes
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_too_late_and_opt_out_are_reported_not_hidden():
    if not torch.backends.mkl.is_available():
        pytest.skip("this torch has no MKL: nothing to switch")
    late = _status_in_a_fresh_process("torch.ones(8, 8) @ torch.ones(8, 8)", {})
    assert late.startswith("unavailable: MKL computed before"), late
    assert _status_in_a_fresh_process("", {"SYNCAV_REPRODUCIBLE_BLAS": "0"}) == "off (SYNCAV_REPRODUCIBLE_BLAS=0)"
    assert _status_in_a_fresh_process("", {"MKL_CBWR": "COMPATIBLE"}) == "as set by MKL_CBWR=COMPATIBLE"


class BatchSensitiveEncoder:
    """A text encoder whose output depends on the batch it is given (as real ones do in their last bits, through
    padding and matrix shapes): every embedding is offset by the batch size."""

    def __init__(self, inner):
        self.inner = inner
        self.batch_sizes = []

    def encode(self, prompts):
        self.batch_sizes.append(len(prompts))
        encoded = self.inner.encode(prompts)
        return EncodedText(encoded.embeddings + 1e-3 * len(prompts), encoded.lengths)


def test_a_caption_gets_the_same_embedding_whatever_batch_it_first_came_in(text_encoder):
    pipeline = micro_pipeline(text_encoder)

    def batches(steps):
        encoder = BatchSensitiveEncoder(text_encoder)
        source = BounceBatches(4, 0.0, encoder, pipeline.video_codec, pipeline.audio_codec)
        return {step: source(step, torch.Generator().manual_seed(step)).text_video for step in steps}

    straight = batches([0, 1, 2])
    resumed = batches([2])              # a resumed process meets step 2's captions first, in another company
    assert torch.equal(straight[2], resumed[2])


def test_with_mkls_strict_mode_a_row_does_not_depend_on_the_batch_it_is_computed_in():
    """Without the mode, MKL's products depend on their shape: one row alone and the same row in a batch of 64 were
    measured 3.4e-5 apart (AVX-512). With it, equal bit for bit."""
    if not torch.backends.mkl.is_available() or reproducible_blas_status() != "on":
        pytest.skip("only MKL builds where the package could switch the mode on make this promise")
    generator = torch.Generator().manual_seed(0)
    for k, n in ((64, 192), (128, 384), (96, 96), (384, 128)):
        weight, rows = torch.randn(n, k, generator=generator), torch.randn(64, k, generator=generator)
        batch = torch.nn.functional.linear(rows, weight)
        for m in (1, 3, 13):
            assert torch.equal(torch.nn.functional.linear(rows[:m], weight), batch[:m]), (k, n, m)
