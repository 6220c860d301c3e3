"""The model passes of a guidance step and the one place they call the joint model.

Six passes exist (guidance/sync_cfg.py says which a step needs and how their outputs combine)::

    J          joint          positive texts, video and audio noisy at their sigmas
    U          negative       negative texts, both noisy (optionally with skip-layer guidance on this pass only)
    D_v        muted_audio    positive texts, video noisy; audio = clean latent of silence at sigma 0
    D_a        static_video   positive texts, audio noisy; video = clean latent of a static video at sigma 0
    D_cut      cross_modal_cut  positive texts, both noisy, the cross-modal attention cut (LTX-2's modality
                              guidance pass): each stream as the model predicts it without the other
    D_alone    audio_alone    positive texts, the audio tower alone (no video tokens, no cross-modal part): the
                              audio anchor at the cost of the small tower only

``evaluate_passes`` runs them as ONE batched forward (the rows of all passes stacked along the batch, pass-major in
``PASS_ORDER``; audio-alone rows come last and carry no video rows) or pass by pass (same math, for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import torch

from ..text.interface import EncodedText


class Pass(str, Enum):
    """The model passes of a guidance step (the symbols of the module docstring)."""

    JOINT = "joint"                       # J
    NEGATIVE = "negative"                 # U
    MUTED_AUDIO = "muted_audio"           # D_v: the video beside muted audio
    STATIC_VIDEO = "static_video"         # D_a: the audio beside a static video
    CROSS_MODAL_CUT = "cross_modal_cut"   # D_cut: both streams, each without the other
    AUDIO_ALONE = "audio_alone"           # D_alone: the audio tower alone


# Order in which passes are planned and stacked in a batched forward: J first (always there), audio-alone rows last
# (the model runs the video tower on the rows before them only).
PASS_ORDER = (Pass.JOINT, Pass.NEGATIVE, Pass.MUTED_AUDIO, Pass.STATIC_VIDEO, Pass.CROSS_MODAL_CUT, Pass.AUDIO_ALONE)
HAS_VIDEO = frozenset(PASS_ORDER) - {Pass.AUDIO_ALONE}


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


class PassRows(NamedTuple):
    """The model inputs of one pass (B rows; ``video`` None for the audio-alone pass)."""

    video: torch.Tensor | None
    audio: torch.Tensor
    sigma_video: torch.Tensor | None
    sigma_audio: torch.Tensor
    text_video: EncodedText | None
    text_audio: EncodedText


def pass_rows(p: Pass, video: torch.Tensor, audio: torch.Tensor, sigma_video: torch.Tensor,
              sigma_audio: torch.Tensor, cond: SyncCFGConditioning) -> PassRows:
    """The model inputs of one pass (B rows): which latents, noise levels and texts each stream gets."""
    text_video, text_audio = cond.positive
    if p in (Pass.JOINT, Pass.CROSS_MODAL_CUT):
        return PassRows(video, audio, sigma_video, sigma_audio, text_video, text_audio)
    if p is Pass.NEGATIVE:
        if cond.negative is None:
            raise ValueError("SyncCFG: the text-negative pass needs negative texts, none were given")
        return PassRows(video, audio, sigma_video, sigma_audio, *cond.negative)
    if p is Pass.MUTED_AUDIO:
        if cond.silence is None:
            raise ValueError("SyncCFG: the muted-audio pass needs the silence latent, none was given")
        # The anchor is clean, so it is given at noise level 0 (same shape as the noisy stream's sigma).
        return PassRows(video, cond.silence, sigma_video, torch.zeros_like(sigma_audio), text_video, text_audio)
    if p is Pass.STATIC_VIDEO:
        if cond.static_video is None:
            raise ValueError("SyncCFG: the static-video pass needs the static-video latent, none was given")
        return PassRows(cond.static_video, audio, torch.zeros_like(sigma_video), sigma_audio, text_video, text_audio)
    if p is Pass.AUDIO_ALONE:
        return PassRows(None, audio, None, sigma_audio, None, text_audio)
    raise ValueError(f"unknown pass {p!r}")


def _forward(model, video_rows: list[PassRows], audio_rows: list[PassRows], cut: list[bool], audio_alone: int,
             skip_blocks=(), skip_rows=None):
    """One model call over the stacked rows; returns (velocity_video [Bv...], velocity_audio [B...])."""
    kwargs = {}
    if skip_blocks:
        kwargs["skip_blocks"] = tuple(skip_blocks)
        if skip_rows is not None:
            kwargs["skip_rows"] = skip_rows
    if audio_alone:
        kwargs["audio_alone_rows"] = audio_alone
    if any(cut):
        batch = video_rows[0].video.shape[0]
        kwargs["cross_modal_rows"] = torch.tensor([not c for c in cut], device=video_rows[0].video.device
                                                  ).repeat_interleave(batch)
    text_video = EncodedText.cat([r.text_video for r in video_rows])
    text_audio = EncodedText.cat([r.text_audio for r in audio_rows])
    return model(torch.cat([r.video for r in video_rows]), torch.cat([r.audio for r in audio_rows]),
                 torch.cat([r.sigma_video for r in video_rows]), torch.cat([r.sigma_audio for r in audio_rows]),
                 text_video.embeddings, text_audio.embeddings, text_video_lengths=text_video.lengths,
                 text_audio_lengths=text_audio.lengths, **kwargs)


def evaluate_passes(model, passes: tuple[Pass, ...], video: torch.Tensor, audio: torch.Tensor,
                    sigma_video: torch.Tensor, sigma_audio: torch.Tensor, cond: SyncCFGConditioning,
                    batched: bool = True) -> dict[Pass, tuple[torch.Tensor | None, torch.Tensor]]:
    """Run the model for ``passes`` (in ``PASS_ORDER``) and return pass -> (velocity_video, velocity_audio), each
    with B rows (velocity_video None for the audio-alone pass).

    video [B, Cv, F, H, W]; audio [B, La, Ca]; sigma_* [B] (or [B, tokens]); cond at batch B.
    batched=True: ONE forward over the rows of every pass, pass-major; skip-layer guidance goes to the negative rows
        alone through ``skip_rows``. batched=False: one forward of B rows per pass.
    """
    if list(passes) != sorted(passes, key=PASS_ORDER.index):
        raise ValueError(f"evaluate_passes: passes must come in PASS_ORDER, got {[p.value for p in passes]}")
    batch = audio.shape[0]
    slg = tuple(cond.slg_blocks)
    rows = {p: pass_rows(p, video, audio, sigma_video, sigma_audio, cond) for p in passes}
    groups = [[p] for p in passes] if not batched else [list(passes)]
    outputs = {}
    for group in groups:
        with_video = [p for p in group if p in HAS_VIDEO]
        if not with_video:   # a lone audio-alone pass (pass by pass): give the model the joint rows' video shape
            with_video_rows = [pass_rows(Pass.JOINT, video, audio, sigma_video, sigma_audio, cond)]
            alone = [rows[p] for p in group]
            out_video, out_audio = _forward(model, with_video_rows, with_video_rows + alone, [True], batch)
            outputs[group[0]] = (None, out_audio[batch:])
            continue
        skip_rows = None
        if slg and Pass.NEGATIVE in group and len(group) > 1:
            skip_rows = torch.tensor([p is Pass.NEGATIVE for p in group], device=audio.device).repeat_interleave(batch)
        skip = slg if Pass.NEGATIVE in group else ()
        alone = [p for p in group if p not in HAS_VIDEO]
        out_video, out_audio = _forward(model, [rows[p] for p in with_video], [rows[p] for p in group],
                                        [p is Pass.CROSS_MODAL_CUT for p in with_video], len(alone) * batch,
                                        skip_blocks=skip, skip_rows=skip_rows)
        videos = out_video.split(batch)
        for k, (p, a) in enumerate(zip(group, out_audio.split(batch))):
            outputs[p] = (videos[k] if p in HAS_VIDEO else None, a)
    return outputs
