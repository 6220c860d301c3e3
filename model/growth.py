"""Deepening a trained joint model without changing what it computes (block expansion).

A network trained to a plateau can be given more depth without starting again: each new fusion block is a copy of
the block before it whose output projections (self-attention, cross-attention, feed-forward; both towers) are zero.
A Wan block adds its parts to the residual stream, so such a block passes its input through unchanged and the
deeper model starts as exactly the trained one; its copied inner weights give the new block a trained starting
point as soon as its outputs grow (LLaMA Pro's block expansion, applied to both towers of each fusion block).
"""

from __future__ import annotations

import math

import torch

from .joint import JointModel

# Per tower block: the projections whose outputs a block adds to the residual stream.
OUTPUT_PROJECTIONS = ("self_attn.o", "cross_attn.o", "ffn.2")


def expansion_sources(old_blocks: int, new_blocks: int) -> list[int]:
    """For each block of the deeper model, the block of the trained one it copies: the copies spread evenly and
    follow their source (4 -> 6: [0, 1, 1, 2, 3, 3]; 4 -> 8: [0, 0, 1, 1, 2, 2, 3, 3])."""
    if not 1 <= old_blocks <= new_blocks:
        raise ValueError(f"expansion_sources: can only deepen ({old_blocks} blocks -> {new_blocks}); expected "
                         f"1 <= old <= new")
    return [math.ceil((j + 1) * old_blocks / new_blocks) - 1 for j in range(new_blocks)]


def deepened_state_dict(model: JointModel, num_blocks: int) -> dict[str, torch.Tensor]:
    """The weights of ``model`` deepened to ``num_blocks`` fusion blocks (``expansion_sources``); the second and
    later copies of a block have zero output projections, so ``JointModel(config.with_num_blocks(num_blocks))``
    loaded with them computes what ``model`` computes."""
    sources = expansion_sources(model.config.num_blocks, num_blocks)
    state = model.state_dict()
    deepened = {k: v.clone() for k, v in state.items() if ".blocks." not in k}
    for tower in ("video_model", "audio_model"):
        for new_index, source in enumerate(sources):
            is_copy = new_index > 0 and sources[new_index - 1] == source
            prefix = f"{tower}.blocks.{source}."
            for key, tensor in state.items():
                if not key.startswith(prefix):
                    continue
                name = key[len(prefix):]
                value = tensor.clone()
                if is_copy and name.rsplit(".", 1)[0] in OUTPUT_PROJECTIONS:
                    value.zero_()
                deepened[f"{tower}.blocks.{new_index}.{name}"] = value
    return deepened


def deepen(model: JointModel, num_blocks: int) -> JointModel:
    """A new ``JointModel`` of ``num_blocks`` fusion blocks computing what ``model`` computes (module docstring)."""
    deeper = JointModel(model.config.with_num_blocks(num_blocks))
    deeper.load_state_dict(deepened_state_dict(model, num_blocks))
    return deeper.to(next(model.parameters()).device)
