"""Cheaper sync anchors: the joint model's per-row cross-modal cut and audio-alone rows, and the guidance passes
built on them, on a real (micro) joint model: batched rows equal separate forwards, one model call per step."""

from __future__ import annotations

import pytest
import torch

from comfyui_syncav.guidance.passes import Pass, SyncCFGConditioning, evaluate_passes
from comfyui_syncav.guidance.sync_cfg import (ANCHOR_PASSES, StepScales, SyncAnchors, SyncCFGGuidance,
                                              guided_velocity, plan_passes)
from comfyui_syncav.text.interface import EncodedText

from micro_models import micro_model

ATOL = 1e-5     # float32 batched-vs-separate differences measured at ~2e-7 on this model


def latents(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 2, 4, 4, generator=g), torch.randn(batch, 5, 3, generator=g)


def texts(batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, generator=g), torch.randn(batch, 3, 8, generator=g)


@pytest.fixture(scope="module")
def model():
    return micro_model(prediction="velocity").eval()


def test_cross_modal_rows_equal_separate_forwards_with_and_without_the_cut(model):
    video, audio = latents(3)
    text_v, text_a = texts(3)
    sigma = torch.tensor([0.9, 0.5, 0.2])
    with torch.no_grad():
        mixed_v, mixed_a = model(video, audio, sigma, sigma, text_v, text_a,
                                 cross_modal_rows=torch.tensor([True, False, True]))
        joint_v, joint_a = model(video, audio, sigma, sigma, text_v, text_a)
        cut_v, cut_a = model(video, audio, sigma, sigma, text_v, text_a, cross_modal=False)
    for row, source_v, source_a in ((0, joint_v, joint_a), (1, cut_v, cut_a), (2, joint_v, joint_a)):
        assert torch.allclose(mixed_v[row], source_v[row], atol=ATOL)
        assert torch.allclose(mixed_a[row], source_a[row], atol=ATOL)
    # The cut changes the row: the towers really do see each other otherwise.
    assert (joint_a[1] - cut_a[1]).abs().max() > 1e-3 and (joint_v[1] - cut_v[1]).abs().max() > 1e-3


def test_audio_alone_rows_run_the_audio_tower_without_video(model):
    video, audio = latents(2)
    text_v, text_a = texts(2)
    sigma = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        # Row 0 is joint, row 1 is the audio tower alone: the video input has one row only.
        out_v, out_a = model(video[:1], audio, sigma[:1], sigma, text_v[:1], text_a, audio_alone_rows=1)
        joint_v, joint_a = model(video, audio, sigma, sigma, text_v, text_a)
        cut_v, cut_a = model(video, audio, sigma, sigma, text_v, text_a, cross_modal=False)
        other_v, _ = latents(2, seed=5)
        cut_other_v, cut_other_a = model(other_v, audio, sigma, sigma, text_v, text_a, cross_modal=False)
    assert out_v.shape == (1, 4, 2, 4, 4) and out_a.shape == (2, 5, 3)
    assert torch.allclose(out_v[0], joint_v[0], atol=ATOL) and torch.allclose(out_a[0], joint_a[0], atol=ATOL)
    # Alone, the audio does not depend on any video: it equals the cut pass's audio whatever the video was.
    assert torch.allclose(out_a[1], cut_a[1], atol=ATOL) and torch.allclose(cut_other_a[1], cut_a[1], atol=ATOL)


@pytest.mark.parametrize("change, message", [
    (dict(audio_alone_rows=2), "audio_alone_rows must be an integer in 0..1"),
    (dict(audio_alone_rows=1), "different batch sizes: 2 vs 2 less 1 audio-alone rows"),
    (dict(cross_modal_rows=torch.tensor([True])), r"cross_modal_rows must be \[2\]"),
])
def test_bad_row_arguments_name_what_was_expected(model, change, message):
    video, audio = latents(2)
    text_v, text_a = texts(2)
    with pytest.raises(ValueError, match=message):
        model(video, audio, torch.ones(2), torch.ones(2), text_v, text_a, **change)


@pytest.mark.parametrize("anchors, expected", [
    (SyncAnchors.HARMONY, (Pass.JOINT, Pass.NEGATIVE, Pass.MUTED_AUDIO, Pass.STATIC_VIDEO)),
    (SyncAnchors.AUDIO_ALONE, (Pass.JOINT, Pass.NEGATIVE, Pass.MUTED_AUDIO, Pass.AUDIO_ALONE)),
    (SyncAnchors.CROSS_MODAL_CUT, (Pass.JOINT, Pass.NEGATIVE, Pass.CROSS_MODAL_CUT)),
])
def test_each_anchor_choice_plans_its_passes(anchors, expected):
    assert plan_passes(StepScales(4.0, 4.0, 2.0, 2.0, anchors)) == expected
    video_only = plan_passes(StepScales(1.0, 1.0, 2.0, 1.0, anchors))
    assert video_only == (Pass.JOINT, ANCHOR_PASSES[anchors][0])
    assert SyncCFGGuidance(sync_scale_video=2, anchors=anchors).needs_anchors == (anchors is not
                                                                                  SyncAnchors.CROSS_MODAL_CUT)
    assert SyncCFGGuidance(sync_scale_audio=2, anchors=anchors).needs_anchors == (anchors is SyncAnchors.HARMONY)


def test_unknown_anchors_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="anchors: expected one of .*'harmony'.*got 'loud'"):
        SyncCFGGuidance(anchors="loud")
    assert SyncCFGGuidance(anchors="cross_modal_cut").anchors is SyncAnchors.CROSS_MODAL_CUT


class Counting:
    def __init__(self, model):
        self.model, self.calls, self.config = model, [], model.config

    def __call__(self, *args, **kwargs):
        self.calls.append((args[0].shape[0], args[1].shape[0], kwargs.get("audio_alone_rows", 0)))
        return self.model(*args, **kwargs)


@pytest.mark.parametrize("anchors", list(SyncAnchors))
def test_batched_equals_pass_by_pass_in_one_model_call(model, anchors):
    batch = 2
    video, audio = latents(batch)
    g = torch.Generator().manual_seed(3)
    positive = (EncodedText(torch.randn(1, 4, 8, generator=g), torch.tensor([4])),
                EncodedText(torch.randn(1, 3, 8, generator=g), torch.tensor([3])))
    negative = (EncodedText(torch.zeros(1, 2, 8), torch.tensor([2])), EncodedText(torch.zeros(1, 2, 8),
                                                                                 torch.tensor([2])))
    static, silence = torch.full((1, 4, 2, 4, 4), 0.3), torch.full((1, 5, 3), -0.2)
    cond = SyncCFGConditioning.prepare(batch, positive, negative, static, silence, slg_blocks=(1,))
    sigma = torch.tensor([0.8, 0.4])
    scales = SyncCFGGuidance(text_scale_video=3, text_scale_audio=2, sync_scale_video=2, sync_scale_audio=1.5,
                             anchors=anchors).scales(True)
    counting = Counting(model)
    with torch.no_grad():
        batched = guided_velocity(counting, video, audio, sigma, sigma, cond, scales, batched=True)
        assert len(counting.calls) == 1
        passes = plan_passes(scales)
        alone = Pass.AUDIO_ALONE in passes
        assert counting.calls[0] == ((len(passes) - alone) * batch, len(passes) * batch, alone * batch)
        separate = guided_velocity(model, video, audio, sigma, sigma, cond, scales, batched=False)
        outputs = evaluate_passes(model, passes, video, audio, sigma, sigma, cond, batched=False)
    for b, s in zip(batched, separate):
        assert torch.allclose(b, s, atol=ATOL)
    # The anchor outputs are what the anchors say: the audio-alone pass has no video output.
    assert all((outputs[p][0] is None) == (p is Pass.AUDIO_ALONE) for p in passes)
    # Different anchors give different guidance (they are not aliases of each other).
    harmony = guided_velocity(model, video, audio, sigma, sigma, cond, scales._replace(anchors=SyncAnchors.HARMONY))
    if anchors is not SyncAnchors.HARMONY:
        assert (harmony[1] - batched[1]).abs().max() > 1e-4
