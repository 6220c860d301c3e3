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

``RULES`` registers every rule with its family, stream and magnitude unit; ``applicable`` / ``why_not_applicable``
tell whether a magnitude fits a clip (a rule that cannot apply raises ``NegativeRuleError`` naming the rule, the
magnitude and the clip length); ``build_negatives`` applies a rule per row, each rule once on all of its rows.

Measured cost of ``build_negatives`` on a tiny-preset batch (video ``[32, 16, 16, 8, 8]``, audio ``[32, 250, 32]``,
float32, CPU, one thread, rules drawn by ``DEFAULT_CURRICULUM.sampler`` (sampling included, 0.3-0.5 ms of it), on a
2-core host busy with a training run, 300 batches per stage): 1.2-2.0 ms at best, 2.7-6 ms median, under 10 ms at
the 90th percentile, whatever the stage (a fixed plan with all 9 rules in one batch: 1.6 ms median). The median is
at most 0.4 % of a ~1.5 s training step. Alone, each rule takes 0.03-0.9 ms on all 32 rows (tempo, the dearest,
gathers twice and interpolates).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

__all__ = [
    "NegativeRuleError", "TimeAxes", "ClipLengths", "RuleSpec", "RULES", "FAMILIES", "Negatives",
    "audio_shift", "audio_reversal", "video_reversal", "audio_tempo", "segment_shuffle", "audio_swap",
    "video_freeze", "audio_mute", "repeat_span",
    "validate_magnitude", "draw_magnitudes", "why_not_applicable", "applicable", "build_negatives",
]


class NegativeRuleError(ValueError):
    """A rule cannot apply to a clip: the clip is too short for the magnitude, or the batch has one row (swap)."""


# ------------------------------------------------------------------------------------------------ time axes

@dataclass(frozen=True, eq=False)
class TimeAxes:
    """Where time runs in each stream and how many steps make a second.

    video_hz / audio_hz: steps per second along the time axis (latent frames per second and latents per second for
    latents; fps and sample rate for raw media). video_axis / audio_axis: the time dimension of the batched tensors.
    audio_silence: what the audio is at silence, written by ``audio_mute``: a number, or a tensor that broadcasts
    to one row of audio (a latent ``[Ca]``, ``[La, Ca]`` or the codec's ``[1, La, Ca]``; for a waveform 0).
    """

    video_hz: float
    audio_hz: float
    video_axis: int = 2
    audio_axis: int = 1
    audio_silence: float | torch.Tensor = 0.0

    def __post_init__(self):
        for name in ("video_hz", "audio_hz"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"TimeAxes.{name}: expected a positive rate in steps per second, got {value!r}")
        for name in ("video_axis", "audio_axis"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TimeAxes.{name}: expected the time dimension (>= 1, dimension 0 is the batch), "
                                 f"got {value!r}")

    @classmethod
    def latent(cls, video_codec, audio_codec, num_frames: int | None = None,
               audio_latents: int | None = None, silence: float | torch.Tensor | None = None) -> "TimeAxes":
        """Axes of latents ``[B, Cv, Fv, Hv, Wv]`` / ``[B, La, Ca]`` made by these codecs.

        num_frames: frames of the clip, for a causal video codec whose latent rate depends on it (else
        fps / temporal_stride). silence: the silence latent; by default the codec's own encoding of silence,
        ``[audio_latents, Ca]`` when the clip length is given (the edges may differ from the middle), else one
        middle latent ``[Ca]``.
        """
        if num_frames is not None:
            video_hz = video_codec.latent_hz(num_frames)
        else:
            video_hz = video_codec.fps / video_codec.temporal_stride
        if silence is None:
            if audio_latents is not None:
                silence = audio_codec.silence_latent(audio_latents)[0]
            else:
                silence = audio_codec.silence_latent(9)[0, 4]     # away from both edge windows
        return cls(float(video_hz), float(audio_codec.latents_per_second), 2, 1, silence)

    @classmethod
    def raw(cls, video_fps: float, sample_rate_hz: float) -> "TimeAxes":
        """Axes of frames ``[B, F, H, W, 3]`` at ``video_fps`` and waveforms ``[B, C, T]`` at ``sample_rate_hz``."""
        return cls(float(video_fps), float(sample_rate_hz), 1, 2, 0.0)

    def video_steps(self, seconds: float) -> int:
        """Seconds -> video steps, rounded to the nearest step (half away from zero)."""
        return _round_away(seconds * self.video_hz)

    def audio_steps(self, seconds: float) -> int:
        """Seconds -> audio steps, rounded to the nearest step (half away from zero)."""
        return _round_away(seconds * self.audio_hz)

    def lengths(self, video: torch.Tensor, audio: torch.Tensor) -> "ClipLengths":
        """The clip lengths of a batch (checks the layouts)."""
        _check_layout(video, audio, self)
        return ClipLengths(int(video.shape[self.video_axis]), int(audio.shape[self.audio_axis]), int(video.shape[0]))


class ClipLengths(NamedTuple):
    """Steps along each stream's time axis, and the batch size (a swap needs another row)."""

    video_steps: int
    audio_steps: int
    batch: int = 2


def _round_away(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _steps(values: torch.Tensor, hz: float) -> torch.Tensor:
    """[B] float64 seconds -> [B] int64 steps, nearest step, half away from zero (the same as ``_round_away``)."""
    return (torch.sign(values) * torch.floor(values.abs() * hz + 0.5)).long()


def _check_layout(video: torch.Tensor, audio: torch.Tensor, axes: TimeAxes) -> None:
    for name, x, axis in (("video", video, axes.video_axis), ("audio", audio, axes.audio_axis)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, received {type(x).__name__}")
        if x.ndim <= axis:
            raise ValueError(f"{name}: expected a batch with its time axis at dimension {axis} (TimeAxes."
                             f"{name}_axis), received shape {list(x.shape)}")
    if video.shape[0] != audio.shape[0]:
        raise ValueError(f"video and audio: expected the same batch size, received {video.shape[0]} and "
                         f"{audio.shape[0]}")


# ------------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class RuleSpec:
    """One rule: ``fn(video, audio, magnitude, *, axes, generator) -> (video, audio)``.

    family: the ablation group ("shift", "reverse", ...). stream: "audio" or "video", the one it changes.
    unit: the magnitude's unit, "seconds", "ratio", "count" or "none" (no magnitude).
    directional: a range magnitude also draws a direction (the sign of a shift, faster or slower for a tempo).
    needs_batch: draws from other rows, so ``build_negatives`` runs it on the whole batch and keeps its rows.
    """

    name: str
    family: str
    stream: str
    unit: str
    fn: Callable
    directional: bool = False
    needs_batch: bool = False
    description: str = ""


def _rand(batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """[B] uniform in [0, 1), float64, drawn on the generator's device and returned on the CPU."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(batch, generator=generator, device=device, dtype=torch.float64).cpu()


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _describe(magnitude) -> str:
    if magnitude is None:
        return "none"
    if isinstance(magnitude, torch.Tensor):
        values = magnitude.flatten().tolist()
        return "[" + ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "") + "]"
    if isinstance(magnitude, (tuple, list)):
        return "[" + ", ".join(f"{v:g}" for v in magnitude) + "]"
    return f"{magnitude:g}"


def validate_magnitude(rule: str, magnitude):
    """Check a magnitude's form for a rule and normalise it: None, a float / int, or a ``(low, high)`` tuple.

    Raises ValueError naming the rule and what it expects. (Whether it fits a clip is ``why_not_applicable``.)
    """
    spec = _spec(rule)
    expected = {
        "none": "no magnitude (None)",
        "seconds": ("seconds: a non-zero number (its sign is the direction: positive delays the audio) or a range "
                    "[low, high] with 0 <= low <= high (the sign drawn at random)") if spec.directional else
                   "seconds: a positive number or a range [low, high] with 0 < low <= high",
        "ratio": "a speed ratio: a positive number other than 1 (2 = twice as fast) or a range [low, high] with "
                 "1 <= low <= high (faster or slower by that factor, drawn at random)",
        "count": "a whole number of segments >= 2 or a range [low, high] of whole numbers with 2 <= low <= high",
    }[spec.unit]
    bad = ValueError(f"{rule}: expected {expected}, got {magnitude!r}")
    if spec.unit == "none":
        if magnitude is not None:
            raise bad
        return None
    if isinstance(magnitude, (tuple, list)):
        if len(magnitude) != 2 or not all(_is_number(v) and math.isfinite(v) for v in magnitude):
            raise bad
        low, high = magnitude
        if low > high:
            raise bad
        if spec.unit == "seconds" and (low < 0 if spec.directional else low <= 0):
            raise bad
        if spec.unit == "ratio" and low < 1:
            raise bad
        if spec.unit == "count":
            if low != int(low) or high != int(high) or low < 2:
                raise bad
            return (int(low), int(high))
        return (float(low), float(high))
    if not _is_number(magnitude) or not math.isfinite(magnitude):
        raise bad
    if spec.unit == "seconds" and (magnitude == 0 if spec.directional else magnitude <= 0):
        raise bad
    if spec.unit == "ratio" and (magnitude <= 0 or magnitude == 1):
        raise bad
    if spec.unit == "count":
        if magnitude != int(magnitude) or magnitude < 2:
            raise bad
        return int(magnitude)
    return float(magnitude)


def draw_magnitudes(rule: str, magnitude, batch: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """Concrete per-row magnitudes ``[B]`` (float64, CPU; None for a rule without one).

    A number is repeated; a range is drawn uniformly per row (whole numbers for counts), then for a directional
    rule given a range the direction too (a random sign for a shift, the ratio or its inverse for a tempo).
    A tensor ``[B]`` is taken as is. The generator is consumed the same way whatever the values, so the draws of
    later rules do not depend on earlier magnitudes.
    """
    spec = _spec(rule)
    if isinstance(magnitude, torch.Tensor):
        values = magnitude.detach().to("cpu", torch.float64).flatten()
        if values.numel() != batch:
            raise ValueError(f"{rule}: expected one magnitude per row ({batch}), got a tensor of shape "
                             f"{list(magnitude.shape)}")
        for value in set(values.tolist()):
            validate_magnitude(rule, int(value) if spec.unit == "count" and value == int(value) else value)
        return values
    magnitude = validate_magnitude(rule, magnitude)
    if magnitude is None:
        return None
    if not isinstance(magnitude, tuple):
        return torch.full((batch,), float(magnitude), dtype=torch.float64)
    low, high = magnitude
    u = _rand(batch, generator)
    if spec.unit == "count":
        return (low + torch.floor(u * (high - low + 1))).clamp(max=high)
    values = low + u * (high - low)
    if spec.directional:
        flip = _rand(batch, generator) < 0.5
        values = torch.where(flip, -values, values) if spec.unit == "seconds" else torch.where(flip, 1 / values, values)
    return values


# --------------------------------------------------------------------------------------------- applicability

def _requirement(rule: str, values: torch.Tensor | None, lengths: ClipLengths,
                 axes: TimeAxes) -> tuple[torch.Tensor, str]:
    """(bad [N] bool per magnitude value, the requirement in words)."""
    F, L = lengths.video_steps, lengths.audio_steps
    one = torch.zeros(1 if values is None else values.numel(), dtype=torch.bool)
    if rule == "audio_shift":
        n = _steps(values, axes.audio_hz).abs()
        return (n < 1) | (n >= L), (f"a shift must move the audio by at least one step (1/{axes.audio_hz:g} s) "
                                    f"and by less than the clip")
    if rule in ("audio_reversal", "video_reversal"):
        steps = L if rule == "audio_reversal" else F
        return one | (steps < 2), "reversing needs at least two steps"
    if rule == "audio_tempo":
        # The last output step reads input position (L - 1) * ratio: it must move by at least one step.
        return (L < 2) | ((L - 1) * (values - 1).abs() < 1 - 1e-9), \
            "a tempo change must move the end of the clip by at least one audio step"
    if rule == "segment_shuffle":
        return (values < 2) | (values > L), "each of the k >= 2 segments needs at least one audio step"
    if rule == "audio_swap":
        return one | (lengths.batch < 2), "swapping needs another clip in the batch (batch size >= 2)"
    if rule == "video_freeze":
        n = _steps(values, axes.video_hz)
        return (n < 2) | (n > F), (f"a freeze must span at least two video steps ({2 / axes.video_hz:g} s; one step "
                                   f"repeats a frame over itself) and fit in the clip")
    if rule == "audio_mute":
        n = _steps(values, axes.audio_hz)
        return (n < 1) | (n > L), "a muted span must cover at least one audio step and fit in the clip"
    if rule == "repeat_span":
        n = _steps(values, axes.audio_hz)
        return (n < 1) | (2 * n > L), "a repeated span and the span it covers (twice its length) must fit in the clip"
    raise KeyError(rule)


def _clip_words(spec: RuleSpec, lengths: ClipLengths, axes: TimeAxes) -> str:
    if spec.name == "audio_swap":
        return f"a batch of {lengths.batch}"
    steps, hz = ((lengths.video_steps, axes.video_hz) if spec.stream == "video"
                 else (lengths.audio_steps, axes.audio_hz))
    return f"a clip of {steps} {spec.stream} steps ({steps / hz:.3g} s at {hz:g} steps/s)"


def _range_values(spec: RuleSpec, magnitude) -> torch.Tensor | None:
    """Every extreme a magnitude can take; all requirements are monotone in the magnitude, so they cover a range."""
    if magnitude is None:
        return None
    if isinstance(magnitude, tuple):
        low, high = magnitude
        values = [low, high]
        if spec.directional and spec.unit == "ratio":
            values += [1 / low, 1 / high]
        return torch.tensor(values, dtype=torch.float64)
    return torch.tensor([magnitude], dtype=torch.float64)


def why_not_applicable(rule: str, magnitude, lengths: ClipLengths, axes: TimeAxes) -> str | None:
    """None when every value ``magnitude`` can take applies to a clip of ``lengths``; else the reason, in words."""
    spec = _spec(rule)
    if isinstance(magnitude, torch.Tensor):
        values = magnitude.detach().to("cpu", torch.float64).flatten()
    else:
        values = _range_values(spec, validate_magnitude(rule, magnitude))
    bad, requirement = _requirement(rule, values, lengths, axes)
    if not bool(bad.any()):
        return None
    unit = "" if spec.unit in ("none", "count") else f" {spec.unit}"
    return (f"{rule}: magnitude {_describe(magnitude)}{unit} cannot apply to {_clip_words(spec, lengths, axes)}: "
            f"{requirement}")


def applicable(rule: str, magnitude, lengths: ClipLengths, axes: TimeAxes) -> bool:
    """Whether ``rule`` with every value of ``magnitude`` (a number or a range) applies to a clip of ``lengths``."""
    return why_not_applicable(rule, magnitude, lengths, axes) is None


def _prepare(rule: str, video: torch.Tensor, audio: torch.Tensor, magnitude, axes: TimeAxes,
             generator: torch.Generator | None) -> tuple[torch.Tensor | None, ClipLengths]:
    """Check the layout, draw per-row magnitudes and check that every row's applies."""
    if not isinstance(axes, TimeAxes):
        raise ValueError(f"{rule}: axes: expected a TimeAxes, received {type(axes).__name__}")
    lengths = axes.lengths(video, audio)
    values = draw_magnitudes(rule, magnitude, lengths.batch, generator)
    spec = _spec(rule)
    bad, requirement = _requirement(rule, values, lengths, axes)
    if bool(bad.any()):
        shown = magnitude if values is None else values[bad.nonzero()[0, 0]].item()
        unit = "" if spec.unit in ("none", "count") else f" {spec.unit}"
        raise NegativeRuleError(f"{rule}: magnitude {_describe(shown)}{unit} cannot apply to "
                                f"{_clip_words(spec, lengths, axes)}: {requirement}")
    return values, lengths


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
    u = _rand(span_steps.numel(), generator)
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

def audio_shift(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Audio shifted in time by ``magnitude`` seconds (positive: the sound comes later than the picture).

    Circular: out[t] = audio[(t - steps) mod La]. video [B, ...] unchanged, audio [B, ...] -> same shape.
    """
    values, lengths = _prepare("audio_shift", video, audio, magnitude, axes, generator)
    steps = _steps(values, axes.audio_hz).to(audio.device)[:, None]   # [B, 1]
    index = (_time(lengths.audio_steps, audio.device) - steps) % lengths.audio_steps
    return video, _gather_time(audio, axes.audio_axis, index)


def audio_reversal(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Audio played backwards (an involution). No magnitude."""
    _prepare("audio_reversal", video, audio, magnitude, axes, generator)
    return video, audio.flip(axes.audio_axis)


def video_reversal(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Video played backwards (an involution). No magnitude."""
    _prepare("video_reversal", video, audio, magnitude, axes, generator)
    return video.flip(axes.video_axis), audio


def audio_tempo(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Audio re-timed by a speed ratio around its start: out[t] = audio[t * ratio] (2 = twice as fast).

    Linear interpolation between neighbouring steps; the length stays La: a slower clip is cropped, a faster one
    wraps around to its start (as ``audio_shift`` does, so the loser gains no silence).
    """
    values, lengths = _prepare("audio_tempo", video, audio, magnitude, axes, generator)
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


def segment_shuffle(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """Audio cut into k near-equal contiguous segments, put back in a random order that is not the identity."""
    values, lengths = _prepare("segment_shuffle", video, audio, magnitude, axes, generator)
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
        keys = _rand(B * k_max, generator).view(B, k_max)
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
    _, lengths = _prepare("audio_swap", video, audio, magnitude, axes, generator)
    B = lengths.batch
    # A random cycle through all rows (donor of cycle[i] = cycle[i + 1]) is always a derangement.
    device = generator.device if generator is not None else torch.device("cpu")
    cycle = torch.randperm(B, generator=generator, device=device).cpu()
    donor = torch.empty_like(cycle)
    donor[cycle] = cycle.roll(-1)
    return video, audio.index_select(0, donor.to(audio.device))


def video_freeze(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """A span of ``magnitude`` seconds of video frozen on its first step, at a random start. Audio unchanged."""
    values, lengths = _prepare("video_freeze", video, audio, magnitude, axes, generator)
    span = _steps(values, axes.video_hz)                               # [B] on CPU
    start = _starts(span, lengths.video_steps - span, generator, video.device)
    span = span.to(video.device)[:, None]
    t = _time(lengths.video_steps, video.device)
    index = torch.where((t >= start) & (t < start + span), start, t)
    return _gather_time(video, axes.video_axis, index), audio


def audio_mute(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """A span of ``magnitude`` seconds of audio replaced by the silence (``axes.audio_silence``), at a random start."""
    values, lengths = _prepare("audio_mute", video, audio, magnitude, axes, generator)
    span = _steps(values, axes.audio_hz)
    start = _starts(span, lengths.audio_steps - span, generator, audio.device)
    span = span.to(audio.device)[:, None]
    t = _time(lengths.audio_steps, audio.device)
    inside = _along((t >= start) & (t < start + span), audio, axes.audio_axis)
    return video, torch.where(inside, _silence(audio, axes), audio)


def repeat_span(video, audio, magnitude=None, *, axes: TimeAxes, generator=None):
    """A span of ``magnitude`` seconds of audio played twice: it overwrites the span that follows it."""
    values, lengths = _prepare("repeat_span", video, audio, magnitude, axes, generator)
    span = _steps(values, axes.audio_hz)
    start = _starts(span, lengths.audio_steps - 2 * span, generator, audio.device)
    span = span.to(audio.device)[:, None]
    t = _time(lengths.audio_steps, audio.device)
    index = torch.where((t >= start + span) & (t < start + 2 * span), t - span, t)
    return video, _gather_time(audio, axes.audio_axis, index)


RULES: dict[str, RuleSpec] = {spec.name: spec for spec in (
    RuleSpec("audio_swap", "swap", "audio", "none", audio_swap, needs_batch=True,
             description="the audio of another clip of the batch"),
    RuleSpec("audio_reversal", "reverse", "audio", "none", audio_reversal, description="audio played backwards"),
    RuleSpec("video_reversal", "reverse", "video", "none", video_reversal, description="video played backwards"),
    RuleSpec("audio_shift", "shift", "audio", "seconds", audio_shift, directional=True,
             description="audio shifted in time (circularly)"),
    RuleSpec("segment_shuffle", "shuffle", "audio", "count", segment_shuffle,
             description="audio cut into k segments put back in another order"),
    RuleSpec("audio_tempo", "tempo", "audio", "ratio", audio_tempo, directional=True,
             description="audio sped up or slowed down"),
    RuleSpec("audio_mute", "mute", "audio", "seconds", audio_mute, description="a span of audio silenced"),
    RuleSpec("video_freeze", "freeze", "video", "seconds", video_freeze, description="a span of video frozen"),
    RuleSpec("repeat_span", "repeat", "audio", "seconds", repeat_span,
             description="a span of audio repeated over the next one"),
)}

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(spec.family for spec in RULES.values()))


def _spec(rule: str) -> RuleSpec:
    try:
        return RULES[rule]
    except (KeyError, TypeError):
        raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}") from None


# ------------------------------------------------------------------------------------------------ batches

class Negatives(NamedTuple):
    video: torch.Tensor          # [B, ...] like the input video (the input itself when no row changed it)
    audio: torch.Tensor          # [B, ...] like the input audio
    rules: list[str]             # the rule of each row


PlanEntry = tuple[str, object]   # (rule name, magnitude: None, a number, or a (low, high) range)


def build_negatives(video: torch.Tensor, audio: torch.Tensor, axes: TimeAxes,
                    plan: Sequence[PlanEntry | str] | Callable, generator: torch.Generator | None) -> Negatives:
    """Distort each row of a batch by its own rule; each rule runs once, on all of its rows.

    video [B, ...], audio [B, ...] laid out as ``axes`` says. plan: one ``(rule, magnitude)`` (or a bare rule name
    for rules without a magnitude) per row, or a sampler ``plan(batch, generator, lengths, axes)`` returning that
    list (``Curriculum.sampler(step, total_steps)``). Swap donors are drawn from the whole batch (any other row's
    clean audio), so one swap row in a batch of two or more is fine.
    Returns ``Negatives(video, audio, rules)``; a stream no row changed is returned as the input tensor itself.
    """
    lengths = axes.lengths(video, audio)
    B = lengths.batch
    if callable(plan):
        plan = plan(B, generator, lengths, axes)
    plan = [(entry, None) if isinstance(entry, str) else tuple(entry) for entry in plan]
    if len(plan) != B:
        raise ValueError(f"build_negatives plan: expected one (rule, magnitude) per row ({B}), got {len(plan)}")
    for row, (rule, _) in enumerate(plan):
        if rule not in RULES:
            raise ValueError(f"build_negatives plan[{row}]: expected a rule among {', '.join(RULES)}, got {rule!r}")
    out_video, out_audio = video, audio
    for name, spec in RULES.items():                                   # registry order: draws are reproducible
        rows = [row for row, (rule, _) in enumerate(plan) if rule == name]
        if not rows:
            continue
        values = _plan_magnitudes(spec, [plan[row][1] for row in rows], generator)
        picked_video = torch.tensor(rows, device=video.device)
        picked_audio = picked_video.to(audio.device)
        if spec.needs_batch:
            # The donors are any other row of the batch; draw over all rows and keep this rule's.
            if values is not None:
                values = torch.zeros(B, dtype=torch.float64).index_copy(0, torch.tensor(rows), values)
            new_video, new_audio = spec.fn(video, audio, values, axes=axes, generator=generator)
            new_video, new_audio = new_video.index_select(0, picked_video), new_audio.index_select(0, picked_audio)
        else:
            new_video, new_audio = spec.fn(video.index_select(0, picked_video), audio.index_select(0, picked_audio),
                                           values, axes=axes, generator=generator)
        # Copy a stream only once some row changes it; then write each rule's rows in place.
        if spec.stream == "video":
            out_video = out_video.clone() if out_video is video else out_video
            out_video.index_copy_(0, picked_video, new_video)
        else:
            out_audio = out_audio.clone() if out_audio is audio else out_audio
            out_audio.index_copy_(0, picked_audio, new_audio)
    return Negatives(out_video, out_audio, [rule for rule, _ in plan])


def _plan_magnitudes(spec: RuleSpec, magnitudes: list, generator) -> torch.Tensor | None:
    """Per-row magnitudes of one rule's rows: numbers kept, ranges drawn (row by row: a plan is a short list)."""
    if spec.unit == "none":
        for magnitude in magnitudes:
            validate_magnitude(spec.name, magnitude)
        return None
    values = [draw_magnitudes(spec.name, m, 1, generator) if isinstance(m, (tuple, list))
              else torch.tensor([float(validate_magnitude(spec.name, m))], dtype=torch.float64)
              for m in magnitudes]
    return torch.cat(values)
