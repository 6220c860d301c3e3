"""Test-only ComfyUI nodes the integration server loads beside the package (custom_nodes/syncav_test_probes).

They report, as an output node's text, what the browser cannot show: how a MODEL holds its weights inside the
server after ComfyUI loaded it for sampling. Never part of the package; only tests/integration/conftest.py links
this folder into the test server's custom_nodes.
"""

from __future__ import annotations

import json
from collections import defaultdict

import torch


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class SyncAVTestWeightReport:
    """MODEL -> text (JSON): for the diffusion model inside it, tensors and bytes per dtype, the dtype of every
    layer weight ComfyUI casts per call (its ops classes), the layer classes and the dtype the model computes in.
    ``after`` only orders the node after a sampler, so the report describes the weights sampling left behind."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)},
                "optional": {"after": ("SYNCAV_LATENT",), "codecs": ("SYNCAV_CODECS",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "report"
    CATEGORY = "testing"

    def report(self, model, after=None, codecs=None):
        diffusion_model = model.model.diffusion_model
        tensors, nbytes = defaultdict(int), defaultdict(int)
        for tensor in diffusion_model.state_dict().values():
            tensors[_dtype_name(tensor.dtype)] += 1
            nbytes[_dtype_name(tensor.dtype)] += tensor.numel() * tensor.element_size()
        cast_layers = [m for m in diffusion_model.modules() if hasattr(m, "comfy_cast_weights")]
        report = {
            "tensors_by_dtype": dict(tensors),
            "bytes_by_dtype": dict(nbytes),
            "cast_layer_weight_dtypes": sorted({_dtype_name(m.weight.dtype) for m in cast_layers}),
            "cast_layer_count": len(cast_layers),
            "layer_classes": sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in cast_layers}),
            "compute_dtype": _dtype_name(diffusion_model.working_dtype()),
            "devices": sorted({str(t.device) for t in diffusion_model.state_dict().values()}),
            "patcher_model_size_bytes": int(model.model_size()),
        }
        if codecs is not None:
            pipeline = codecs.pipeline
            report["pipeline"] = {"class": type(pipeline).__name__, "name": pipeline.name,
                                  "variant": getattr(getattr(pipeline, "variant", None), "key", None)}
        return {"ui": {"text": [json.dumps(report, sort_keys=True)]}}


NODE_CLASS_MAPPINGS = {"SyncAVTestWeightReport": SyncAVTestWeightReport}
NODE_DISPLAY_NAME_MAPPINGS = {"SyncAVTestWeightReport": "SyncAV test: weight report"}
