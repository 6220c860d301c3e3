"""Text encoder interface: prompts -> zero-padded embeddings the joint model cross-attends to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class EncodedText:
    embeddings: torch.Tensor      # [B, L, D], rows past each prompt's length are zero
    lengths: torch.Tensor         # [B] int64, tokens per prompt

    def to(self, device=None, dtype=None) -> "EncodedText":
        return EncodedText(self.embeddings.to(device=device, dtype=dtype), self.lengths.to(device=device))

    def padded_to(self, rows: int) -> "EncodedText":
        """Zero-pad (or refuse to cut) the embeddings to ``rows`` rows so prompts of a batch stack."""
        b, length, d = self.embeddings.shape
        if length > rows:
            raise ValueError(f"EncodedText: {length} rows do not fit in {rows}")
        if length == rows:
            return self
        pad = self.embeddings.new_zeros(b, rows - length, d)
        return EncodedText(torch.cat([self.embeddings, pad], dim=1), self.lengths)

    @staticmethod
    def cat(items: list["EncodedText"]) -> "EncodedText":
        rows = max(t.embeddings.shape[1] for t in items)
        padded = [t.padded_to(rows) for t in items]
        return EncodedText(torch.cat([t.embeddings for t in padded]), torch.cat([t.lengths for t in padded]))


class TextEncoder(ABC):
    dim: int                      # D, the width of the embeddings
    max_length: int               # longest prompt in tokens; longer prompts are truncated with a warning

    @abstractmethod
    def encode(self, prompts: list[str]) -> EncodedText:
        """Encode a batch of prompts. An empty string is allowed here (it is the usual negative prompt)."""
