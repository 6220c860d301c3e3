"""SyncCFG: text guidance plus synchronization guidance for joint audio-video flow matching (Harmony, 2025).

Besides classifier-free guidance on the text, each stream is pushed away from what the model predicts when the
*other* stream carries no temporal information (its sync anchor)::

    v_video = J_v + (g_text_v - 1)(J_v - U_v) + (g_sync_v - 1)(J_v - A_v)
    v_audio = J_a + (g_text_a - 1)(J_a - U_a) + (g_sync_a - 1)(J_a - A_a)

J is the joint pass, U the text-negative pass (guidance/passes.py lists every pass). Which pass gives the anchors
A_v, A_a is the guidance's ``anchors`` choice (``SyncAnchors``), from the full cost of Harmony's to a fraction:

    harmony          A_v = video beside muted audio, A_a = audio beside a static video      J + U + 2 full passes
    audio_alone      A_v = video beside muted audio, A_a = the audio tower alone            J + U + 1 full pass
                                                                                            + the small tower
    cross_modal_cut  A_v, A_a = one pass with the cross-modal attention cut (LTX-2)         J + U + 1 full pass

Only the anchored stream's output of an anchor pass is used. A pass none of whose scales differs from 1 is not run,
nor are the anchor passes outside the sync interval, so a step with every scale 1 is one plain joint forward.

The module splits into pure pieces: ``SyncCFGGuidance.scales_at`` / ``scales`` (the effective scales of a step),
``plan_passes`` (which passes those scales need) and ``combine_velocities`` (pass outputs + scales -> guided
velocities); ``guidance.passes.evaluate_passes`` is the only part that calls the model, either as ONE batched
forward (the rows of all passes concatenated along the batch) or pass by pass (same math, for tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, NamedTuple

import torch

from .passes import PASS_ORDER, Pass, SyncCFGConditioning, evaluate_passes  # noqa: F401 (re-exported)


class SyncAnchors(str, Enum):
    """Which passes anchor the sync terms (module docstring)."""

    HARMONY = "harmony"
    AUDIO_ALONE = "audio_alone"
    CROSS_MODAL_CUT = "cross_modal_cut"


# The anchors a guidance gets when it names none (docs/results.md, "Sync anchors", has the measurement).
DEFAULT_ANCHORS = SyncAnchors.AUDIO_ALONE
# The pass that gives each stream's anchor: anchors -> (pass for A_v, pass for A_a).
ANCHOR_PASSES = {
    SyncAnchors.HARMONY: (Pass.MUTED_AUDIO, Pass.STATIC_VIDEO),
    SyncAnchors.AUDIO_ALONE: (Pass.MUTED_AUDIO, Pass.AUDIO_ALONE),
    SyncAnchors.CROSS_MODAL_CUT: (Pass.CROSS_MODAL_CUT, Pass.CROSS_MODAL_CUT),
}


class StepScales(NamedTuple):
    """Guidance scales in effect at one step (sync scales are 1 outside the sync interval), and the anchors."""

    text_video: float
    text_audio: float
    sync_video: float
    sync_audio: float
    anchors: SyncAnchors = DEFAULT_ANCHORS


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SyncCFGGuidance:
    """Guidance settings of a SyncCFG sampling run.

    text_scale_*: classifier-free guidance on the text, per modality (1 = off).
    sync_scale_*: synchronization guidance, per modality (1 = off): each stream pushed away from its sync anchor.
    anchors: which passes give the sync anchors (``SyncAnchors``; module docstring).
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
    anchors: SyncAnchors = DEFAULT_ANCHORS

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
        try:
            anchors = SyncAnchors(self.anchors)
        except ValueError:
            raise ValueError(f"SyncCFGGuidance.anchors: expected one of {[a.value for a in SyncAnchors]}, got "
                             f"{self.anchors!r}") from None
        object.__setattr__(self, "anchors", anchors)
        # Normalise lists from UIs/JSON to tuples so the dataclass stays hashable and comparable.
        object.__setattr__(self, "sync_interval", (float(interval[0]), float(interval[1])))
        object.__setattr__(self, "slg_blocks", tuple(sorted(set(blocks))))

    @property
    def needs_negative(self) -> bool:
        """Whether the text-negative pass U can run (then negative texts are required)."""
        return self.text_scale_video != 1 or self.text_scale_audio != 1

    @property
    def needs_anchors(self) -> bool:
        """Whether a sync pass that reads an anchor latent can run (then the silence / static-video latents are
        required; the cross-modal-cut and audio-alone anchors need none)."""
        video_pass, audio_pass = ANCHOR_PASSES[self.anchors]
        latent_passes = (Pass.MUTED_AUDIO, Pass.STATIC_VIDEO)
        return ((self.sync_scale_video != 1 and video_pass in latent_passes)
                or (self.sync_scale_audio != 1 and audio_pass in latent_passes))

    def sync_active(self, step_index: int, total_steps: int) -> bool:
        """Whether step ``step_index`` (0-based) of ``total_steps`` lies in the sync interval ``[start, end)``."""
        # Compare the fraction i/n (correctly rounded) rather than i against start*n: 0.7 * 10 is
        # 7.000000000000001 in floating point, which would wrongly put step 7 inside (0, 0.7).
        start, end = self.sync_interval
        fraction = step_index / total_steps
        return start <= fraction < end

    def scales_at(self, step_index: int, total_steps: int) -> StepScales:
        """The effective scales of one step: the sync scales drop to 1 outside the sync interval."""
        return self.scales(self.sync_active(step_index, total_steps))

    def scales(self, sync_on: bool) -> StepScales:
        """The effective scales with sync guidance on or off (a sampler that keys the interval on sigma decides)."""
        return StepScales(float(self.text_scale_video), float(self.text_scale_audio),
                          float(self.sync_scale_video) if sync_on else 1.0,
                          float(self.sync_scale_audio) if sync_on else 1.0, self.anchors)


def plan_passes(scales: StepScales) -> tuple[Pass, ...]:
    """Passes a step with these scales needs, in ``PASS_ORDER``. J always; the others only if a scale needs them."""
    video_anchor, audio_anchor = ANCHOR_PASSES[SyncAnchors(scales.anchors)]
    needed = {Pass.JOINT}
    if scales.text_video != 1 or scales.text_audio != 1:
        needed.add(Pass.NEGATIVE)
    if scales.sync_video != 1:
        needed.add(video_anchor)
    if scales.sync_audio != 1:
        needed.add(audio_anchor)
    return tuple(p for p in PASS_ORDER if p in needed)


def combine_velocities(outputs: Mapping[Pass, tuple[torch.Tensor | None, torch.Tensor]],
                       scales: StepScales) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided velocities from the outputs of the passes (pure: no model call).

    outputs: pass -> (velocity_video [B, Cv, F, H, W] or None, velocity_audio [B, La, Ca]); must hold every pass
        ``plan_passes(scales)`` lists (extra passes are ignored).
    Returns (v_video, v_audio) per the SyncCFG formula, in float32 (float64 if the model computes in float64).
    A term whose scale is 1 is left out entirely, so a pass that was not run is never read.
    """
    missing = [p.value for p in plan_passes(scales) if p not in outputs]
    if missing:
        raise ValueError(f"combine_velocities: the scales {tuple(scales)} need the passes {missing}, "
                         f"which are missing from the outputs ({[Pass(p).value for p in outputs]})")
    video_anchor, audio_anchor = ANCHOR_PASSES[SyncAnchors(scales.anchors)]
    # Guidance amplifies small differences between passes: combine in float32 at least, even for a bf16 model.
    dtype = torch.promote_types(outputs[Pass.JOINT][0].dtype, torch.float32)
    joint_video, joint_audio = (t.to(dtype) for t in outputs[Pass.JOINT])
    video, audio = joint_video, joint_audio
    if scales.text_video != 1:
        video = video + (scales.text_video - 1) * (joint_video - outputs[Pass.NEGATIVE][0].to(dtype))
    if scales.text_audio != 1:
        audio = audio + (scales.text_audio - 1) * (joint_audio - outputs[Pass.NEGATIVE][1].to(dtype))
    if scales.sync_video != 1:
        video = video + (scales.sync_video - 1) * (joint_video - outputs[video_anchor][0].to(dtype))
    if scales.sync_audio != 1:
        audio = audio + (scales.sync_audio - 1) * (joint_audio - outputs[audio_anchor][1].to(dtype))
    return video, audio


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
