"""Training on several processes (``torchrun``): which rows of a step's batch this process computes, and the
collectives that keep the processes one run.

Data parallel for LoRA training, built on ``torch.distributed`` (gloo on CPUs, NCCL on GPUs):
* every rank builds the same global batch of a step (same generator) and draws the same noise for it, then runs the
  model on its own rows only (``RowShard``): the forward and backward, the cost, are split, and the batch a step
  trains on does not depend on the number of processes;
* a loss is a sum over rows of per-row terms divided by the global row counts, so the ranks' gradients summed
  (``all_reduce_grads``) are the one-process gradient up to summation order; every rank then takes the same
  optimizer step, and the replicated LoRA stays identical;
* rank 0 alone writes checkpoints and exports; every rank reads a checkpoint, so a run resumes on any world size;
* a rank that stops (killed, failed) makes the others' next collective fail: they stop with ``PeerLost``;
* optionally the frozen base is sharded over the ranks with FSDP2 (``shard_frozen_base``): each holds 1/N of it and
  gathers a layer's weights for the moment it computes, so a model too large for one device trains on several.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How long a collective waits for a rank that stopped answering without dying (a dead one fails at once).
TIMEOUT_ENV = "SYNCAV_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600


class PeerLost(RuntimeError):
    """Another rank of the run stopped (killed, failed, or out of reach)."""


@dataclass(frozen=True)
class RowShard:
    """Rows ``start .. stop - 1`` of a global batch of ``total`` rows: what this rank computes."""

    start: int
    stop: int
    total: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.total


def row_mean(values: torch.Tensor, mask: torch.Tensor, count: int, shard: RowShard | None) -> torch.Tensor:
    """The mean over the batch's rows where ``mask`` holds, of which this rank holds ``values[mask]``: ``count`` rows
    in the whole batch. One process: the plain mean. A shard: its rows' sum over ``count``, so the ranks' results
    add up to the mean. No such row in the batch: 0."""
    if count == 0:
        return values.new_zeros(())
    if shard is None or shard.whole:
        return values[mask].mean()
    return values[mask].sum() / count


def logged_mean(share: torch.Tensor, mask: torch.Tensor, count: int, shard: RowShard | None) -> float:
    """What to log for a ``row_mean``: the mean over this rank's own rows (the ranks' logs are averaged; their
    shares, which add up, would be a fraction of the mean). One process: the mean itself."""
    local = int(mask.sum())
    if shard is None or shard.whole or local == 0:
        return float(share.detach())
    return float(share.detach()) * count / local


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, total_rows: int, what: str = "batch_size") -> RowShard:
        """This rank's contiguous share of ``total_rows`` (sizes differ by at most one row); ``what`` names the batch
        size in the error."""
        if total_rows < self.size:
            raise ValueError(f"{what}: {total_rows} rows cannot be shared by {self.size} processes; expected at "
                             f"least one row per process")
        return RowShard(self.rank * total_rows // self.size, (self.rank + 1) * total_rows // self.size, total_rows)


def current_world() -> World:
    """The run's world: torch.distributed's when it is initialized, else one process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_world_size() -> int:
    """The world size torchrun announced in the environment (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_environment(device: str | torch.device) -> World:
    """Join the process group torchrun set up (gloo for a CPU run, NCCL for CUDA); one process: nothing to join."""
    if launched_world_size() <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        dist.init_process_group(backend=backend, timeout=timeout)
    return current_world()


def local_device(device: str | torch.device) -> torch.device:
    """A CUDA device per local rank (``cuda`` -> ``cuda:LOCAL_RANK``); other devices as given."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _collective(what: str, call):
    try:
        return call()
    except RuntimeError as error:        # gloo and NCCL failures (DistBackendError is one)
        raise PeerLost(f"rank {current_world().rank}: {what} failed, another process of the run stopped "
                       f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None


def shard_frozen_base(model: torch.nn.Module) -> tuple[int, int]:
    """Shard every layer whose own parameters are all frozen (the base under a LoRA) over the ranks with FSDP2
    (``fully_shard``, one unit per layer, children before parents). The trainable adapters stay whole on every rank,
    so their gradients, optimizer state and checkpoints are what they are on one process. A layer's weights are
    gathered for its forward (and its recomputation) and freed after; frozen layers take no gradient, so the
    backward pass adds no communication. Returns (frozen parameters held by this rank, in the whole model)."""
    from torch.distributed.fsdp import fully_shard

    for _, module in reversed(list(model.named_modules())):
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            fully_shard(module)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in frozen)
    return local, sum(p.numel() for p in frozen)


def all_reduce_grads(params: dict[str, torch.nn.Parameter]) -> None:
    """Sum every trainable parameter's gradient over the ranks (a missing gradient counts as zero), in one message."""
    grads = []
    for p in params.values():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    _collective("summing the gradients", lambda: dist.all_reduce(flat))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over the ranks (a copy; the input is left as it was)."""
    total = value.detach().clone()
    _collective("summing the loss", lambda: dist.all_reduce(total))
    return total


def all_gather_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank; one process: ``[value]``."""
    world = current_world()
    if world.size == 1:
        return [value]
    gathered = [None] * world.size
    _collective("gathering the ranks' results", lambda: dist.all_gather_object(gathered, value))
    return gathered


def barrier(what: str) -> None:
    """Wait for every rank (one process: return at once)."""
    if current_world().size > 1:
        _collective(what, dist.barrier)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
