"""A trainable deep copy of a module that may hold inference tensors.

ComfyUI runs nodes under ``torch.inference_mode``, so a model loaded or patched there holds inference tensors, which
autograd refuses to record. Training a LoRA on such a model needs a copy whose every parameter and buffer is a
normal tensor; the original stays as it is (other nodes may still sample with it).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def trainable_deep_copy(module: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """A deep copy of ``module`` made outside inference mode, inference tensors cloned into normal ones (parameters
    keep their ``requires_grad``), moved to ``device`` when given."""
    with torch.inference_mode(False), torch.no_grad():
        copied = copy.deepcopy(module)
        for child in copied.modules():
            for name, param in list(child.named_parameters(recurse=False)):
                if param.is_inference():
                    setattr(child, name, nn.Parameter(param.clone(), requires_grad=param.requires_grad))
            for name, buffer in list(child.named_buffers(recurse=False)):
                if buffer.is_inference():
                    child._buffers[name] = buffer.clone()
        return copied.to(device) if device is not None else copied
