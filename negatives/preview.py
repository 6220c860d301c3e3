"""A preview of the temporal negatives: one negative drawn the way the DPO trainer draws it at a point of training
(same curriculum stage, same latent-level rule), and what it is in words: the rule, its magnitude, the stage."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .build import Negatives, build_negatives
from .curriculum import Curriculum
from .magnitudes import could_draw, magnitude_words
from .rules import RULES
from .time_axes import TimeAxes

__all__ = ["PREVIEW_STEPS", "NegativePreview", "preview_negative"]

PREVIEW_STEPS = 1000          # the preview's progress is a step of a run this long


class NegativePreview(NamedTuple):
    negatives: Negatives      # the whole batch distorted; row 0 is the preview
    rule: str                 # row 0's rule and drawn magnitude
    magnitude: object
    words: str                # "rule: description and magnitude | stage 'name' at progress p (replaying stage ...)"


def _stage_words(curriculum: Curriculum, step: int, rule: str, value) -> str:
    """The active stage at ``step``, and the earlier stage a replayed row came from."""
    stages = curriculum.effective_stages
    current = curriculum.stage_index(step, PREVIEW_STEPS)

    def label(index):
        return repr(stages[index].name or str(index))

    def drawn_from(index):
        return any(c.rule == rule and could_draw(RULES[rule], c.magnitude, value) for c in stages[index].rules)

    words = f"stage {label(current)} at progress {step / PREVIEW_STEPS:.2f}"
    if not drawn_from(current):
        earlier = [i for i in range(len(stages)) if drawn_from(i)]
        if earlier:
            words += f" (replaying stage {label(earlier[-1])})"
    return words


def preview_negative(curriculum: Curriculum, video_codec, audio_codec, video: torch.Tensor, audio: torch.Tensor,
                     progress: float, seed: int) -> NegativePreview:
    """Draw the negatives of a batch of latents at ``progress`` (0..1) of training, as the trainer would.

    video ``[B, Cv, Fv, Hv, Wv]``, audio ``[B, La, Ca]``: latents of these codecs (B >= 2 gives a swap its donor).
    seed: the draw's seed (rule, magnitude, position). Returns the distorted batch, row 0's rule and magnitude,
    and the words for it.
    """
    axes = TimeAxes.of_latents(video_codec, audio_codec, video, audio)
    step = min(round(progress * PREVIEW_STEPS), PREVIEW_STEPS - 1)
    generator = torch.Generator().manual_seed(int(seed))
    plan = curriculum.sample(step, PREVIEW_STEPS, video.shape[0], generator, lengths=axes.lengths(video, audio),
                             axes=axes)
    negatives = build_negatives(video, audio, axes, plan, generator)
    rule, magnitude = plan[0]
    spec = RULES[rule]
    words = (f"{rule}: {spec.description}{magnitude_words(spec, magnitude)} | "
             f"{_stage_words(curriculum, step, rule, magnitude)}")
    return NegativePreview(negatives, rule, magnitude, words)
