"""Block swap: run or train a joint model larger than the GPU by keeping only some fusion blocks there.

The fusion blocks hold nearly all the weights (Ovi: 30 blocks of ~0.73 GB in bf16, ~0.37 GB in fp8, out of 23 GB).
With ``blocks_on_gpu = N`` the embeddings, heads and the first N fusion blocks live on the compute device; the
tensors of every other block live in (pinned) CPU memory and are copied in just before the block runs. On CUDA the
copy of the next swapped block overlaps the current block's compute (a side stream).

How a block comes in and goes out: bringing block ``i`` in puts a fresh device copy of each of its swapped tensors
into its modules (``module._parameters[name]``, the way ``torch.func.functional_call`` substitutes tensors);
sending it out puts the original, offloaded tensors back. The CPU copy is the master and is never written, so
nothing is copied back. Whatever autograd saved while the block ran keeps its device copy alive until the backward
is done with it, and no longer.

Training (``keep_trainable=True``, installed after the adapters are added): parameters that require grad (LoRA
factors) are never swapped; they stay on the device, the same ``Parameter`` objects the optimizer holds, and collect
their gradients as usual. Only frozen tensors move. With gradient checkpointing (the way to train with it) a
block's forward saves nothing; the backward recomputes the block through ``_fusion_block``, which brings it in
again, and the tensors that recomputation saves are the device copies, so the block's backward runs on them although
the block is sent out right after the recomputation. The backward visits blocks in reverse, so there the prefetch
fetches the next lower swapped block. Without checkpointing the results are the same, but autograd keeps every
swapped block's copy until the backward and nothing is saved: the trainer turns checkpointing on with block swap.

Memory: at most N + 2 swapped-in blocks on the GPU in a forward on CUDA (N + 1 elsewhere); in a checkpointed
backward one more, the block whose backward is running (with fp8 layers: its weights upcast to bf16).

    swap = enable_block_swap(model, blocks_on_gpu=10, device="cuda")   # keep_trainable=True to train
    ... model(...) as usual, or a training step with model.set_gradient_checkpointing(True) ...
    swap.remove()       # everything back on the CPU, the model as before
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class BlockSwap:
    """Keeps fusion blocks ``0..N-1`` resident on ``device`` and swaps the others in from ``offload_device`` (their
    frozen tensors only, with ``keep_trainable``).

    It wraps the model's ``_fusion_block`` (the one place a forward, or a checkpointed backward's recomputation, runs
    block ``i`` of both towers), so the model's forward is unchanged. ``on_device(i)`` tells where block ``i`` is
    right now; ``moves_in`` counts blocks copied in, ``moves_in_backward`` those of them copied in by a backward.
    keep_trainable: parameters that require grad stay on ``device`` for good (training); False: every tensor of a
    swapped block is swapped, and running one that requires grad with grad enabled is refused (its gradient would
    go to a copy).
    """

    def __init__(self, model: nn.Module, blocks_on_gpu: int, device: str | torch.device,
                 offload_device: str | torch.device = "cpu", prefetch: bool | None = None,
                 pin_memory: bool | None = None, keep_trainable: bool = False):
        if not hasattr(model, "_fusion_block") or not hasattr(getattr(model, "config", None), "num_blocks"):
            raise ValueError(f"block swap: expected a JointModel (fusion blocks run by _fusion_block), got "
                             f"{type(model).__name__}")
        num_blocks = model.config.num_blocks
        if isinstance(blocks_on_gpu, bool) or not isinstance(blocks_on_gpu, int) or blocks_on_gpu < 0:
            raise ValueError(f"blocks_on_gpu: expected an integer >= 0, got {blocks_on_gpu!r}")
        if "_fusion_block" in vars(model):
            raise ValueError("block swap: this model already has block swap (or another wrapper) installed")
        self.model = model
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.blocks_on_gpu = min(blocks_on_gpu, num_blocks)
        self.swapped = tuple(range(self.blocks_on_gpu, num_blocks))
        cuda = self.device.type == "cuda" and self.offload_device.type == "cpu"
        self.prefetch = cuda if prefetch is None else bool(prefetch)
        pin = cuda if pin_memory is None else bool(pin_memory)
        self._stream = torch.cuda.Stream(self.device) if (cuda and self.prefetch) else None
        self._pending: dict[int, tuple[list[torch.Tensor], object]] = {}
        self._loaded: set[int] = set()
        self._last_done = None     # CUDA event: the last swapped-out block's compute has finished
        self._backward = False     # between a forward's end and the next forward: block runs are recomputations
        self.moves_in = 0          # blocks copied to the device since install (for tests and benchmarks)
        self.moves_in_backward = 0

        with torch.no_grad():
            for tower in (model.video_model, model.audio_model):
                for name, child in tower.named_children():
                    if name != "blocks":
                        child.to(self.device)
            for i in range(self.blocks_on_gpu):
                for block in self._pair(i):
                    block.to(self.device)
            # Per swapped block, in a fixed order: (tensor dict of a module, key, original tensor), the original
            # holding the master copy on the offload device. Trainable parameters go to the device for good.
            self._slots: dict[int, list[tuple[dict, str, torch.Tensor]]] = {}
            self.trainable_resident = 0
            for i in self.swapped:
                slots = []
                for block in self._pair(i):
                    for module in block.modules():
                        for store in (module._parameters, module._buffers):
                            for key, tensor in store.items():
                                if tensor is None:
                                    continue
                                if keep_trainable and isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                                    tensor.data = tensor.data.to(self.device)
                                    self.trainable_resident += 1
                                    continue
                                master = tensor.data.to(self.offload_device)
                                if pin and not master.is_pinned():
                                    master = master.pin_memory()
                                tensor.data = master
                                slots.append((store, key, tensor))
                self._slots[i] = slots

        self._inner = model._fusion_block           # the bound method
        model._fusion_block = self._run               # instance attribute: shadows the method
        self._hooks = (model.register_forward_pre_hook(self._before_forward),
                       model.register_forward_hook(self._after_forward))
        log.info("block swap: %d of %d fusion blocks resident on %s, %d swapped from %s%s%s", self.blocks_on_gpu,
                 num_blocks, self.device, len(self.swapped), self.offload_device,
                 " (prefetching on a side stream)" if self._stream is not None else "",
                 f"; {self.trainable_resident} trainable tensors of swapped blocks kept on {self.device}"
                 if self.trainable_resident else "")

    # ---- state --------------------------------------------------------------------------------------------
    def _pair(self, i: int) -> tuple[nn.Module, nn.Module]:
        return self.model.video_model.blocks[i], self.model.audio_model.blocks[i]

    def on_device(self, i: int) -> bool:
        """Whether fusion block ``i`` is on the compute device now (resident, or swapped in to run)."""
        return i < self.blocks_on_gpu or i in self._loaded

    def _masters(self, i: int) -> list[torch.Tensor]:
        """The offloaded master tensors of block ``i``, in slot order (what a move copies in)."""
        return [original.data for _, _, original in self._slots[i]]

    # ---- moving -------------------------------------------------------------------------------------------
    def _fetch(self, i: int):
        """Start copying block ``i`` to the device: (device tensors, event to wait for or None)."""
        masters = self._masters(i)
        if self._stream is None:
            return [m.to(self.device, copy=True) for m in masters], None
        # Kernel launches are asynchronous: without this wait the CPU could run many blocks ahead of the GPU,
        # each with a fresh copy on the device, and memory would grow with them. Waiting until the last block sent
        # out has finished keeps at most N + 2 blocks allocated.
        if self._last_done is not None:
            self._last_done.synchronize()
        with torch.cuda.stream(self._stream):
            tensors = [m.to(self.device, non_blocking=True, copy=True) for m in masters]
            event = torch.cuda.Event()
            event.record(self._stream)
        return tensors, event

    def _bring_in(self, i: int) -> None:
        if torch.is_grad_enabled() and any(original.requires_grad for _, _, original in self._slots[i]):
            raise RuntimeError(f"block swap: fusion block {i} is swapped with parameters that require grad, and its "
                               "gradients would go to a copy: to train, install block swap with keep_trainable=True "
                               "after freezing the base (adding the adapters)")
        tensors, event = self._pending.pop(i, None) or self._fetch(i)
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for t in tensors:
                t.record_stream(compute)   # allocated on the copy stream, used on the compute stream
        for (store, key, original), t in zip(self._slots[i], tensors):
            # A new tensor object, not the original's .data changed: autograd may save it for the backward, and
            # it must still hold the device copy after the block is sent out.
            store[key] = nn.Parameter(t, requires_grad=False) if isinstance(original, nn.Parameter) else t
        self._loaded.add(i)
        self.moves_in += 1
        self.moves_in_backward += self._backward

    def _send_out(self, i: int) -> None:
        for store, key, original in self._slots[i]:
            store[key] = original
        self._loaded.discard(i)
        if self._stream is not None:
            self._last_done = torch.cuda.Event()
            self._last_done.record(torch.cuda.current_stream(self.device))

    def _next_swapped(self, i: int) -> int | None:
        """The swapped block that runs after block ``i``: the next higher one in a forward, the next lower one in a
        backward's recomputations."""
        if self._backward:
            return next((j for j in reversed(self.swapped) if j < i), None)
        return next((j for j in self.swapped if j > i), None)

    def _run(self, i: int, *args):
        swapped = i >= self.blocks_on_gpu
        if swapped:
            self._bring_in(i)
        if self.prefetch:  # copy the next swapped block in while this one computes
            following = self._next_swapped(i)
            if following is not None and following not in self._pending:
                self._pending[following] = self._fetch(following)
        try:
            return self._inner(i, *args)
        finally:
            if swapped:
                self._send_out(i)

    def _before_forward(self, module, args) -> None:
        self._backward = False

    def _after_forward(self, module, args, output) -> None:
        # A block prefetched but never run (skip_blocks) must not pin device memory until the next forward.
        self._pending.clear()
        # Block runs from now until the next forward can only be a checkpointed backward's recomputations.
        self._backward = True

    # ---- removal ------------------------------------------------------------------------------------------
    def remove(self, device: str | torch.device | None = None) -> nn.Module:
        """Uninstall: every block back on its master copy, the whole model moved to ``device`` (default: the
        offload device). Returns the model."""
        self._pending.clear()
        for i in list(self._loaded):
            self._send_out(i)
        for hook in self._hooks:
            hook.remove()
        if vars(self.model).get("_fusion_block") == self._run:
            del self.model._fusion_block
        return self.model.to(device or self.offload_device)


def installed_block_swap(model: nn.Module) -> BlockSwap | None:
    """The ``BlockSwap`` installed on ``model``, or None."""
    run = vars(model).get("_fusion_block")
    owner = getattr(run, "__self__", None)
    return owner if isinstance(owner, BlockSwap) else None


def enable_block_swap(model: nn.Module, blocks_on_gpu: int, device: str | torch.device,
                      offload_device: str | torch.device = "cpu", **options) -> BlockSwap:
    """Install block swap on a JointModel (see the module docstring); returns the ``BlockSwap`` to inspect or
    remove it."""
    return BlockSwap(model, blocks_on_gpu, device, offload_device, **options)
