"""Block swap: run a joint model larger than the GPU by keeping only some fusion blocks there (outside ComfyUI).

The fusion blocks hold nearly all the weights (Ovi: 30 blocks of ~0.75 GB in bf16 out of 23 GB). With
``blocks_on_gpu = N`` the embeddings, heads and the first N fusion blocks live on the compute device; every other
block lives in (pinned) CPU memory and is copied in just before it runs and dropped right after. On CUDA the copy
of the next swapped block overlaps the current block's compute (a side stream), so at most N + 2 blocks are on the
GPU at any time; elsewhere at most N + 1.

The CPU copy is the master: "moving a block out" only points its parameters back at it, so nothing is copied
back. Block swap is for inference; weights changed while a block is on the device would be lost, so train or
merge LoRAs with it disabled (``BlockSwap.remove``). Inside ComfyUI use ComfyUI's own memory management instead.

    swap = enable_block_swap(model, blocks_on_gpu=10, device="cuda")
    ... model(...) as usual ...
    swap.remove()       # everything back on the CPU, the model as before
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class BlockSwap:
    """Keeps fusion blocks ``0..N-1`` resident on ``device`` and swaps the others in from ``offload_device``.

    It wraps the model's ``_fusion_block`` (the one place a forward runs block ``i`` of both towers), so the
    model's forward is unchanged. ``on_device(i)`` tells where block ``i`` is right now.
    """

    def __init__(self, model: nn.Module, blocks_on_gpu: int, device: str | torch.device,
                 offload_device: str | torch.device = "cpu", prefetch: bool | None = None,
                 pin_memory: bool | None = None):
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
        self.moves_in = 0          # blocks copied to the device since install (for tests and benchmarks)

        with torch.no_grad():
            for tower in (model.video_model, model.audio_model):
                for name, child in tower.named_children():
                    if name != "blocks":
                        child.to(self.device)
            for i in range(self.blocks_on_gpu):
                for block in self._pair(i):
                    block.to(self.device)
            # Per swapped block: (tensor holder, master copy on the offload device), in a fixed order.
            self._slots: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for i in self.swapped:
                slots = []
                for block in self._pair(i):
                    block.to(self.offload_device)
                    for tensor in list(block.parameters()) + list(block.buffers()):
                        master = tensor.data
                        if pin and not master.is_pinned():
                            master = master.pin_memory()
                            tensor.data = master
                        slots.append((tensor, master))
                self._slots[i] = slots

        self._inner = model._fusion_block           # the bound method
        model._fusion_block = self._run               # instance attribute: shadows the method
        self._hook = model.register_forward_hook(self._after_forward)
        log.info("block swap: %d of %d fusion blocks resident on %s, %d swapped from %s%s", self.blocks_on_gpu,
                 num_blocks, self.device, len(self.swapped), self.offload_device,
                 " (prefetching on a side stream)" if self._stream is not None else "")

    # ---- state --------------------------------------------------------------------------------------------
    def _pair(self, i: int) -> tuple[nn.Module, nn.Module]:
        return self.model.video_model.blocks[i], self.model.audio_model.blocks[i]

    def on_device(self, i: int) -> bool:
        """Whether fusion block ``i`` is on the compute device now (resident, or swapped in to run)."""
        return i < self.blocks_on_gpu or i in self._loaded

    # ---- moving -------------------------------------------------------------------------------------------
    def _fetch(self, i: int):
        """Start copying block ``i`` to the device: (device tensors, event to wait for or None)."""
        masters = [master for _, master in self._slots[i]]
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
        tensors, event = self._pending.pop(i, None) or self._fetch(i)
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for t in tensors:
                t.record_stream(compute)   # allocated on the copy stream, used on the compute stream
        for (holder, _), t in zip(self._slots[i], tensors):
            holder.data = t
        self._loaded.add(i)
        self.moves_in += 1

    def _send_out(self, i: int) -> None:
        for holder, master in self._slots[i]:
            holder.data = master
        self._loaded.discard(i)
        if self._stream is not None:
            self._last_done = torch.cuda.Event()
            self._last_done.record(torch.cuda.current_stream(self.device))

    def _run(self, i: int, *args):
        swapped = i >= self.blocks_on_gpu
        if swapped:
            self._bring_in(i)
        if self.prefetch:  # copy the next swapped block in while this one computes
            following = next((j for j in self.swapped if j > i), None)
            if following is not None and following not in self._pending:
                self._pending[following] = self._fetch(following)
        try:
            return self._inner(i, *args)
        finally:
            if swapped:
                self._send_out(i)

    def _after_forward(self, module, args, output) -> None:
        # A block prefetched but never run (skip_blocks) must not pin device memory until the next forward.
        self._pending.clear()

    # ---- removal ------------------------------------------------------------------------------------------
    def remove(self, device: str | torch.device | None = None) -> nn.Module:
        """Uninstall: every block back on its master copy, the whole model moved to ``device`` (default: the
        offload device). Returns the model."""
        self._pending.clear()
        for i in list(self._loaded):
            self._send_out(i)
        self._hook.remove()
        if vars(self.model).get("_fusion_block") == self._run:
            del self.model._fusion_block
        return self.model.to(device or self.offload_device)


def enable_block_swap(model: nn.Module, blocks_on_gpu: int, device: str | torch.device,
                      offload_device: str | torch.device = "cpu", **options) -> BlockSwap:
    """Install block swap on a JointModel (see the module docstring); returns the ``BlockSwap`` to inspect or
    remove it."""
    return BlockSwap(model, blocks_on_gpu, device, offload_device, **options)
