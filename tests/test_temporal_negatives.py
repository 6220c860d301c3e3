"""Temporal negatives and their curriculum: each rule does exactly what it says, on latents and on raw media.

The synthetic batches carry their own coordinates: every value of row b at time step t is ``1000 b + t`` (plus a
channel offset of at most 0.75 for audio), so reading a value back tells which row and which step it came from.
"""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_syncav.codecs.embedded import TinyAudioCodec, TinyVideoCodec
from comfyui_syncav.negatives.curriculum import DEFAULT_CURRICULUM, Curriculum, CurriculumError
from comfyui_syncav.negatives.build import build_negatives
from comfyui_syncav.negatives.rule_spec import NegativeRuleError
from comfyui_syncav.negatives.rules import (FAMILIES, RULES, applicable, audio_mute, audio_reversal, audio_shift,
                                            audio_swap, audio_tempo, repeat_span, segment_shuffle, video_freeze,
                                            video_reversal, why_not_applicable)
from comfyui_syncav.negatives.time_axes import ClipLengths, TimeAxes

B, CV, FV, HV, WV = 4, 2, 16, 2, 2         # video latent [B, CV, FV, HV, WV]
LA, CA = 16, 3                             # audio latent [B, LA, CA]
SILENCE = torch.tensor([-1.0, -2.0, -3.0])  # a non-zero silence latent, so writing it is visible
AXES = TimeAxes(video_hz=8.0, audio_hz=8.0, audio_silence=SILENCE)     # 2 s clips at 8 steps/s


def coordinates(batch: int, steps: int) -> torch.Tensor:
    """[batch, steps] with value 1000 b + t."""
    return 1000.0 * torch.arange(batch)[:, None] + torch.arange(steps)[None].float()


def latents(batch: int = B, video_steps: int = FV, audio_steps: int = LA):
    video = coordinates(batch, video_steps)[:, None, :, None, None].expand(batch, CV, video_steps, HV, WV).clone()
    audio = coordinates(batch, audio_steps)[:, :, None] + torch.tensor([0.0, 0.25, 0.75])   # [B, LA, CA]
    return video, audio


def steps_of(audio: torch.Tensor) -> torch.Tensor:
    """Latent audio [B, LA, CA] -> [B, LA]: the source step each output step holds (row part removed)."""
    return audio[..., 0] - 1000.0 * torch.arange(audio.shape[0])[:, None]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ rules

def test_shift_by_quarter_second_moves_two_steps_circularly():
    video, audio = latents()
    out_video, out = audio_shift(video, audio, 0.25, axes=AXES, generator=gen())
    assert out_video is video
    t = torch.arange(LA)
    assert torch.equal(steps_of(out), ((t - 2) % LA).float().expand(B, LA))     # positive: the sound comes later
    assert torch.equal(out, torch.roll(audio, 2, dims=1))
    _, back = audio_shift(video, audio, -0.25, axes=AXES, generator=gen())
    assert torch.equal(back, torch.roll(audio, -2, dims=1))


def test_shift_range_draws_magnitude_and_sign_per_row():
    video, audio = latents(batch=64)
    _, out = audio_shift(video, audio, (0.25, 0.5), axes=AXES, generator=gen())
    t = torch.arange(LA)
    shifts = []
    for row in range(64):                       # each row is a pure roll by some s in +-{2, 3, 4}
        s = [s for s in range(-LA // 2 + 1, LA // 2) if torch.equal(steps_of(out)[row], ((t - s) % LA).float())]
        assert len(s) == 1 and 2 <= abs(s[0]) <= 4
        shifts.append(s[0])
    assert min(shifts) < 0 < max(shifts)


def test_reversals_are_involutions_and_touch_one_stream():
    video, audio = latents()
    rev_video, rev_audio = audio_reversal(video, audio, axes=AXES)
    assert rev_video is video and torch.equal(steps_of(rev_audio), (LA - 1 - torch.arange(LA)).float().expand(B, LA))
    assert torch.equal(audio_reversal(video, rev_audio, axes=AXES)[1], audio)
    out_video, out_audio = video_reversal(video, audio, axes=AXES)
    assert out_audio is audio and torch.equal(out_video, video.flip(2))
    assert torch.equal(video_reversal(out_video, audio, axes=AXES)[0], video)


def test_tempo_twice_as_fast_reads_step_2t_and_half_speed_interpolates():
    video, audio = latents()
    out_video, fast = audio_tempo(video, audio, 2.0, axes=AXES, generator=gen())
    assert out_video is video
    t = torch.arange(LA // 2)
    assert torch.equal(steps_of(fast)[:, :LA // 2], (2 * t).float().expand(B, -1))
    assert torch.equal(steps_of(fast)[:, LA // 2:], (2 * t).float().expand(B, -1))   # wraps instead of padding
    _, slow = audio_tempo(video, audio, 0.5, axes=AXES, generator=gen())
    assert torch.allclose(steps_of(slow), 0.5 * torch.arange(LA).float().expand(B, LA))


def test_tempo_range_goes_both_ways():
    video, audio = latents(batch=32)
    _, out = audio_tempo(video, audio, (1.5, 1.5), axes=AXES, generator=gen())
    last = steps_of(out)[:, 1]           # step 1 reads position 1.5 (faster) or 1 / 1.5 (slower)
    faster, slower = (last - 1.5).abs() < 0.01, (last - 1 / 1.5).abs() < 0.01     # float32 at 31000: ~0.002
    assert (faster | slower).all() and faster.any() and slower.any()


def test_shuffle_is_a_non_identity_permutation_of_contiguous_segments():
    video, audio = latents(batch=32)
    for k in (2, 3, 5):
        out_video, out = segment_shuffle(video, audio, k, axes=AXES, generator=gen(k))
        assert out_video is video
        source = steps_of(out).long()
        assert torch.equal(source.sort(1).values, torch.arange(LA).expand(32, LA))    # a permutation of the steps
        assert not (source == torch.arange(LA)).all(1).any()                           # never the identity
        runs = (source[:, 1:] != source[:, :-1] + 1).sum(1) + 1                         # contiguous pieces
        assert (runs <= k).all() and (runs >= 2).all()
        assert torch.equal(out[..., 1:] - out[..., :1], audio[..., 1:] - audio[..., :1])  # channels move together


def test_swap_is_a_derangement_across_the_batch():
    for batch in (2, 3, 7):
        video, audio = latents(batch=batch)
        out_video, out = audio_swap(video, audio, axes=AXES, generator=gen(batch))
        assert out_video is video
        donor = (out[:, 0, 0] // 1000).long()
        assert torch.equal(donor.sort().values, torch.arange(batch)) and not (donor == torch.arange(batch)).any()
        assert torch.equal(out, audio[donor])


def test_freeze_repeats_the_first_frame_of_the_span_exactly():
    video, audio = latents(batch=16)
    out, out_audio = video_freeze(video, audio, 0.5, axes=AXES, generator=gen())       # 4 video steps
    assert out_audio is audio
    source = out[:, 0, :, 0, 0] - 1000.0 * torch.arange(16)[:, None]
    for row in range(16):
        changed = (source[row] != torch.arange(FV)).nonzero().flatten()
        start = int(changed[0]) - 1
        assert changed.tolist() == [start + 1, start + 2, start + 3]
        assert (source[row, start:start + 4] == start).all()
    assert torch.equal(out, out[:, :1, :, :1, :1].expand_as(out))    # whole frames copied (every channel and pixel)


def test_mute_writes_silence_exactly_on_the_span_only():
    video, audio = latents(batch=16)
    out_video, out = audio_mute(video, audio, 0.375, axes=AXES, generator=gen())        # 3 audio steps
    assert out_video is video
    silent = (out == SILENCE).all(-1)
    assert (silent.sum(1) == 3).all()
    for row in range(16):
        where = silent[row].nonzero().flatten()
        assert where.tolist() == list(range(int(where[0]), int(where[0]) + 3))
    assert torch.equal(out[~silent], audio[~silent])
    raw = TimeAxes.raw(video_fps=16.0, sample_rate_hz=64.0)                              # waveform silence is 0
    frames, wave = torch.rand(2, 32, 2, 2, 3), torch.rand(2, 1, 128) + 1.0
    _, muted = audio_mute(frames, wave, 0.25, axes=raw, generator=gen())
    assert ((muted == 0).sum(-1) == 16).all() and torch.equal(muted[muted != 0], wave[muted != 0])


def test_repeat_copies_the_span_over_the_next_one():
    video, audio = latents(batch=16)
    out_video, out = repeat_span(video, audio, 0.25, axes=AXES, generator=gen())        # 2 audio steps
    assert out_video is video
    source = steps_of(out)
    for row in range(16):
        changed = (source[row] != torch.arange(LA)).nonzero().flatten().tolist()
        start = changed[0] - 2
        assert changed == [start + 2, start + 3]
        assert source[row, start + 2:start + 4].tolist() == [start, start + 1]


def test_every_rule_is_deterministic_for_a_seed_and_varies_across_seeds():
    video, audio = latents(batch=8)
    magnitudes = {"audio_shift": (0.25, 1.0), "audio_tempo": (1.1, 1.5), "segment_shuffle": (3, 4),
                  "video_freeze": 0.25, "audio_mute": 0.25, "repeat_span": 0.25}
    for name, spec in RULES.items():
        run = lambda seed: spec.fn(video, audio, magnitudes.get(name), axes=AXES, generator=gen(seed))
        first, again = run(1), run(1)
        assert all(torch.equal(a, b) for a, b in zip(first, again)), name
        if name not in ("audio_reversal", "video_reversal"):
            assert any(not torch.equal(a, b) for a, b in zip(run(1), run(2))), name
        untouched = audio if spec.stream == "video" else video
        assert first[0 if spec.stream == "audio" else 1] is untouched, name


def test_raw_frames_and_waveform_move_by_the_same_seconds():
    raw = TimeAxes.raw(video_fps=16.0, sample_rate_hz=64.0)
    frames = coordinates(2, 32)[:, :, None, None, None].expand(2, 32, 2, 2, 3).clone()    # [B, F, H, W, 3]
    wave = coordinates(2, 128)[:, None, :].expand(2, 2, 128).clone()                      # [B, C, T]
    out_frames, shifted = audio_shift(frames, wave, 0.25, axes=raw, generator=gen())
    assert out_frames is frames and torch.equal(shifted, torch.roll(wave, 16, dims=2))      # 0.25 s = 16 samples
    frozen, _ = video_freeze(frames, wave, 0.25, axes=raw, generator=gen())                 # 0.25 s = 4 frames
    source = frozen[:, :, 0, 0, 0] - 1000.0 * torch.arange(2)[:, None]
    assert ((source != torch.arange(32)).sum(1) == 3).all()
    assert torch.equal(video_reversal(frames, wave, axes=raw)[0], frames.flip(1))
    fast = audio_tempo(frames, wave, 2.0, axes=raw, generator=gen())[1]
    assert torch.equal(fast[:, :, :64], wave[:, :, 0:128:2])
    # The tiny codecs' latent rates: 16 fps / 2 = 8 video latents/s, 8000 Hz / 64 = 125 audio latents/s, and
    # silence encodes to zero.
    latent = TimeAxes.latent(TinyVideoCodec(), TinyAudioCodec())
    assert (latent.video_hz, latent.audio_hz, latent.video_axis, latent.audio_axis) == (8.0, 125.0, 2, 1)
    assert latent.audio_steps(0.25) == 31 and latent.video_steps(0.25) == 2
    assert torch.equal(latent.audio_silence, torch.zeros(32))


def test_inapplicable_rules_raise_clear_errors():
    video, audio = latents()
    cases = [(audio_shift, 3.0, "audio_shift", "3"), (audio_mute, 5.0, "audio_mute", "5"),
             (repeat_span, 1.5, "repeat_span", "1.5"), (video_freeze, 0.1, "video_freeze", "0.1"),
             (segment_shuffle, 20, "segment_shuffle", "20")]
    for fn, magnitude, name, shown in cases:
        with pytest.raises(NegativeRuleError) as error:
            fn(video, audio, magnitude, axes=AXES, generator=gen())
        message = str(error.value)
        assert name in message and shown in message and "16" in message and "2 s" in message, message
    with pytest.raises(NegativeRuleError, match="audio_swap.*batch of 1"):
        audio_swap(video[:1], audio[:1], axes=AXES, generator=gen())
    with pytest.raises(ValueError, match="audio_shift: expected"):
        audio_shift(video, audio, (0.5, 0.1), axes=AXES, generator=gen())
    with pytest.raises(ValueError, match="audio_reversal: expected no magnitude"):
        audio_reversal(video, audio, 1.0, axes=AXES)
    lengths = ClipLengths(FV, LA, B)
    assert applicable("audio_shift", (0.25, 1.0), lengths, AXES)
    assert not applicable("audio_shift", (0.25, 2.5), lengths, AXES)
    assert not applicable("audio_swap", None, ClipLengths(FV, LA, 1), AXES)
    assert not applicable("audio_tempo", (1.01, 1.02), lengths, AXES)      # moves the end by less than a step
    assert "audio_mute" in why_not_applicable("audio_mute", 3.0, lengths, AXES)


def test_build_negatives_applies_each_rows_rule():
    video, audio = latents(batch=6)
    plan = [("audio_shift", 0.25), "video_reversal", ("audio_swap", None), ("audio_shift", -0.5),
            ("audio_reversal", None), ("audio_mute", (0.25, 0.25))]
    out = build_negatives(video, audio, AXES, plan, gen())
    assert out.rules == ["audio_shift", "video_reversal", "audio_swap", "audio_shift", "audio_reversal", "audio_mute"]
    assert torch.equal(out.audio[0], audio[0].roll(2, 0)) and torch.equal(out.audio[3], audio[3].roll(-4, 0))
    assert torch.equal(out.video[1], video[1].flip(1)) and torch.equal(out.audio[1], audio[1])
    donor = int(out.audio[2, 0, 0] // 1000)
    assert donor != 2 and torch.equal(out.audio[2], audio[donor])             # a donor from the whole batch
    assert torch.equal(out.audio[4], audio[4].flip(0))
    assert ((out.audio[5] == SILENCE).all(-1).sum() == 2)
    rows = [0, 2, 3, 4, 5]
    assert torch.equal(out.video[rows], video[rows])                          # audio rules leave the video
    again = build_negatives(video, audio, AXES, plan, gen())
    assert torch.equal(out.video, again.video) and torch.equal(out.audio, again.audio)
    only_audio = build_negatives(video, audio, AXES, ["audio_reversal"] * 6, gen())
    assert only_audio.video is video
    with pytest.raises(ValueError, match="one \\(rule, magnitude\\) per row"):
        build_negatives(video, audio, AXES, plan[:2], gen())


# ------------------------------------------------------------------------------------------------ curriculum

def rules_of(plan):
    return {rule for rule, _ in plan}


def test_default_curriculum_stages_by_progress():
    names = [DEFAULT_CURRICULUM.stage_at(step, 100).name for step in (0, 29, 30, 64, 65, 99, 100)]
    assert names == ["coarse", "coarse", "medium", "medium", "subtle", "subtle", "subtle"]
    start = DEFAULT_CURRICULUM.sample(0, 100, 400, gen())
    assert rules_of(start) == {"audio_swap", "audio_reversal", "video_reversal", "audio_shift"}
    assert all(abs(m) >= 1.0 for r, m in start if r == "audio_shift")
    end = DEFAULT_CURRICULUM.sample(99, 100, 400, gen())
    assert {"audio_mute", "video_freeze", "repeat_span"} <= rules_of(end)


def test_replay_share_and_default_applies_to_the_tiny_clip():
    spec = {"stages": [{"until": 0.5, "rules": [{"rule": "audio_reversal"}]},
                       {"until": 1.0, "replay": 0.2, "rules": [{"rule": "audio_mute", "seconds": 0.25}]}]}
    plan = Curriculum.from_dict(spec).sample(60, 100, 5000, gen())
    share = sum(rule == "audio_reversal" for rule, _ in plan) / len(plan)
    assert abs(share - 0.2) < 0.03
    tiny = TimeAxes.latent(TinyVideoCodec(), TinyAudioCodec())
    lengths = ClipLengths(16, 250, 32)                                        # the tiny preset's 2 s clip
    video, audio = torch.randn(32, 16, 16, 8, 8), torch.randn(32, 250, 32)
    for step in (0, 50, 99):
        negatives = build_negatives(video, audio, tiny, DEFAULT_CURRICULUM.sampler(step, 100), gen(step))
        assert len(negatives.rules) == 32
        assert all(applicable(choice.rule, choice.magnitude, lengths, tiny)
                   for stage in DEFAULT_CURRICULUM.stages for choice in stage.rules)


def test_short_clips_fall_back_and_nothing_applicable_is_a_clear_error():
    short = ClipLengths(video_steps=4, audio_steps=4, batch=8)                # 0.5 s at 8 steps/s
    plan = DEFAULT_CURRICULUM.sample(0, 100, 200, gen(), lengths=short, axes=AXES)
    assert "audio_shift" not in rules_of(plan) and rules_of(plan)            # the 1-1.5 s shifts do not fit
    only_long = Curriculum.from_dict([{"until": 1.0, "rules": [{"rule": "audio_shift", "seconds": [1.0, 1.5]}]}])
    with pytest.raises(NegativeRuleError, match="audio_shift.*4 audio steps"):
        only_long.sample(0, 100, 8, gen(), lengths=short, axes=AXES)


def test_json_round_trip_and_bad_fields_are_named():
    assert Curriculum.from_json(DEFAULT_CURRICULUM.to_json()) == DEFAULT_CURRICULUM
    edited = Curriculum.from_json(json.dumps([
        {"until": 0.4, "rules": [{"rule": "audio_shift", "seconds": [1.0, 1.5], "weight": 2}]},
        {"until": 1.0, "replay": 0.3, "rules": [{"rule": "segment_shuffle", "count": 3}]}]))
    assert Curriculum.from_json(edited.to_json()) == edited and edited.stages[1].replay == 0.3
    good = json.loads(DEFAULT_CURRICULUM.to_json())

    def broken(path, value):
        spec = json.loads(json.dumps(good))
        *parents, last = path
        node = spec
        for key in parents:
            node = node[key]
        node[last] = value
        return json.dumps(spec)
    cases = [((["stages", 1, "until"]), 0.2, "stages[1].until"),
             ((["stages", 2, "until"]), 0.9, "stages[2].until"),
             ((["stages", 1, "replay"]), 1.5, "stages[1].replay"),
             ((["stages", 0, "rules", 3, "seconds"]), [2, 1], "stages[0].rules[3].seconds"),
             ((["stages", 0, "rules", 0, "rule"]), "audio_flip", "stages[0].rules[0].rule"),
             ((["stages", 1, "rules", 0, "weight"]), -1, "stages[1].rules[0].weight"),
             ((["stages", 1, "rules", 2, "ratio"]), [0.8, 1.2], "stages[1].rules[2].ratio"),
             ((["stages", 2, "rules", 0, "secs"]), 0.1, "stages[2].rules[0]"),
             ((["mode"]), "random", "mode"),
             ((["families"]), ["shift", "wobble"], "families[1]")]
    for path, value, field in cases:
        with pytest.raises(CurriculumError) as error:
            Curriculum.from_json(broken(path, value))
        assert str(error.value).startswith(field), (field, str(error.value))
    with pytest.raises(CurriculumError, match="not valid JSON"):
        Curriculum.from_json("{stages: []")


def test_none_mode_mixes_all_stages_and_family_filter_keeps_one_family():
    mixed = DEFAULT_CURRICULUM.with_mode("none")
    all_rules = {choice.rule for stage in DEFAULT_CURRICULUM.stages for choice in stage.rules}
    assert rules_of(mixed.sample(0, 100, 1000, gen())) == all_rules
    assert Curriculum.from_json(mixed.to_json()) == mixed
    shift_only = DEFAULT_CURRICULUM.only_families(["shift"])
    early, late = shift_only.sample(0, 100, 200, gen()), shift_only.sample(99, 100, 200, gen())
    assert rules_of(early) == rules_of(late) == {"audio_shift"}
    assert min(abs(m) for _, m in early) >= 1.0                                 # still coarse -> subtle,
    assert sum(abs(m) <= 0.4 for _, m in late) / len(late) > 0.7                # replaying some earlier shifts
    freeze_only = DEFAULT_CURRICULUM.only_families("freeze")                  # only in the last stage: runs throughout
    assert rules_of(freeze_only.sample(0, 100, 50, gen())) == {"video_freeze"}
    for family in FAMILIES:         # every family of rules is in the default curriculum, and keeps only its own
        kept = rules_of(DEFAULT_CURRICULUM.only_families(family).sample(0, 100, 50, gen()))
        assert kept and {RULES[rule].family for rule in kept} == {family}, family
    with pytest.raises(CurriculumError, match="families"):
        DEFAULT_CURRICULUM.only_families(["wobble"])
