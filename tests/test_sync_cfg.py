"""SyncCFG sampler: pass planning, guidance arithmetic, batched vs pass-by-pass, schedules, errors.

The stand-in models' outputs are known functions of what they receive, and they record every call, so the tests
can check both the numbers and which rows (texts, latents, noise levels, skipped blocks) the sampler ran.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from comfyui_syncav.guidance.sampling import sample_av
from comfyui_syncav.guidance.schedules import FlowSolver, make_scheduler
from comfyui_syncav.guidance.sync_cfg import Pass, SyncAnchors, SyncCFGConditioning, combine_velocities, \
    guided_velocity, plan_passes
from comfyui_syncav.guidance.sync_cfg import StepScales as _StepScales
from comfyui_syncav.guidance.sync_cfg import SyncCFGGuidance as _SyncCFGGuidance
from comfyui_syncav.text.interface import EncodedText

# This file checks Harmony's formula (muted-audio and static-video passes, module docstring of sync_cfg.py), so its
# guidance names Harmony's anchors whatever the package's default is; tests/test_sync_anchors.py covers the others.
def SyncCFGGuidance(*args, **kwargs):   # noqa: N802 - stands for the class
    return _SyncCFGGuidance(*args, **{"anchors": SyncAnchors.HARMONY, **kwargs})


def StepScales(*args):   # noqa: N802 - stands for the class
    return _StepScales(*args, SyncAnchors.HARMONY) if len(args) == 4 else _StepScales(*args)


CV, F, H, W = 2, 3, 4, 4       # video latent [B, CV, F, H, W]
LA, CA = 6, 3                  # audio latent [B, LA, CA]
NUM_BLOCKS = 4
SKIP_EFFECT = -0.5             # what each skipped block adds to a row's outputs in the stand-ins


def text(value: float, rows: int, batch: int = 1, dim: int = 5) -> EncodedText:
    """A prompt whose every embedding entry is ``value`` (the stand-ins read it back from row 0)."""
    return EncodedText(torch.full((batch, rows, dim), float(value)), torch.full((batch,), rows, dtype=torch.long))


# Positive and negative prompts of different lengths, so the sampler has to pad them to stack.
POSITIVE = (text(1.0, rows=3), text(2.0, rows=4))
NEGATIVE = (text(0.0, rows=5), text(-1.0, rows=2))
STATIC_VALUE, SILENCE_VALUE = 0.25, -0.5


def anchors(batch: int = 1):
    return torch.full((batch, CV, F, H, W), STATIC_VALUE), torch.full((batch, LA, CA), SILENCE_VALUE)


def noise(batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CV, F, H, W, generator=g), torch.randn(batch, LA, CA, generator=g)


class StandIn:
    """A joint model whose velocities are simple known functions of its inputs; it records every call.

    Per row b (T = the text's row-0 mean, m(x) = mean of a latent over all but the batch axis, k = skipped
    blocks applied to this row)::

        v_video = video + T_video + 0.5 m(audio) + sigma_video + 2 sigma_audio + SKIP_EFFECT k
        v_audio = audio + T_audio + 0.25 m(video) + sigma_audio + 4 sigma_video + SKIP_EFFECT k

    ``nonlinear=True`` passes each row through tanh/sin instead (still row-independent), so batched and
    pass-by-pass agreement is not an accident of linearity.
    """

    def __init__(self, nonlinear: bool = False):
        self.nonlinear = nonlinear
        self.calls: list[dict] = []
        self.config = SimpleNamespace(num_blocks=NUM_BLOCKS, video=SimpleNamespace(in_channels=CV),
                                      audio=SimpleNamespace(in_channels=CA))

    def __call__(self, video, audio, sigma_video, sigma_audio, text_video, text_audio, *, text_video_lengths=None,
                 text_audio_lengths=None, skip_blocks=(), skip_rows=None, cross_modal=True):
        batch = video.shape[0]
        assert audio.shape[0] == batch and sigma_video.shape == (batch,) and sigma_audio.shape == (batch,)
        assert text_video.shape[0] == batch and text_audio.shape[0] == batch
        self.calls.append(dict(batch=batch, video=video.clone(), audio=audio.clone(), sigma_video=sigma_video.clone(),
                               sigma_audio=sigma_audio.clone(), text_video=text_video[:, 0].mean(-1).clone(),
                               text_audio=text_audio[:, 0].mean(-1).clone(), skip_blocks=tuple(skip_blocks),
                               skip_rows=None if skip_rows is None else skip_rows.clone()))
        skipped = torch.zeros(batch)
        if skip_blocks:
            rows = torch.ones(batch, dtype=torch.bool) if skip_rows is None else skip_rows
            skipped = rows.float() * len(tuple(skip_blocks))
        t_v, t_a = text_video[:, 0].mean(-1), text_audio[:, 0].mean(-1)
        m_v, m_a = video.mean(dim=(1, 2, 3, 4)), audio.mean(dim=(1, 2))
        s_v, s_a = sigma_video, sigma_audio
        per_row_v = t_v + 0.5 * m_a + s_v + 2 * s_a + SKIP_EFFECT * skipped
        per_row_a = t_a + 0.25 * m_v + s_a + 4 * s_v + SKIP_EFFECT * skipped
        row_v, row_a = per_row_v[:, None, None, None, None], per_row_a[:, None, None]
        if self.nonlinear:
            return (torch.tanh(video * (1 + row_v)) + torch.sin(row_v),
                    torch.tanh(audio * (1 + row_a)) + torch.cos(row_a))
        return video + row_v, audio + row_a


class ExactVelocity:
    """Predicts the exact flow-matching velocity of known clean latents: (x_sigma - x0) / sigma, per stream."""

    def __init__(self, x0_video, x0_audio):
        self.x0_video, self.x0_audio = x0_video, x0_audio
        self.config = SimpleNamespace(num_blocks=NUM_BLOCKS)

    def __call__(self, video, audio, sigma_video, sigma_audio, text_video, text_audio, **kwargs):
        # The floor only matters for anchor streams given at sigma 0, whose outputs SyncCFG discards.
        sv = sigma_video.clamp(min=1e-4)[:, None, None, None, None]
        sa = sigma_audio.clamp(min=1e-4)[:, None, None]
        passes = video.shape[0] // self.x0_video.shape[0]     # batched: the rows of every pass, pass-major
        x0_video, x0_audio = self.x0_video.repeat(passes, 1, 1, 1, 1), self.x0_audio.repeat(passes, 1, 1)
        return (video - x0_video) / sv, (audio - x0_audio) / sa


def constant_step(guidance: SyncCFGGuidance, batched: bool, batch: int = 1):
    """One guided evaluation at video = 1, audio = 2, sigma_video = sigma_audio = 0.5 with the linear stand-in."""
    model = StandIn()
    cond = SyncCFGConditioning.prepare(batch, POSITIVE, NEGATIVE, *anchors(), slg_blocks=guidance.slg_blocks)
    video, audio = torch.ones(batch, CV, F, H, W), torch.full((batch, LA, CA), 2.0)
    sigma = torch.full((batch,), 0.5)
    out = guided_velocity(model, video, audio, sigma, sigma, cond, guidance.scales_at(0, 1), batched=batched)
    return out, model


# ---- every scale 1 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_all_scales_one_is_a_plain_joint_pass(solver):
    nv, na = noise(batch=1)
    model = StandIn(nonlinear=True)
    video, audio = sample_av(model, nv, na, POSITIVE, negative=NEGATIVE, anchors=anchors(),
                             guidance=SyncCFGGuidance(sync_interval=(0.0, 1.0), slg_blocks=(1,)),
                             steps=6, solver=solver, shift=3.0)
    # Only the joint row ran, with the positive texts, no skipped blocks.
    assert len(model.calls) == 6 and all(c["batch"] == 1 for c in model.calls)
    assert all(c["skip_blocks"] == () for c in model.calls)
    assert all(c["text_video"].item() == 1.0 and c["text_audio"].item() == 2.0 for c in model.calls)

    # And the result is bit-identical to a hand-written plain flow-matching loop.
    plain = StandIn(nonlinear=True)
    vs, as_ = FlowSolver(solver, 6, 3.0), FlowSolver(solver, 6, 3.0)
    x_v, x_a = nv, na
    for i in range(6):
        s_v, s_a = torch.full((1,), vs.sigma(i)), torch.full((1,), as_.sigma(i))
        v_v, v_a = plain(x_v, x_a, s_v, s_a, POSITIVE[0].embeddings, POSITIVE[1].embeddings)
        x_v, x_a = vs.step(v_v, x_v, i), as_.step(v_a, x_a, i)
    assert torch.equal(video, x_v) and torch.equal(audio, x_a)


# ---- the guidance arithmetic -----------------------------------------------------------------------------------

GUIDED = SyncCFGGuidance(text_scale_video=5.0, text_scale_audio=3.0, sync_scale_video=2.0, sync_scale_audio=4.0)


@pytest.mark.parametrize("batched", [True, False])
def test_hand_computed_guided_velocities(batched):
    # Inputs: video = 1, audio = 2, sigmas 0.5; texts: positive (1, 2), negative (0, -1); anchors 0.25 / -0.5.
    #   J:   v_v = 1 + 1 + 0.5*2    + 0.5 + 2*0.5 = 4.5      v_a = 2 + 2 + 0.25*1    + 0.5 + 4*0.5 = 6.75
    #   U:   v_v = 1 + 0 + 1        + 0.5 + 1     = 3.5      v_a = 2 - 1 + 0.25      + 0.5 + 2     = 3.75
    #   D_v: v_v = 1 + 1 + 0.5*-0.5 + 0.5 + 0     = 2.25     (audio = silence at sigma 0)
    #   D_a:                                                 v_a = 2 + 2 + 0.25*0.25 + 0.5 + 0     = 4.5625
    # v_video = 4.5  + (5-1)(4.5 - 3.5)   + (2-1)(4.5 - 2.25)    = 4.5 + 4 + 2.25      = 10.75
    # v_audio = 6.75 + (3-1)(6.75 - 3.75) + (4-1)(6.75 - 4.5625) = 6.75 + 6 + 6.5625  = 19.3125
    (v_video, v_audio), _ = constant_step(GUIDED, batched)
    torch.testing.assert_close(v_video, torch.full_like(v_video, 10.75), rtol=0, atol=1e-6)
    torch.testing.assert_close(v_audio, torch.full_like(v_audio, 19.3125), rtol=0, atol=1e-6)

    # Skip-layer guidance on block 1: U loses 0.5 in both streams (U_v = 3.0, U_a = 3.25), nothing else changes.
    # v_video = 4.5 + 4*1.5 + 2.25 = 12.75;  v_audio = 6.75 + 2*3.5 + 6.5625 = 20.3125
    slg = SyncCFGGuidance(5.0, 3.0, 2.0, 4.0, slg_blocks=(1,))
    (v_video, v_audio), _ = constant_step(slg, batched)
    torch.testing.assert_close(v_video, torch.full_like(v_video, 12.75), rtol=0, atol=1e-6)
    torch.testing.assert_close(v_audio, torch.full_like(v_audio, 20.3125), rtol=0, atol=1e-6)


def test_combine_is_a_pure_function_of_pass_outputs():
    def pair(v, a):
        return torch.full((1, 2), v), torch.full((1, 3), a)
    outputs = {Pass.JOINT: pair(4.5, 6.75), Pass.NEGATIVE: pair(3.5, 3.75), Pass.MUTED_AUDIO: pair(2.25, 99.0),
               Pass.STATIC_VIDEO: pair(99.0, 4.5625)}
    v, a = combine_velocities(outputs, StepScales(5.0, 3.0, 2.0, 4.0))
    assert torch.all(v == 10.75) and torch.all(a == 19.3125)
    # Scale 1 terms are left out: only J is read.
    v, a = combine_velocities({Pass.JOINT: pair(4.5, 6.75)}, StepScales(1.0, 1.0, 1.0, 1.0))
    assert torch.all(v == 4.5) and torch.all(a == 6.75)
    # Text on video only: the audio keeps J_a.
    v, a = combine_velocities(outputs, StepScales(2.0, 1.0, 1.0, 1.0))
    assert torch.all(v == 5.5) and torch.all(a == 6.75)
    with pytest.raises(ValueError, match="muted_audio"):
        combine_velocities({Pass.JOINT: pair(1, 1)}, StepScales(1.0, 1.0, 3.0, 1.0))


@pytest.mark.parametrize("scales, expected", [
    ((1, 1, 1, 1), (Pass.JOINT,)),
    ((2, 1, 1, 1), (Pass.JOINT, Pass.NEGATIVE)),
    ((1, 2, 1, 1), (Pass.JOINT, Pass.NEGATIVE)),
    ((1, 1, 2, 1), (Pass.JOINT, Pass.MUTED_AUDIO)),
    ((1, 1, 1, 2), (Pass.JOINT, Pass.STATIC_VIDEO)),
    ((0.5, 1, 1, 3), (Pass.JOINT, Pass.NEGATIVE, Pass.STATIC_VIDEO)),
    ((4, 3, 2, 2), (Pass.JOINT, Pass.NEGATIVE, Pass.MUTED_AUDIO, Pass.STATIC_VIDEO)),
])
def test_passes_whose_scales_are_one_are_not_run(scales, expected):
    assert plan_passes(StepScales(*map(float, scales))) == expected
    guidance = SyncCFGGuidance(*map(float, scales))
    for batched in (True, False):
        _, model = constant_step(guidance, batched, batch=2)
        if batched:
            assert [c["batch"] for c in model.calls] == [2 * len(expected)]
        else:
            assert [c["batch"] for c in model.calls] == [2] * len(expected)
        sigma_v = torch.cat([c["sigma_video"] for c in model.calls])
        sigma_a = torch.cat([c["sigma_audio"] for c in model.calls])
        # Anchor rows are recognisable by their zero sigma: exactly the planned D passes are present.
        assert int((sigma_a == 0).sum()) == 2 * (Pass.MUTED_AUDIO in expected)
        assert int((sigma_v == 0).sum()) == 2 * (Pass.STATIC_VIDEO in expected)
        text_v = torch.cat([c["text_video"] for c in model.calls])
        assert int((text_v == 0).sum()) == 2 * (Pass.NEGATIVE in expected)


# ---- batched == pass by pass -----------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_batched_equals_pass_by_pass(solver):
    guidance = SyncCFGGuidance(4.0, 3.0, 2.5, 1.5, sync_interval=(0.0, 0.75), slg_blocks=(1, 2))
    nv, na = noise(batch=2, seed=1)
    results, counts = {}, {}
    for batched in (True, False):
        model = StandIn(nonlinear=True)
        results[batched] = sample_av(model, nv, na, POSITIVE, NEGATIVE, anchors(batch=1), guidance, steps=8,
                                     solver=solver, shift=5.0, batched=batched)
        counts[batched] = len(model.calls)
    assert (results[True][0] - results[False][0]).abs().max() < 1e-5
    assert (results[True][1] - results[False][1]).abs().max() < 1e-5
    # 8 steps, sync on for steps 0..5: batched = one forward a step; pass by pass = 4 (6 steps) or 2 (2 steps).
    assert counts[True] == 8 and counts[False] == 6 * 4 + 2 * 2


@pytest.mark.parametrize("dtype, tolerance", [
    (torch.float64, 1e-10),
    # float32: measured 5.7e-6 on latents of magnitude ~2 (batch size changes the GEMM blocking and so the
    # rounding, and guidance scales 4/3/2 amplify it); the tolerance leaves room for other BLAS builds.
    (torch.float32, 1e-4),
])
def test_batched_equals_pass_by_pass_on_the_joint_model(dtype, tolerance):
    joint = pytest.importorskip("comfyui_syncav.model.joint")
    from comfyui_syncav.model.config import get_preset

    torch.manual_seed(0)
    config = get_preset("tiny")
    model = joint.JointModel(config)
    with torch.no_grad():   # random, not zero-initialised, weights so every path is exercised
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    model.to(dtype).eval()
    cv, ca, dt = config.video.in_channels, config.audio.in_channels, config.video.text_dim
    g = torch.Generator().manual_seed(0)
    nv, na = torch.randn(1, cv, 2, 4, 4, generator=g), torch.randn(1, 8, ca, generator=g)
    pos = (EncodedText(torch.randn(1, 6, dt, generator=g), torch.tensor([6])),
           EncodedText(torch.randn(1, 4, dt, generator=g), torch.tensor([4])))
    neg = (EncodedText(torch.zeros(1, 3, dt), torch.tensor([0])), EncodedText(torch.zeros(1, 3, dt), torch.tensor([0])))
    anchor_pair = (torch.randn(1, cv, 2, 4, 4, generator=g) * 0.1, torch.randn(1, 8, ca, generator=g) * 0.1)
    guidance = SyncCFGGuidance(4.0, 3.0, 2.0, 2.0, slg_blocks=(1,))
    out = [sample_av(model, nv.to(dtype), na.to(dtype), pos, neg, anchor_pair, guidance, steps=3, batched=b)
           for b in (True, False)]
    assert out[0][0].dtype == dtype
    assert (out[0][0] - out[1][0]).abs().max() < tolerance
    assert (out[0][1] - out[1][1]).abs().max() < tolerance
    # The guidance did something (the comparison is not between two plain joint passes).
    plain = sample_av(model, nv.to(dtype), na.to(dtype), pos, neg, anchor_pair, SyncCFGGuidance(), steps=3)
    assert (out[0][0] - plain[0]).abs().max() > 0.1


# ---- what the passes feed the model ----------------------------------------------------------------------------

def test_anchor_passes_get_clean_anchor_latents_at_sigma_zero():
    batch = 2
    nv, na = noise(batch=batch)
    model = StandIn()
    sample_av(model, nv, na, POSITIVE, NEGATIVE, anchors(batch=1), GUIDED, steps=3, solver="euler", shift=1.0)
    solver = FlowSolver("euler", 3, 1.0)
    assert len(model.calls) == 3
    for i, call in enumerate(model.calls):
        assert call["batch"] == 4 * batch
        sigma = solver.sigma(i)
        rows = {p: slice(k * batch, (k + 1) * batch) for k, p in enumerate(plan_passes(GUIDED.scales_at(i, 3)))}
        video, audio = call["video"], call["audio"]
        # J and U see the same noisy latents; J positive texts, U negative texts.
        assert torch.equal(video[rows[Pass.JOINT]], video[rows[Pass.NEGATIVE]])
        assert torch.equal(audio[rows[Pass.JOINT]], audio[rows[Pass.NEGATIVE]])
        assert torch.all(call["text_video"][rows[Pass.NEGATIVE]] == 0.0)
        assert torch.all(call["text_audio"][rows[Pass.NEGATIVE]] == -1.0)
        for p in (Pass.JOINT, Pass.MUTED_AUDIO, Pass.STATIC_VIDEO):
            assert torch.all(call["text_video"][rows[p]] == 1.0) and torch.all(call["text_audio"][rows[p]] == 2.0)
        # D_v: the noisy video beside the clean silence latent at sigma 0.
        d_v = rows[Pass.MUTED_AUDIO]
        assert torch.equal(video[d_v], video[rows[Pass.JOINT]])
        assert torch.all(audio[d_v] == SILENCE_VALUE)
        assert torch.all(call["sigma_audio"][d_v] == 0) and torch.allclose(call["sigma_video"][d_v],
                                                                           torch.full((batch,), sigma))
        # D_a: the clean static-video latent at sigma 0 beside the noisy audio.
        d_a = rows[Pass.STATIC_VIDEO]
        assert torch.equal(audio[d_a], audio[rows[Pass.JOINT]])
        assert torch.all(video[d_a] == STATIC_VALUE)
        assert torch.all(call["sigma_video"][d_a] == 0) and torch.allclose(call["sigma_audio"][d_a],
                                                                           torch.full((batch,), sigma))
        # J and U: both streams noisy at this step's sigma.
        for p in (Pass.JOINT, Pass.NEGATIVE):
            assert torch.allclose(call["sigma_video"][rows[p]], torch.full((batch,), sigma))
            assert torch.allclose(call["sigma_audio"][rows[p]], torch.full((batch,), sigma))
    # Step 0 starts from the noise itself (sigma = 1).
    assert torch.equal(model.calls[0]["video"][:batch], nv) and torch.equal(model.calls[0]["audio"][:batch], na)


def test_anchor_passes_pass_by_pass():
    model = StandIn()
    nv, na = noise()
    sample_av(model, nv, na, POSITIVE, NEGATIVE, anchors(), GUIDED, steps=1, solver="euler", batched=False)
    joint, negative, d_v, d_a = model.calls
    assert torch.all(d_v["audio"] == SILENCE_VALUE) and torch.all(d_v["sigma_audio"] == 0)
    assert torch.all(d_v["sigma_video"] == 1.0) and torch.equal(d_v["video"], nv)
    assert torch.all(d_a["video"] == STATIC_VALUE) and torch.all(d_a["sigma_video"] == 0)
    assert torch.all(d_a["sigma_audio"] == 1.0) and torch.equal(d_a["audio"], na)
    assert negative["text_video"].item() == 0.0 and joint["text_video"].item() == 1.0


def test_sync_interval_decides_which_steps_run_the_anchor_passes():
    guidance = SyncCFGGuidance(2.0, 2.0, 3.0, 3.0, sync_interval=(0.2, 0.6))
    model = StandIn()
    nv, na = noise()
    sample_av(model, nv, na, POSITIVE, NEGATIVE, anchors(), guidance, steps=10, solver="euler")
    with_anchor_rows = [i for i, c in enumerate(model.calls)
                        if bool((c["sigma_video"] == 0).any() or (c["sigma_audio"] == 0).any())]
    assert with_anchor_rows == [2, 3, 4, 5]
    assert [c["batch"] for c in model.calls] == [2, 2, 4, 4, 4, 4, 2, 2, 2, 2]
    # Outside the interval the sync terms are 0: the step scales fall back to 1.
    assert guidance.scales_at(6, 10) == StepScales(2.0, 2.0, 1.0, 1.0)
    assert guidance.scales_at(2, 10) == StepScales(2.0, 2.0, 3.0, 3.0)
    # 0.7 * 10 is 7.000000000000001 in floating point; step 7 must still be outside [0, 0.7).
    g = SyncCFGGuidance(sync_scale_video=2.0, sync_interval=(0.0, 0.7))
    assert [i for i in range(10) if g.sync_active(i, 10)] == list(range(7))
    assert [i for i in range(4) if SyncCFGGuidance(sync_interval=(0.5, 1.0)).sync_active(i, 4)] == [2, 3]
    assert not any(SyncCFGGuidance(sync_interval=(0.3, 0.3)).sync_active(i, 10) for i in range(10))


@pytest.mark.parametrize("batched", [True, False])
def test_skip_layer_guidance_only_on_negative_rows(batched):
    guidance = SyncCFGGuidance(3.0, 3.0, 2.0, 2.0, slg_blocks=[2, 1])
    assert guidance.slg_blocks == (1, 2)
    _, model = constant_step(guidance, batched, batch=2)
    if batched:
        (call,) = model.calls
        assert call["skip_blocks"] == (1, 2)
        assert call["skip_rows"].tolist() == [False, False, True, True, False, False, False, False]
        assert torch.all(call["text_video"][call["skip_rows"]] == 0.0)   # the skipped rows are the U rows
    else:
        assert [c["skip_blocks"] for c in model.calls] == [(), (1, 2), (), ()]
        assert all(c["skip_rows"] is None for c in model.calls)
        assert torch.all(model.calls[1]["text_video"] == 0.0)
    # SLG acts through the text term: with both text scales 1 there is no U pass and nothing is skipped.
    _, model = constant_step(SyncCFGGuidance(1.0, 1.0, 2.0, 2.0, slg_blocks=(1,)), batched)
    assert all(c["skip_blocks"] == () and c["skip_rows"] is None for c in model.calls)


# ---- callback --------------------------------------------------------------------------------------------------

def test_callback_once_per_step_and_its_exception_stops_sampling():
    seen = []

    def record(i, total, video, audio):
        seen.append((i, total, tuple(video.shape), tuple(audio.shape)))

    nv, na = noise(batch=2)
    video, audio = sample_av(StandIn(), nv, na, POSITIVE, NEGATIVE, anchors(), GUIDED, steps=5, callback=record)
    assert seen == [(i, 5, tuple(nv.shape), tuple(na.shape)) for i in range(5)]

    class Interrupted(Exception):
        pass

    def interrupt(i, total, video, audio):
        if i == 1:
            raise Interrupted

    model = StandIn()
    with pytest.raises(Interrupted):
        sample_av(model, nv, na, POSITIVE, NEGATIVE, anchors(), GUIDED, steps=5, callback=interrupt)
    assert len(model.calls) == 2   # stopped right after step 1, no further model call


# ---- solvers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["euler", "unipc"])
@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("guided", [False, True])
def test_exact_velocity_lands_on_x0(solver, steps, guided):
    # The model knows x0; every pass agrees, so guidance changes nothing and the ODE solve is exact.
    # Measured error: <= 2.4e-7 (float32 rounding; UniPC's first sigma is 1 - 1e-6); tolerance 1e-5.
    g = torch.Generator().manual_seed(3)
    x0_video, x0_audio = torch.randn(2, CV, F, H, W, generator=g), torch.randn(2, LA, CA, generator=g)
    nv, na = noise(batch=2, seed=4)
    guidance = GUIDED if guided else SyncCFGGuidance()
    video, audio = sample_av(ExactVelocity(x0_video, x0_audio), nv, na, POSITIVE, NEGATIVE, anchors(),
                             guidance, steps=steps, solver=solver, shift=5.0)
    assert (video - x0_video).abs().max() < 1e-5
    assert (audio - x0_audio).abs().max() < 1e-5


@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_schedule_sigmas(solver):
    s = FlowSolver(solver, steps=10, shift=5.0)
    assert s.sigmas.shape == (11,) and s.sigmas[-1] == 0 and abs(s.sigmas[0] - 1) < 1e-5
    assert torch.all(s.sigmas[1:] < s.sigmas[:-1])
    # The shift maps the even grid sigma -> 5 sigma / (1 + 4 sigma): step 5 of 10 sits at 0.5005 -> 0.8336.
    base = 1 - 5 * (1 - 1e-3) / 10
    assert abs(float(s.sigmas[5]) - 5 * base / (1 + 4 * base)) < 1e-5
    euler, unipc = FlowSolver("euler", 10, 5.0), FlowSolver("unipc", 10, 5.0)
    assert torch.allclose(euler.sigmas, unipc.sigmas, atol=1e-5)   # same grid for both solvers
    with pytest.raises(RuntimeError, match="in order"):
        s.step(torch.zeros(1), torch.zeros(1), 3)


# ---- errors ----------------------------------------------------------------------------------------------------

def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="solver.*'dpm'"):
        make_scheduler("dpm", 10, 5.0)
    with pytest.raises(ValueError, match="steps"):
        make_scheduler("euler", 0, 5.0)
    with pytest.raises(ValueError, match="steps"):
        make_scheduler("euler", 2.5, 5.0)
    for shift in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="shift"):
            make_scheduler("unipc", 10, shift)


def test_bad_guidance_settings():
    with pytest.raises(ValueError, match="sync_interval"):
        SyncCFGGuidance(sync_interval=(0.6, 0.2))
    with pytest.raises(ValueError, match="sync_interval"):
        SyncCFGGuidance(sync_interval=(0.0, 1.5))
    with pytest.raises(ValueError, match="text_scale_video"):
        SyncCFGGuidance(text_scale_video=float("inf"))
    with pytest.raises(ValueError, match="slg_blocks"):
        SyncCFGGuidance(slg_blocks=(-1,))


def test_bad_sampler_inputs():
    nv, na = noise()
    model = StandIn()
    with pytest.raises(ValueError, match="negative.*text_scale_video=4.0"):
        sample_av(model, nv, na, POSITIVE, None, anchors(), SyncCFGGuidance(text_scale_video=4.0), steps=2)
    with pytest.raises(ValueError, match="anchors.*sync_scale_audio=2.0"):
        sample_av(model, nv, na, POSITIVE, NEGATIVE, None, SyncCFGGuidance(sync_scale_audio=2.0), steps=2)
    with pytest.raises(ValueError, match="silence_latent"):
        sample_av(model, nv, na, POSITIVE, NEGATIVE, (anchors()[0], torch.zeros(1, LA + 1, CA)), GUIDED, steps=2)
    with pytest.raises(ValueError, match="static_video_latent"):
        sample_av(model, nv, na, POSITIVE, NEGATIVE, (torch.zeros(3, CV, F, H, W), anchors()[1]), GUIDED, steps=2)
    with pytest.raises(ValueError, match="batch"):
        sample_av(model, nv, torch.zeros(2, LA, CA), POSITIVE, steps=2)
    with pytest.raises(ValueError, match="noise_video"):
        sample_av(model, nv[0], na, POSITIVE, steps=2)
    with pytest.raises(ValueError, match="noise_audio has 4 channels"):
        sample_av(model, nv, torch.zeros(1, LA, 4), POSITIVE, steps=2)
    with pytest.raises(ValueError, match="positive"):
        sample_av(model, nv, na, POSITIVE[0], steps=2)
    with pytest.raises(ValueError, match="slg_blocks"):
        sample_av(model, nv, na, POSITIVE, NEGATIVE, None, SyncCFGGuidance(text_scale_video=2.0, slg_blocks=(7,)),
                  steps=2)
    with pytest.raises(ValueError, match="solver"):
        sample_av(model, nv, na, POSITIVE, steps=2, solver="heun")
    with pytest.raises(ValueError, match="steps"):
        sample_av(model, nv, na, POSITIVE, steps=0)
    with pytest.raises(ValueError, match="shift"):
        sample_av(model, nv, na, POSITIVE, steps=2, shift=0)
    assert model.calls == []   # nothing ran on bad input
