"""Test-only ComfyUI nodes the integration server loads beside the package (custom_nodes/syncav_test_probes).

They report, as an output node's text, what the browser cannot show: how a MODEL holds its weights inside the
server after ComfyUI loaded it for sampling, and what the Loader's text encoder loaded. Never part of the package;
only tests/integration/conftest.py links this folder into the test server's custom_nodes.

Loading this folder also shrinks ComfyUI's UMT5-XXL (the Wan text encoder) inside the test server to
``TINY_UMT5_XXL_CONFIG``: 24 blocks 4096 wide, as ComfyUI detects UMT5-XXL and as Ovi reads it, but with tiny heads,
feed-forward layers and vocabulary, so a test file of a few MB loads through ComfyUI's own CLIP loader (type wan)
instead of the 11 GB encoder. It uses ComfyUI's own per-model config override (``<model name>_model_config`` in
the CLIP's model options); no test server loads a real UMT5-XXL.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import torch

# What differs from ComfyUI's umt5_config_xxl.json (d_model 4096 and 24 layers stay).
TINY_UMT5_XXL_CONFIG = {"d_kv": 4, "num_heads": 2, "d_ff": 16, "vocab_size": 96}


def _shrink_comfy_umt5_xxl() -> None:
    # Imported by a test, outside a running ComfyUI (whose model management is loaded before any custom node):
    # nothing to shrink, and importing ComfyUI's text encoders here would start its device management.
    if "comfy.model_management" not in sys.modules:
        return
    from comfy.text_encoders import wan
    full_size_init = wan.UMT5XXlModel.__init__

    def tiny_init(self, *args, model_options={}, **kwargs):  # noqa: B006 - ComfyUI's own signature
        model_options = {**model_options, "umt5xxl_model_config": dict(TINY_UMT5_XXL_CONFIG)}
        full_size_init(self, *args, model_options=model_options, **kwargs)

    wan.UMT5XXlModel.__init__ = tiny_init


_shrink_comfy_umt5_xxl()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class SyncAVTestWeightReport:
    """MODEL -> text (JSON): for the diffusion model inside it, tensors and bytes per dtype, the dtype of every
    layer weight ComfyUI casts per call (its ops classes), the layer classes and the dtype the model computes in;
    with ``text_encoder``, what that encoder loaded (its class, the ComfyUI CLIP inside it, the file).
    ``after`` only orders the node after a sampler, so the report describes the weights sampling left behind."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)},
                "optional": {"after": ("SYNCAV_LATENT",), "codecs": ("SYNCAV_CODECS",),
                             "text_encoder": ("SYNCAV_TEXT_ENCODER",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "report"
    CATEGORY = "testing"

    def report(self, model, after=None, codecs=None, text_encoder=None):
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
        if text_encoder is not None:
            loaded = bool(getattr(text_encoder, "loaded", True))
            inner = text_encoder.encoder() if loaded and hasattr(text_encoder, "encoder") else text_encoder
            clip = getattr(inner, "clip", None)
            report["text_encoder"] = {
                "loaded": loaded, "encoder": type(inner).__name__, "path": getattr(inner, "path", None),
                "clip": None if clip is None else f"{type(clip).__module__}.{type(clip).__qualname__}"}
        return {"ui": {"text": [json.dumps(report, sort_keys=True)]}}


class SyncAVTestSaveLatents:
    """A clip's latents -> a .pt file in the output folder (video and audio, float32), for tests to compare runs
    of different graphs; with ``guider``, also how often the sampler asked it to denoise and how many forwards of
    the joint model that took."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"codecs": ("SYNCAV_CODECS",), "name": ("STRING", {"default": "latents"})},
                "optional": {"latent": ("SYNCAV_LATENT",), "samples": ("LATENT",), "guider": ("GUIDER",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = "testing"

    def save(self, codecs, name, latent=None, samples=None, guider=None):
        import folder_paths

        if latent is not None:
            video, audio = latent["video"], latent["audio"]
        else:
            packed = samples["samples"]
            video, audio = codecs.pipeline.packed_layout(tuple(packed.shape)).unpack(packed)
        record = {"video": video.float().cpu(), "audio": audio.float().cpu()}
        if guider is not None:
            record["denoise_calls"] = guider.denoise_calls
            record["model_forwards"] = guider.model_forwards
        path = f"{folder_paths.get_output_directory()}/{name}.pt"
        torch.save(record, path)
        return {"ui": {"text": [path]}}


NODE_CLASS_MAPPINGS = {"SyncAVTestWeightReport": SyncAVTestWeightReport, "SyncAVTestSaveLatents": SyncAVTestSaveLatents}
NODE_DISPLAY_NAME_MAPPINGS = {"SyncAVTestWeightReport": "SyncAV test: weight report",
                              "SyncAVTestSaveLatents": "SyncAV test: save latents"}
