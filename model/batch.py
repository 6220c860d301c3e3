"""The batches the trainers read: one clip per row (AVBatch) and preference pairs (PreferenceBatch).

They live with the model, below data and training, so that data sources build them without importing a loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class AVBatch(NamedTuple):
    video: torch.Tensor             # [B, Cv, F, H, W] clean video latents
    audio: torch.Tensor             # [B, La, Ca] clean audio latents
    text_video: torch.Tensor        # [B, Lt, Dt] zero-padded
    text_audio: torch.Tensor        # [B, Lt, Dt]
    text_video_lengths: torch.Tensor | None = None   # [B]
    text_audio_lengths: torch.Tensor | None = None   # [B]

    def to(self, device) -> "AVBatch":
        return AVBatch(*(None if t is None else t.to(device) for t in self))

    def take(self, rows: slice) -> "AVBatch":
        """The rows ``rows`` of every field."""
        return AVBatch(*(None if t is None else t[rows] for t in self))


class PreferenceBatch(NamedTuple):
    """A batch of pairs for the training loop: row i of ``winner`` is preferred to row i of ``loser``."""

    winner: AVBatch
    loser: AVBatch
    rules: tuple[str, ...] | None = None     # [B] name of the rule that made each loser (per-rule logs)

    def to(self, device) -> "PreferenceBatch":
        return PreferenceBatch(self.winner.to(device), self.loser.to(device), self.rules)
