"""The loss function the training loop calls, made from a loss config: the one place that picks the loss.

``make_loss_fn(config)`` returns ``loss_fn(model, batch, generator) -> (loss, logs)`` for ``loop.train``:
* ``FlowLossConfig``: ``flow_loss.av_flow_loss`` on an ``AVBatch`` (the embedded default's training, the SFT
  baseline of the DPO trainer);
* ``DPOConfig``: ``dpo_loss.av_dpo_loss`` on a ``PreferenceBatch``, with per-rule logs for the rules of its losers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..model.batch import AVBatch, PreferenceBatch
from ..runtime.lora import disabled_adapters
from .distributed import RowShard
from .dpo_loss import DPOConfig, ReferenceContext, av_dpo_loss
from .flow_loss import FlowLossConfig, av_flow_loss
from .loop import LossFn


def make_loss_fn(config: FlowLossConfig | DPOConfig, rule_names: Sequence[str] = (),
                 reference_context: ReferenceContext = disabled_adapters, shard: RowShard | None = None) -> LossFn:
    """The loop's loss for ``config``.

    DPO only: ``reference_context(model)`` turns the model into the DPO reference (default: its LoRA off);
    ``rule_names`` (e.g. every rule a curriculum may draw) get a ``rule/<rule>/share`` log every step, the share of
    the step's rows that rule made (0 when it made none, so averages over steps are true shares), besides
    av_dpo_loss's per-rule accuracy and reward margin. shard: the rows this process computes (``distributed``).
    """
    if isinstance(config, FlowLossConfig):
        def flow_loss(model: nn.Module, batch: AVBatch, generator: torch.Generator):
            return av_flow_loss(model, batch, generator, config, shard)
        return flow_loss
    if not isinstance(config, DPOConfig):
        raise TypeError(f"make_loss_fn: expected a FlowLossConfig or a DPOConfig, got {type(config).__name__}")
    rule_names = sorted(rule_names)

    def dpo_loss(model: nn.Module, batch: PreferenceBatch, generator: torch.Generator):
        loss, logs = av_dpo_loss(model, batch.winner, batch.loser, generator, config, reference_context, batch.rules,
                                 shard)
        if batch.rules is not None:
            rows = len(batch.rules)
            for rule in dict.fromkeys(rule_names + sorted(set(batch.rules))):
                logs[f"rule/{rule}/share"] = sum(r == rule for r in batch.rules) / rows
        return loss, logs
    return dpo_loss
