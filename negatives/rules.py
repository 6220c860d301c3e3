"""Temporal negatives for sync post-training: a real clip with its audio-video timing broken by a rule.

SyncDPO-style training (DESIGN.md section 3) pairs each real clip (the winner) with the same clip distorted by a
rule (the loser), built on the fly from the batch, with no sampling from the model. Every rule here is a small
pure function

    rule(video, audio, magnitude, *, axes, generator) -> (video, audio)

over a batch of video ``[B, ...]`` and audio ``[B, ...]`` whose time axes and rates ``axes`` (a ``TimeAxes``) names:

* latents (the default layout): video ``[B, Cv, Fv, Hv, Wv]`` (time axis 2), audio ``[B, La, Ca]`` (time axis 1),
  at the codec's latent rates (``TimeAxes.latent(video_codec, audio_codec, ...)``);
* raw media: frames ``[B, F, H, W, 3]`` (time axis 1), waveform ``[B, C, T]`` (time axis 2), at the frame rate and
  sample rate (``TimeAxes.raw(fps, sample_rate_hz)``).

Magnitudes are in seconds (shifts, spans), a ratio (tempo) or a count (shuffle) and are converted to steps of the
stream they touch with that stream's rate, so one curriculum written in seconds works for every codec. A magnitude
is a number (used as is, for every row), a ``(low, high)`` range (drawn per row; for the shift the sign and for the
tempo the direction, faster or slower, are then drawn at random too) or a per-row tensor ``[B]``.
The stream a rule does not touch is returned unchanged (the same tensor object). All randomness comes from
``generator``; index maps are built with batched tensor ops on the input's device and applied with one gather.

Choices that matter for what the model learns from a pair:

* ``audio_shift`` rolls the audio circularly rather than padding it with silence, and ``audio_tempo`` wraps the
  same way when it runs out of audio. A DPO loser should differ from its winner in *timing* only: padding a 1 s
  shift of a 2 s clip with silence makes half the loser silent, a cue visible from the audio alone, and the model
  would learn "silence is bad" (real clips have silent stretches) instead of "sound must follow the picture". The
  roll keeps the loudness, the event count and the spectrum; its only one-stream artefact is a single splice at
  the wrap point. The one rule whose point *is* silence is ``audio_mute``.
* ``audio_swap`` gives each row another row's audio through a derangement, so no row keeps its own.
* ``video_freeze`` needs at least two video steps (a freeze of one step repeats a frame over itself) and
  ``segment_shuffle`` draws a permutation that is not the identity, so no rule silently returns the winner.
* On a causal video codec (Wan: the first latent frame encodes one frame, the others four) the rates are averages
  and ``video_reversal`` moves the special first latent to the end; prefer audio rules there.

``RULES`` is the table of every rule: its family, stream, magnitude unit and requirement (``RuleSpec``);
``applicable`` / ``why_not_applicable`` tell whether a magnitude fits a clip (a rule that cannot apply raises
``NegativeRuleError`` naming the rule, the magnitude and the clip length). The parts: time_axes.py (layouts and
rates), magnitudes.py (forms, validation, draws), applicability.py, build.py (``build_negatives``: a rule per row).
"""

from __future__ import annotations

import torch

from .applicability import prepare, unfit_reason
from .magnitudes import check_magnitude, draw_values, uniforms
from .rule_spec import RuleSpec
from .time_axes import ClipLengths, TimeAxes, to_steps

__all__ = [
    "RULES", "FAMILIES", "spec_of",
    "audio_shift", "audio_reversal", "video_reversal", "audio_tempo", "segment_shuffle", "audio_swap",
    "video_freeze", "audio_mute", "repeat_span",
    "validate_magnitude", "draw_magnitudes", "why_not_applicable", "applicable",
]


# ------------------------------------------------------------------------------------------------ tensor ops

def _gather_time(x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """x [B, ..., N (at axis), ...], index [B, M] long -> [B, ..., M, ...].

    out[b, ..., t, ...] = x[b, ..., index[b, t], ...]; one gather, the index broadcast over the other dimensions.
    """
    view = [1] * x.ndim
    view[0], view[axis] = index.shape
    shape = list(x.shape)
    shape[axis] = index.shape[1]
    return torch.gather(x, axis, index.reshape(view).expand(shape))


def _along(values: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """[B, N] per-row, per-time values -> a view that broadcasts against x with time at ``axis``."""
    view = [1] * x.ndim
    view[0], view[axis] = values.shape
    return values.reshape(view)


def _time(length: int, device) -> torch.Tensor:
    return torch.arange(length, device=device)[None]                  # [1, N]


def _starts(span_steps: torch.Tensor, room: torch.Tensor, generator, device) -> torch.Tensor:
    """A uniform start in [0, room] per row ([B] long on device) for spans of ``span_steps``."""
    u = uniforms(span_steps.numel(), generator)
    return torch.floor(u * (room + 1).double()).long().clamp(max=room).to(device)[:, None]     # [B, 1]


def _silence(audio: torch.Tensor, axes: TimeAxes) -> torch.Tensor:
    """The silence value, broadcastable to audio [B, ...]."""
    silence = torch.as_tensor(axes.audio_silence).to(device=audio.device, dtype=audio.dtype)
    if silence.ndim == audio.ndim and silence.shape[0] == 1:
        silence = silence[0]                                           # the codec's [1, La, Ca]
    try:
        torch.broadcast_shapes(silence.shape, audio.shape[1:])
    except RuntimeError:
        raise ValueError(f"TimeAxes.audio_silence: shape {list(silence.shape)} does not broadcast to one row of "
                         f"audio {list(audio.shape[1:])} (give a [Ca] latent, or one as long as the clip)") from None
    return silence


# ------------------------------------------------------------------------------------------------ the rules

# Each rule is followed by its requirement (``RuleSpec.requirement``): ``(values, lengths, axes) -> (bad, words)``,
# bad [N] marking the magnitude values [N] a clip of ``lengths`` cannot take, words saying what the rule needs.

def audio_shift(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Audio shifted in time by ``magnitude`` seconds (positive: the sound comes later than the picture).

    Circular: out[t] = audio[(t - steps) mod La]. video [B, ...] unchanged, audio [B, ...] -> same shape.
    """
    values, lengths = prepare(RULES["audio_shift"], video, audio, magnitude, axes, generator)
    steps = to_steps(values, axes.audio_hz).to(audio.device)[:, None]   # [B, 1]
    index = (_time(lengths.audio_steps, audio.device) - steps) % lengths.audio_steps
    return video, _gather_time(audio, axes.audio_axis, index)


def _shift_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    steps = to_steps(values, axes.audio_hz).abs()
    return (steps < 1) | (steps >= lengths.audio_steps), (
        f"a shift must move the audio by at least one step (1/{axes.audio_hz:g} s) and by less than the clip")


def audio_reversal(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Audio played backwards (an involution). No magnitude."""
    prepare(RULES["audio_reversal"], video, audio, magnitude, axes, generator)
    return video, audio.flip(axes.audio_axis)


def video_reversal(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Video played backwards (an involution). No magnitude."""
    prepare(RULES["video_reversal"], video, audio, magnitude, axes, generator)
    return video.flip(axes.video_axis), audio


def _every_value(values) -> torch.Tensor:
    """[N] False: one entry per magnitude value (one for a rule without a magnitude), for clip-only requirements."""
    return torch.zeros(1 if values is None else values.numel(), dtype=torch.bool)


def _audio_reversal_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    return _every_value(values) | (lengths.audio_steps < 2), "reversing needs at least two steps"


def _video_reversal_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    return _every_value(values) | (lengths.video_steps < 2), "reversing needs at least two steps"


def audio_tempo(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Audio re-timed by a speed ratio around its start: out[t] = audio[t * ratio] (2 = twice as fast).

    Linear interpolation between neighbouring steps; the length stays La: a slower clip is cropped, a faster one
    wraps around to its start (as ``audio_shift`` does, so the loser gains no silence).
    """
    values, lengths = prepare(RULES["audio_tempo"], video, audio, magnitude, axes, generator)
    L = lengths.audio_steps
    # float64 positions keep integer reads exact on long waveforms; MPS has no float64.
    dtype = torch.float32 if audio.device.type == "mps" else torch.float64
    ratio = values.to(audio.device, dtype)[:, None]                    # [B, 1]
    position = _time(L, audio.device).to(dtype) * ratio                # [B, La]
    below = torch.floor(position)
    weight = (position - below).to(audio.dtype)
    below = below.long() % L
    low = _gather_time(audio, axes.audio_axis, below)
    high = _gather_time(audio, axes.audio_axis, (below + 1) % L)
    # lerp with weight 0 returns ``low`` exactly, so integer positions copy steps bit for bit.
    return video, torch.lerp(low, high, _along(weight, audio, axes.audio_axis))


def _tempo_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    # The last output step reads input position (L - 1) * ratio: it must move by at least one step.
    L = lengths.audio_steps
    return (L < 2) | ((L - 1) * (values - 1).abs() < 1 - 1e-9), \
        "a tempo change must move the end of the clip by at least one audio step"


def segment_shuffle(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Audio cut into k near-equal contiguous segments, put back in a random order that is not the identity."""
    values, lengths = prepare(RULES["segment_shuffle"], video, audio, magnitude, axes, generator)
    B, L, device = lengths.batch, lengths.audio_steps, audio.device
    k = values.long()                                                  # [B]
    k_max = int(k.max())
    j = torch.arange(k_max + 1)
    bounds = torch.minimum(j[None] * L // k[:, None], torch.tensor(L))   # [B, k_max + 1]; rows with k < k_max end at L
    sizes = bounds[:, 1:] - bounds[:, :-1]                             # [B, k_max], zero past a row's k
    unused = j[None, :k_max] >= k[:, None]
    order = _non_identity_orders(k, k_max, unused, generator)          # [B, k_max]: output segment i = input order[i]
    out_ends = torch.cumsum(torch.gather(sizes, 1, order), 1)          # [B, k_max]
    out_starts = out_ends - torch.gather(sizes, 1, order)
    src_starts = torch.gather(bounds[:, :-1], 1, order)
    t = _time(L, device).expand(B, L).contiguous()
    out_ends, out_starts, src_starts = out_ends.to(device), out_starts.to(device), src_starts.to(device)
    segment = torch.searchsorted(out_ends, t, right=True)              # the output segment each step lies in
    index = torch.gather(src_starts, 1, segment) + t - torch.gather(out_starts, 1, segment)
    return video, _gather_time(audio, axes.audio_axis, index)


def _shuffle_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    return (values < 2) | (values > lengths.audio_steps), "each of the k >= 2 segments needs at least one audio step"


def _non_identity_orders(k: torch.Tensor, k_max: int, unused: torch.Tensor, generator) -> torch.Tensor:
    """[B, k_max] long: per row a uniform random permutation of its first k entries other than the identity.

    Rejection sampling (each round batched; a round keeps the identity with probability 1/k! <= 1/2); the unused
    tail of a row stays in place. After 32 rounds a still-identity row swaps its first two segments.
    """
    B = k.numel()
    identity = torch.arange(k_max)[None].expand(B, k_max)
    order = identity.clone()
    redo = torch.ones(B, dtype=torch.bool)
    for _ in range(32):
        keys = uniforms(B * k_max, generator).view(B, k_max)
        keys = torch.where(unused, 2.0 + identity.double(), keys)      # unused segments sort last, in order
        fresh = torch.argsort(keys, dim=1, stable=True)
        order = torch.where(redo[:, None], fresh, order)
        redo = (order == identity).all(1)
        if not bool(redo.any()):
            return order
    order[redo, 0], order[redo, 1] = 1, 0
    return order


def audio_swap(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Each row gets another row's audio: a random derangement of the batch (B >= 2). No magnitude."""
    _, lengths = prepare(RULES["audio_swap"], video, audio, magnitude, axes, generator)
    B = lengths.batch
    # A random cycle through all rows (donor of cycle[i] = cycle[i + 1]) is always a derangement.
    device = generator.device if generator is not None else torch.device("cpu")
    cycle = torch.randperm(B, generator=generator, device=device).cpu()
    donor = torch.empty_like(cycle)
    donor[cycle] = cycle.roll(-1)
    return video, audio.index_select(0, donor.to(audio.device))


def _swap_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    return _every_value(values) | (lengths.batch < 2), "swapping needs another clip in the batch (batch size >= 2)"


def video_freeze(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """A span of ``magnitude`` seconds of video frozen on its first step, at a random start. Audio unchanged."""
    values, lengths = prepare(RULES["video_freeze"], video, audio, magnitude, axes, generator)
    span = to_steps(values, axes.video_hz)                            # [B] on CPU
    start = _starts(span, lengths.video_steps - span, generator, video.device)
    span = span.to(video.device)[:, None]
    t = _time(lengths.video_steps, video.device)
    index = torch.where((t >= start) & (t < start + span), start, t)
    return _gather_time(video, axes.video_axis, index), audio


def _freeze_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    steps = to_steps(values, axes.video_hz)
    return (steps < 2) | (steps > lengths.video_steps), (
        f"a freeze must span at least two video steps ({2 / axes.video_hz:g} s; one step repeats a frame over "
        "itself) and fit in the clip")


def audio_mute(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """A span of ``magnitude`` seconds of audio replaced by the silence (``axes.audio_silence``), at a random start."""
    values, lengths = prepare(RULES["audio_mute"], video, audio, magnitude, axes, generator)
    span = to_steps(values, axes.audio_hz)
    start = _starts(span, lengths.audio_steps - span, generator, audio.device)
    span = span.to(audio.device)[:, None]
    t = _time(lengths.audio_steps, audio.device)
    inside = _along((t >= start) & (t < start + span), audio, axes.audio_axis)
    return video, torch.where(inside, _silence(audio, axes), audio)


def _mute_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    steps = to_steps(values, axes.audio_hz)
    return (steps < 1) | (steps > lengths.audio_steps), \
        "a muted span must cover at least one audio step and fit in the clip"


def repeat_span(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """A span of ``magnitude`` seconds of audio played twice: it overwrites the span that follows it."""
    values, lengths = prepare(RULES["repeat_span"], video, audio, magnitude, axes, generator)
    span = to_steps(values, axes.audio_hz)
    start = _starts(span, lengths.audio_steps - 2 * span, generator, audio.device)
    span = span.to(audio.device)[:, None]
    t = _time(lengths.audio_steps, audio.device)
    index = torch.where((t >= start + span) & (t < start + 2 * span), t - span, t)
    return video, _gather_time(audio, axes.audio_axis, index)


def _repeat_requirement(values, lengths: ClipLengths, axes: TimeAxes):
    steps = to_steps(values, axes.audio_hz)
    return (steps < 1) | (2 * steps > lengths.audio_steps), \
        "a repeated span and the span it covers (twice its length) must fit in the clip"


# ------------------------------------------------------------------------------------------------ the table

RULES: dict[str, RuleSpec] = {spec.name: spec for spec in (
    RuleSpec("audio_swap", "swap", "audio", "none", audio_swap, _swap_requirement, needs_batch=True,
             description="the audio of another clip of the batch"),
    RuleSpec("audio_reversal", "reverse", "audio", "none", audio_reversal, _audio_reversal_requirement,
             description="audio played backwards"),
    RuleSpec("video_reversal", "reverse", "video", "none", video_reversal, _video_reversal_requirement,
             description="video played backwards"),
    RuleSpec("audio_shift", "shift", "audio", "seconds", audio_shift, _shift_requirement, directional=True,
             description="audio shifted in time (circularly)"),
    RuleSpec("segment_shuffle", "shuffle", "audio", "count", segment_shuffle, _shuffle_requirement,
             description="audio cut into k segments put back in another order"),
    RuleSpec("audio_tempo", "tempo", "audio", "ratio", audio_tempo, _tempo_requirement, directional=True,
             description="audio sped up or slowed down"),
    RuleSpec("audio_mute", "mute", "audio", "seconds", audio_mute, _mute_requirement,
             description="a span of audio silenced"),
    RuleSpec("video_freeze", "freeze", "video", "seconds", video_freeze, _freeze_requirement,
             description="a span of video frozen"),
    RuleSpec("repeat_span", "repeat", "audio", "seconds", repeat_span, _repeat_requirement,
             description="a span of audio repeated over the next one"),
)}

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(spec.family for spec in RULES.values()))


def spec_of(rule: str) -> RuleSpec:
    """The ``RuleSpec`` of a rule name; a ValueError listing the rules otherwise."""
    try:
        return RULES[rule]
    except (KeyError, TypeError):
        raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}") from None


# ------------------------------------------------------------------------------------------------ by name

def validate_magnitude(rule: str, magnitude):
    """Check a magnitude's form for a rule and normalise it: None, a float / int, or a ``(low, high)`` tuple.

    Raises ValueError naming the rule and what it expects. (Whether it fits a clip is ``why_not_applicable``.)
    """
    return check_magnitude(spec_of(rule), magnitude)


def draw_magnitudes(rule: str, magnitude, batch: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """Concrete per-row magnitudes ``[B]`` of a rule (float64, CPU; None for a rule without one): see
    ``magnitudes.draw_values``."""
    return draw_values(spec_of(rule), magnitude, batch, generator)


def why_not_applicable(rule: str, magnitude, lengths: ClipLengths, axes: TimeAxes) -> str | None:
    """None when every value ``magnitude`` can take applies to a clip of ``lengths``; else the reason, in words."""
    return unfit_reason(spec_of(rule), magnitude, lengths, axes)


def applicable(rule: str, magnitude, lengths: ClipLengths, axes: TimeAxes) -> bool:
    """Whether ``rule`` with every value of ``magnitude`` (a number or a range) applies to a clip of ``lengths``."""
    return why_not_applicable(rule, magnitude, lengths, axes) is None
