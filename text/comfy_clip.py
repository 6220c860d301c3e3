"""A ComfyUI CLIP as a SyncAV text encoder, and the check that a file is the UMT5-XXL Wan's CLIP loader takes.

Nothing here imports ComfyUI: a CLIP is anything with ``tokenize`` and ``encode_from_tokens``. Both ways a prompt
reaches a ComfyUI CLIP go through ``ComfyClipTextEncoder``: a CLIP connected to SyncAV Text
Encode's ``clip`` input, and, inside ComfyUI, the Ovi presets' own text encoder, which loads
``models/text_encoders/umt5_xxl_fp16.safetensors`` as Load CLIP with type ``wan`` would (``load_umt5_xxl_clip``).
Encoding is ComfyUI CLIP Text Encode's: ``clip.tokenize`` then ``clip.encode_from_tokens``. ComfyUI's Wan UMT5-XXL
returns ``cond`` [1, >=512, 4096] with the rows past the prompt zeroed (Wan's convention, which Ovi was trained
with), so the prompt's length, its closing ``</s>`` included, is the last non-zero row.
"""

from __future__ import annotations

import logging
import re

import torch

from ..files.safetensors_io import read_header
from .interface import EncodedText, TextEncoder

log = logging.getLogger(__name__)

# ComfyUI takes a file for UMT5-XXL / T5-XXL when it has this key (24 encoder blocks, gated feed-forward layers);
# its last axis is the model width.
UMT5_XXL_LAST_BLOCK_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"
# UMT5 has a relative attention bias in every block, T5 (Flux's and SD3's t5xxl) only in the first.
UMT5_SECOND_BIAS_KEY = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
_ENCODER_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")


class ComfyClipTextEncoder(TextEncoder):
    """Prompts -> EncodedText [B, max_length, dim] (float32, on the CPU) with a ComfyUI CLIP.

    ``clip``: anything with ComfyUI CLIP's ``tokenize(text)`` and ``encode_from_tokens(tokens, return_dict=True)``.
    ``dim`` / ``max_length``: the text width and rows the joint model takes. An encoding of another width is refused
    at encode; rows past ``max_length`` are cut (with a warning when the prompt reaches into them).
    ``label``: what errors call the encoder (the node input ``clip``, or the file the CLIP was loaded from).
    """

    def __init__(self, clip, dim: int, max_length: int, label: str = "clip", path: str | None = None):
        if not (callable(getattr(clip, "tokenize", None)) and callable(getattr(clip, "encode_from_tokens", None))):
            raise ValueError(f"{label}: expected a CLIP from ComfyUI's Load CLIP, received {type(clip).__name__}")
        self.clip = clip
        self.dim = int(dim)
        self.max_length = int(max_length)
        self.label = label
        self.path = path            # the file the CLIP was loaded from, for error messages (None: a node input)

    def encode(self, prompts: list[str]) -> EncodedText:
        """prompts (B strings) -> EncodedText: embeddings [B, max_length, dim] float32, rows past each length zero;
        lengths [B]. An empty prompt encodes to its ``</s>`` alone (length 1)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{self.label}: expected a list of prompts, received {type(prompts).__name__}")
        return EncodedText.cat([self._encode_one(prompt) for prompt in prompts])

    def _encode_one(self, text: str) -> EncodedText:
        """text -> EncodedText [1, max_length, dim]."""
        out = self.clip.encode_from_tokens(self.clip.tokenize(text), return_dict=True)
        cond = out["cond"] if isinstance(out, dict) else out[0]
        if not isinstance(cond, torch.Tensor) or cond.dim() != 3 or cond.shape[0] != 1:
            got = list(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"{self.label}: expected an encoding [1, tokens, width], received {got}")
        if cond.shape[2] != self.dim:
            hint = " (Ovi models take Wan's UMT5-XXL: Load CLIP with type wan)" if self.path is None else ""
            raise ValueError(f"{self.label}: encodes {cond.shape[2]}-wide embeddings; this model takes {self.dim}"
                             f"{hint}")
        cond = cond.detach().float().cpu()
        if cond.shape[1] > self.max_length:
            if cond[0, self.max_length:].abs().amax() > 0:
                log.warning("%s: prompt of more than %d tokens truncated: %r", self.label, self.max_length,
                            text[:80])
            cond = cond[:, :self.max_length]
        nonzero_rows = (cond[0].abs().amax(dim=1) > 0).nonzero()
        length = int(nonzero_rows[-1]) + 1 if len(nonzero_rows) else 1
        return EncodedText(cond, torch.tensor([length], dtype=torch.int64)).padded_to(self.max_length)

    def __repr__(self) -> str:
        return f"ComfyClipTextEncoder({self.label}, {self.dim} wide, {self.max_length} rows)"


def check_umt5_xxl_file(path: str, dim: int) -> None:
    """Refuse, from its header alone, a file ComfyUI's Wan CLIP loader would not load as a ``dim``-wide UMT5-XXL
    (it would build another encoder from it, or fail deep inside ComfyUI). Raises ValueError naming the file."""
    header, _ = read_header(path)     # CheckpointError (a ValueError) for a pickle or a truncated file
    if UMT5_XXL_LAST_BLOCK_KEY not in header:
        blocks = {int(m.group(1)) for m in map(_ENCODER_BLOCK.match, header) if m}
        found = f"{max(blocks) + 1} encoder blocks" if blocks else "no encoder.block.* keys"
        raise ValueError(f"{path}: not UMT5-XXL, Wan's text encoder (expected 24 encoder blocks with gated "
                         f"feed-forward layers, as umt5_xxl_fp16.safetensors has them), found {found}")
    if UMT5_SECOND_BIAS_KEY not in header:
        raise ValueError(f"{path}: a T5-XXL encoder (as Flux and SD3 use), not UMT5-XXL, Wan's text encoder "
                         "(its blocks have no relative attention bias of their own)")
    width = header[UMT5_XXL_LAST_BLOCK_KEY]["shape"][-1]
    if width != dim:
        raise ValueError(f"{path} gives {width}-wide embeddings, expected {dim}")
