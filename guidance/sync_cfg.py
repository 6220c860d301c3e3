"""SyncCFG: text guidance plus synchronization guidance for joint audio-video flow matching (Harmony, 2025).

Besides classifier-free guidance on the text, each stream is pushed away from what the model predicts when the
*other* stream carries no temporal information: the video away from its prediction beside muted audio, the audio
away from its prediction beside a static video. Per step, up to four passes of the joint model::

    J    joint          positive texts, video and audio noisy at their sigmas
    U    negative       negative texts, both noisy (optionally with skip-layer guidance on this pass only)
    D_v  muted_audio    positive texts, video noisy; audio = clean latent of silence at sigma 0
    D_a  static_video   positive texts, audio noisy; video = clean latent of a static video at sigma 0

    v_video = J_v + (g_text_v - 1)(J_v - U_v) + (g_sync_v - 1)(J_v - D_v)
    v_audio = J_a + (g_text_a - 1)(J_a - U_a) + (g_sync_a - 1)(J_a - D_a)

Only D_v's video output and D_a's audio output are used (the anchor stream's own output is a by-product).
A pass none of whose scales differs from 1 is not run, nor are the D passes outside the sync interval, so a
step with every scale 1 is one plain joint forward.

The module splits into three pure pieces: ``SyncCFGGuidance.scales_at`` (the effective scales of a step),
``plan_passes`` (which passes those scales need) and ``combine_velocities`` (pass outputs + scales -> guided
velocities); ``evaluate_passes`` is the only part that calls the model, either as ONE batched forward (the rows of
all passes concatenated along the batch) or pass by pass (same math, one forward per pass, for tests and
benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, NamedTuple

import torch

from ..text.interface import EncodedText


class Pass(str, Enum):
    """The four model passes of a SyncCFG step (the symbols of the formula in the module docstring)."""

    JOINT = "joint"                 # J
    NEGATIVE = "negative"           # U
    MUTED_AUDIO = "muted_audio"     # D_v: drives the video sync term
    STATIC_VIDEO = "static_video"   # D_a: drives the audio sync term


# Order in which passes are planned and stacked in a batched forward (J first: it is always there).
PASS_ORDER = (Pass.JOINT, Pass.NEGATIVE, Pass.MUTED_AUDIO, Pass.STATIC_VIDEO)


class StepScales(NamedTuple):
    """Guidance scales in effect at one step (sync scales are 1 outside the sync interval)."""

    text_video: float
    text_audio: float
    sync_video: float
    sync_audio: float


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SyncCFGGuidance:
    """Guidance settings of a SyncCFG sampling run.

    text_scale_*: classifier-free guidance on the text, per modality (1 = off).
    sync_scale_*: synchronization guidance, per modality (1 = off): video against muted audio, audio against a
        static video.
    sync_interval: ``(start, end)`` fractions of the steps where sync guidance is on; step ``i`` of ``n`` is inside
        when ``start <= i / n < end`` (10 steps, (0.2, 0.6) -> steps 2, 3, 4, 5). ``(0, 1)``: every step.
    slg_blocks: blocks skipped in the text-negative pass U only (skip-layer guidance, like Ovi's ``slg_layer``).
        It acts through the text term, so it has no effect when both text scales are 1 (U is then not run).
    """

    text_scale_video: float = 1.0
    text_scale_audio: float = 1.0
    sync_scale_video: float = 1.0
    sync_scale_audio: float = 1.0
    sync_interval: tuple[float, float] = (0.0, 1.0)
    slg_blocks: tuple[int, ...] = field(default=())

    def __post_init__(self):
        for name in ("text_scale_video", "text_scale_audio", "sync_scale_video", "sync_scale_audio"):
            value = getattr(self, name)
            if not _is_number(value):
                raise ValueError(f"SyncCFGGuidance.{name}: expected a finite number, got {value!r}")
        interval = tuple(self.sync_interval)
        if (len(interval) != 2 or not all(_is_number(v) for v in interval)
                or not 0.0 <= interval[0] <= interval[1] <= 1.0):
            raise ValueError("sync_interval (sync_start / sync_end): expected (start, end) with 0 <= start <= end "
                             f"<= 1, got {self.sync_interval!r}")
        blocks = tuple(self.slg_blocks)
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks):
            raise ValueError(f"SyncCFGGuidance.slg_blocks: expected block indices >= 0, got {self.slg_blocks!r}")
        # Normalise lists from UIs/JSON to tuples so the dataclass stays hashable and comparable.
        object.__setattr__(self, "sync_interval", (float(interval[0]), float(interval[1])))
        object.__setattr__(self, "slg_blocks", tuple(sorted(set(blocks))))

    @property
    def needs_negative(self) -> bool:
        """Whether the text-negative pass U can run (then negative texts are required)."""
        return self.text_scale_video != 1 or self.text_scale_audio != 1

    @property
    def needs_anchors(self) -> bool:
        """Whether a sync pass can run (then the silence / static-video anchor latents are required)."""
        return self.sync_scale_video != 1 or self.sync_scale_audio != 1

    def sync_active(self, step_index: int, total_steps: int) -> bool:
        """Whether step ``step_index`` (0-based) of ``total_steps`` lies in the sync interval ``[start, end)``."""
        # Compare the fraction i/n (correctly rounded) rather than i against start*n: 0.7 * 10 is
        # 7.000000000000001 in floating point, which would wrongly put step 7 inside (0, 0.7).
        start, end = self.sync_interval
        fraction = step_index / total_steps
        return start <= fraction < end

    def scales_at(self, step_index: int, total_steps: int) -> StepScales:
        """The effective scales of one step: the sync scales drop to 1 outside the sync interval."""
        on = self.sync_active(step_index, total_steps)
        return StepScales(float(self.text_scale_video), float(self.text_scale_audio),
                          float(self.sync_scale_video) if on else 1.0, float(self.sync_scale_audio) if on else 1.0)


def plan_passes(scales: StepScales) -> tuple[Pass, ...]:
    """Passes a step with these scales needs, in ``PASS_ORDER``. J always; the others only if a scale needs them."""
    passes = [Pass.JOINT]
    if scales.text_video != 1 or scales.text_audio != 1:
        passes.append(Pass.NEGATIVE)
    if scales.sync_video != 1:
        passes.append(Pass.MUTED_AUDIO)
    if scales.sync_audio != 1:
        passes.append(Pass.STATIC_VIDEO)
    return tuple(passes)


def combine_velocities(outputs: Mapping[Pass, tuple[torch.Tensor, torch.Tensor]],
                       scales: StepScales) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided velocities from the outputs of the passes (pure: no model call).

    outputs: pass -> (velocity_video [B, Cv, F, H, W], velocity_audio [B, La, Ca]); must hold every pass
        ``plan_passes(scales)`` lists (extra passes are ignored).
    Returns (v_video, v_audio) per the SyncCFG formula, in float32 (float64 if the model computes in float64).
    A term whose scale is 1 is left out entirely, so a pass that was not run is never read.
    """
    missing = [p.value for p in plan_passes(scales) if p not in outputs]
    if missing:
        raise ValueError(f"combine_velocities: the scales {tuple(scales)} need the passes {missing}, "
                         f"which are missing from the outputs ({[Pass(p).value for p in outputs]})")
    # Guidance amplifies small differences between passes: combine in float32 at least, even for a bf16 model.
    dtype = torch.promote_types(outputs[Pass.JOINT][0].dtype, torch.float32)
    joint_video, joint_audio = (t.to(dtype) for t in outputs[Pass.JOINT])
    video, audio = joint_video, joint_audio
    if scales.text_video != 1:
        video = video + (scales.text_video - 1) * (joint_video - outputs[Pass.NEGATIVE][0].to(dtype))
    if scales.text_audio != 1:
        audio = audio + (scales.text_audio - 1) * (joint_audio - outputs[Pass.NEGATIVE][1].to(dtype))
    if scales.sync_video != 1:
        video = video + (scales.sync_video - 1) * (joint_video - outputs[Pass.MUTED_AUDIO][0].to(dtype))
    if scales.sync_audio != 1:
        audio = audio + (scales.sync_audio - 1) * (joint_audio - outputs[Pass.STATIC_VIDEO][1].to(dtype))
    return video, audio


@dataclass
class SyncCFGConditioning:
    """Everything a step needs besides the noisy latents, already at the batch size B of the latents.

    positive / negative: (text for the video tower, text for the audio tower), embeddings [B, Lt, Dt] + lengths
        [B]. Build with ``prepare`` so positive and negative share a row count per tower: a batched forward has to
        stack them, and an unmasked model attends to padding rows, so pass-by-pass must see the same padding.
    static_video: [B, Cv, F, H, W] clean latent of a static video (the D_a anchor), or None.
    silence: [B, La, Ca] clean latent of silence (the D_v anchor), or None.
    slg_blocks: blocks skipped in the negative pass.
    """

    positive: tuple[EncodedText, EncodedText]
    negative: tuple[EncodedText, EncodedText] | None = None
    static_video: torch.Tensor | None = None
    silence: torch.Tensor | None = None
    slg_blocks: tuple[int, ...] = ()

    @staticmethod
    def prepare(batch: int, positive, negative=None, static_video=None, silence=None, slg_blocks=(),
                device=None, dtype=None) -> "SyncCFGConditioning":
        """Broadcast batch-1 texts / anchors to ``batch`` rows, pad texts per tower, move to ``device``.

        Anchors are cast to ``dtype`` (the latents' dtype); texts keep theirs (the model casts them).
        """
        def rows(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] not in (1, batch):
                raise ValueError(f"SyncCFGConditioning.prepare: a conditioning tensor has {x.shape[0]} rows, "
                                 f"expected 1 or the batch size {batch}")
            return x if x.shape[0] == batch else x.expand(batch, *x.shape[1:])

        def text_rows(t: EncodedText, width: int) -> EncodedText:
            t = t.padded_to(width)
            return EncodedText(rows(t.embeddings).to(device), rows(t.lengths).to(device))

        texts = [tuple(positive)] + ([tuple(negative)] if negative is not None else [])
        widths = [max(pair[k].embeddings.shape[1] for pair in texts) for k in (0, 1)]
        padded = [tuple(text_rows(pair[k], widths[k]) for k in (0, 1)) for pair in texts]
        anchor = (lambda x: None if x is None else rows(x).to(device=device, dtype=dtype))
        return SyncCFGConditioning(positive=padded[0], negative=padded[1] if negative is not None else None,
                                   static_video=anchor(static_video), silence=anchor(silence),
                                   slg_blocks=tuple(slg_blocks))


class _Rows(NamedTuple):
    video: torch.Tensor
    audio: torch.Tensor
    sigma_video: torch.Tensor
    sigma_audio: torch.Tensor
    text_video: EncodedText
    text_audio: EncodedText


def pass_rows(p: Pass, video: torch.Tensor, audio: torch.Tensor, sigma_video: torch.Tensor,
              sigma_audio: torch.Tensor, cond: SyncCFGConditioning) -> _Rows:
    """The model inputs of one pass (B rows): which latents, noise levels and texts each stream gets."""
    if p is Pass.JOINT:
        return _Rows(video, audio, sigma_video, sigma_audio, *cond.positive)
    if p is Pass.NEGATIVE:
        if cond.negative is None:
            raise ValueError("SyncCFG: the text-negative pass needs negative texts, none were given")
        return _Rows(video, audio, sigma_video, sigma_audio, *cond.negative)
    if p is Pass.MUTED_AUDIO:
        if cond.silence is None:
            raise ValueError("SyncCFG: the muted-audio pass needs the silence latent, none was given")
        # The anchor is clean, so it is given at noise level 0 (same shape as the noisy stream's sigma).
        return _Rows(video, cond.silence, sigma_video, torch.zeros_like(sigma_audio), *cond.positive)
    if p is Pass.STATIC_VIDEO:
        if cond.static_video is None:
            raise ValueError("SyncCFG: the static-video pass needs the static-video latent, none was given")
        return _Rows(cond.static_video, audio, torch.zeros_like(sigma_video), sigma_audio, *cond.positive)
    raise ValueError(f"unknown pass {p!r}")


def _forward(model, rows: _Rows, skip_blocks=(), skip_rows=None):
    kwargs = {}
    if skip_blocks:
        kwargs["skip_blocks"] = tuple(skip_blocks)
        if skip_rows is not None:
            kwargs["skip_rows"] = skip_rows
    return model(rows.video, rows.audio, rows.sigma_video, rows.sigma_audio,
                 rows.text_video.embeddings, rows.text_audio.embeddings,
                 text_video_lengths=rows.text_video.lengths, text_audio_lengths=rows.text_audio.lengths, **kwargs)


def evaluate_passes(model, passes: tuple[Pass, ...], video: torch.Tensor, audio: torch.Tensor,
                    sigma_video: torch.Tensor, sigma_audio: torch.Tensor, cond: SyncCFGConditioning,
                    batched: bool = True) -> dict[Pass, tuple[torch.Tensor, torch.Tensor]]:
    """Run the model for ``passes`` and return pass -> (velocity_video, velocity_audio), each with B rows.

    video [B, Cv, F, H, W]; audio [B, La, Ca]; sigma_* [B] (or [B, tokens]); cond at batch B.
    batched=True: ONE forward over ``len(passes) * B`` rows, pass-major; skip-layer guidance goes to the
        negative rows alone through ``skip_rows``. batched=False: one forward of B rows per pass.
    """
    batch = video.shape[0]
    per_pass = [pass_rows(p, video, audio, sigma_video, sigma_audio, cond) for p in passes]
    slg = tuple(cond.slg_blocks)
    if not batched or len(passes) == 1:
        outputs = {}
        for p, rows in zip(passes, per_pass):
            outputs[p] = _forward(model, rows, skip_blocks=slg if p is Pass.NEGATIVE else ())
        return outputs

    stacked = _Rows(torch.cat([r.video for r in per_pass]), torch.cat([r.audio for r in per_pass]),
                    torch.cat([r.sigma_video for r in per_pass]), torch.cat([r.sigma_audio for r in per_pass]),
                    EncodedText.cat([r.text_video for r in per_pass]),
                    EncodedText.cat([r.text_audio for r in per_pass]))
    skip_rows = None
    if slg and Pass.NEGATIVE in passes:
        skip_rows = torch.tensor([p is Pass.NEGATIVE for p in passes], device=video.device)
        skip_rows = skip_rows.repeat_interleave(batch)
    out_video, out_audio = _forward(model, stacked, skip_blocks=slg if skip_rows is not None else (),
                                    skip_rows=skip_rows)
    return {p: (v, a) for p, v, a in zip(passes, out_video.split(batch), out_audio.split(batch))}


def guided_velocity(model, video: torch.Tensor, audio: torch.Tensor, sigma_video: torch.Tensor,
                    sigma_audio: torch.Tensor, cond: SyncCFGConditioning, scales: StepScales,
                    batched: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One SyncCFG evaluation: plan the passes the scales need, run them, combine.

    Shapes as in ``evaluate_passes``; returns (v_video [B, Cv, F, H, W], v_audio [B, La, Ca]) in float32 or wider.
    """
    passes = plan_passes(scales)
    outputs = evaluate_passes(model, passes, video, audio, sigma_video, sigma_audio, cond, batched=batched)
    return combine_velocities(outputs, scales)


def parse_block_list(text: str, what: str = "slg_blocks", num_blocks: int | None = None) -> tuple[int, ...]:
    """``"1, 2"`` -> (1, 2) (sorted, once each); ``""`` -> (). A ValueError naming ``what`` for anything else, or
    for an index past ``num_blocks`` (the model's block count, when known)."""
    where = f" (this model has blocks 0..{num_blocks - 1})" if num_blocks else ""
    prefix = f"{what}: " if what else ""     # argparse names the option itself
    if not isinstance(text, str):
        raise ValueError(f"{prefix}expected a string of comma-separated block indices, received {type(text).__name__}")
    pieces = [piece.strip() for piece in text.split(",") if piece.strip()]
    if not all(piece.isdigit() for piece in pieces):
        raise ValueError(f"{prefix}expected comma-separated block indices such as '1' or '0, 2'{where}, received "
                         f"{text!r}")
    blocks = tuple(sorted({int(piece) for piece in pieces}))
    out_of_range = [b for b in blocks if num_blocks is not None and b >= num_blocks]
    if out_of_range:
        raise ValueError(f"{prefix}block indices {out_of_range} out of range: this model has blocks "
                         f"0..{num_blocks - 1}, received {text!r}")
    return blocks
