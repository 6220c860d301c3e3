"""UMT5 text encoder (Wan2.2 / Ovi's UMT5-XXL) through transformers, loaded only from local files.

Output follows the Wan/Ovi convention: the encoder's last hidden states of the real tokens (the prompt's pieces and
its closing ``</s>``, so an empty prompt has length 1), and zero rows after them, padded to ``max_length`` rows.
Inside ComfyUI the Loader loads UMT5-XXL through ComfyUI's own CLIP loader instead (nodes/clip_text_encoder.py);
this class serves scripts, the CLI and tests.
"""

from __future__ import annotations

import json
import logging
import os
import re

import torch

from .interface import EncodedText, TextEncoder

log = logging.getLogger(__name__)

_WEIGHT_PREFIXES = ("shared.", "encoder.")


def _whitespace_clean(prompt: str) -> str:
    # Wan cleans prompts this way before tokenizing; doing the same keeps token counts and embeddings equal.
    return re.sub(r"\s+", " ", prompt).strip()


class UMT5TextEncoder(TextEncoder):
    """Prompts -> EncodedText [B, max_length, d_model] with a local UMT5 encoder; never downloads.

    ``path``: a directory holding ``config.json``, the weights (``*.safetensors``) and, unless ``tokenizer_path``
    is given, the tokenizer files; or a single ``.safetensors`` weights file (keys ``shared.*`` / ``encoder.*`` as
    transformers and ComfyUI write them) with its config in ``config_path`` (a config.json or a folder holding
    one; default: the file's folder) and its tokenizer in ``tokenizer_path`` (default: the file's folder).
    ``expected_dim``: refuse an encoder of another width (4096 for Ovi). Run it in bfloat16 or float32 on real
    weights: UMT5 overflows in float16. ``offload_device``: where the weights wait between encodes (e.g. "cpu" when
    ``device`` is a GPU: UMT5-XXL's 11 GB then leave the GPU to the joint model and the VAE once prompts are
    encoded, at the cost of one copy in and out per encode).
    """

    def __init__(self, path: str | os.PathLike, *, tokenizer_path: str | os.PathLike | None = None,
                 config_path: str | os.PathLike | None = None, max_length: int = 512,
                 expected_dim: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, offload_device: torch.device | str | None = None):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"UMT5TextEncoder: path {path!r} does not exist (expected a folder with "
                                    "config.json, *.safetensors and tokenizer files, or a .safetensors file)")
        single_file = os.path.isfile(path)
        if single_file and not path.endswith(".safetensors"):
            raise ValueError(f"UMT5TextEncoder: {path!r} is a file but not .safetensors (only safetensors are "
                             "loaded, never pickles)")
        folder = os.path.dirname(path) if single_file else path
        config_file = _config_file(config_path if config_path is not None else folder)
        config = _read_umt5_config(config_file, expected_dim)

        from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

        tokenizer_dir = os.fspath(tokenizer_path) if tokenizer_path is not None else folder
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"UMT5TextEncoder: no usable tokenizer in {tokenizer_dir!r} (expected tokenizer.json "
                             f"or spiece.model with tokenizer_config.json): {error}") from error
        if self.tokenizer.pad_token is None:
            raise ValueError(f"UMT5TextEncoder: the tokenizer in {tokenizer_dir!r} has no pad token")
        vocab = len(self.tokenizer)
        if vocab > config["vocab_size"]:
            raise ValueError(f"UMT5TextEncoder: the tokenizer in {tokenizer_dir!r} has {vocab} tokens, more than "
                             f"the encoder's vocab_size {config['vocab_size']}: they do not belong together")

        # The tokenizer is checked first: it fails fast, the weights may take minutes to load.
        if single_file:
            self.model = _load_single_file(UMT5EncoderModel, UMT5Config.from_dict(config), path, dtype)
        else:
            self.model = UMT5EncoderModel.from_pretrained(path, local_files_only=True, **_dtype_argument(dtype))
        self.compute_device = torch.device(device) if device is not None else None
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        self.model.to(device=self.offload_device or device, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self.dim = int(config["d_model"])
        self.max_length = max_length
        self.path = path            # the weights it was loaded from, for error messages

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def encode(self, prompts: list[str]) -> EncodedText:
        """prompts (B strings) -> EncodedText: embeddings [B, max_length, d_model] in the model's dtype with rows
        past each length zero, lengths [B] counting the closing </s>. Longer prompts are truncated with a warning."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"UMT5TextEncoder.encode prompts: expected a list of strings, received "
                             f"{type(prompts).__name__}")
        texts = [_whitespace_clean(p) for p in prompts]
        full_lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        for text, count in zip(texts, full_lengths):
            if count > self.max_length:
                log.warning("UMT5TextEncoder: prompt of %d tokens truncated to %d: %r", count, self.max_length,
                            text[:80])
        # Padding to the longest prompt, not to max_length, gives the same real-token outputs (padded keys are
        # masked) at a fraction of the cost; the rows are zero-padded to max_length afterwards.
        batch = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                               add_special_tokens=True, return_tensors="pt")
        if self.offload_device is not None:
            self.model.to(self.compute_device)
        try:
            input_ids = batch["input_ids"].to(self.device)
            mask = batch["attention_mask"].to(self.device)
            with torch.no_grad():
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        finally:
            if self.offload_device is not None:
                self.model.to(self.offload_device)
        hidden = torch.where(mask[..., None].bool(), hidden, torch.zeros((), dtype=hidden.dtype,
                                                                         device=hidden.device))
        return EncodedText(hidden, mask.sum(dim=1).to(torch.int64)).padded_to(self.max_length)


def _dtype_argument(dtype: torch.dtype) -> dict:
    # transformers renamed from_pretrained's torch_dtype to dtype in 4.56; an unknown keyword would silently land in
    # the config, so pick the name by version.
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _config_file(location: str | os.PathLike) -> str:
    location = os.fspath(location)
    candidate = os.path.join(location, "config.json") if os.path.isdir(location) else location
    if not os.path.isfile(candidate):
        raise FileNotFoundError(f"UMT5TextEncoder: no config at {candidate!r} (a single weights file needs "
                                "config_path= a UMT5 config.json or the folder holding it)")
    return candidate


def _read_umt5_config(config_file: str, expected_dim: int | None) -> dict:
    try:
        with open(config_file, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"UMT5TextEncoder: cannot read the config {config_file!r}: {error}") from error
    model_type = config.get("model_type")
    if model_type != "umt5":
        raise ValueError(f"UMT5TextEncoder: {config_file!r} describes a {model_type!r} model, expected a 'umt5' "
                         "encoder (Wan/Ovi's UMT5-XXL)")
    if expected_dim is not None and config.get("d_model") != expected_dim:
        raise ValueError(f"UMT5TextEncoder: {config_file!r} has hidden size d_model={config.get('d_model')}, "
                         f"expected {expected_dim}")
    return config


def _load_single_file(model_class, config, weights_file: str, dtype: torch.dtype):
    from ..files.safetensors_io import load_weights, read_header

    # Keys and shapes are checked on the header: a file of another kind fails before gigabytes are read.
    header, _ = read_header(weights_file)
    if any("scaled_fp8" in key or key.endswith(".scale_weight") for key in header):
        raise ValueError(f"UMT5TextEncoder: {weights_file!r} holds scaled fp8 weights (ComfyUI's format); use a "
                         "bf16/fp16/fp32 file here, or load it through ComfyUI's CLIP loader")
    ignored = [k for k in header if not k.startswith(_WEIGHT_PREFIXES)]
    if ignored:
        log.debug("UMT5TextEncoder: ignoring %d keys outside the encoder, e.g. %s", len(ignored), ignored[:3])
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k.startswith(_WEIGHT_PREFIXES)}
    # The token embedding is tied: files carry it as shared.weight, encoder.embed_tokens.weight or both.
    twins = (("shared.weight", "encoder.embed_tokens.weight"), ("encoder.embed_tokens.weight", "shared.weight"))
    for key, twin in twins:
        if key not in shapes and twin in shapes:
            shapes[key] = shapes[twin]
    with torch.device("meta"):
        model = model_class(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(shapes)), sorted(set(shapes) - expected)
    if missing or unexpected:
        raise ValueError(f"UMT5TextEncoder: {weights_file!r} is not a UMT5 encoder of this config: "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:3]})")
    wrong = [(k, shapes[k], tuple(v.shape)) for k, v in model.state_dict().items() if shapes[k] != tuple(v.shape)]
    if wrong:
        key, found, wanted = wrong[0]
        raise ValueError(f"UMT5TextEncoder: {weights_file!r} does not match its config: {key} is {list(found)}, "
                         f"the config gives {list(wanted)} ({len(wrong)} mismatched tensors)")
    # Float weights only, every value finite (checked per tensor as it loads), then cast to the run dtype.
    tensors = load_weights(weights_file, cast=lambda key, tensor: tensor.to(dtype))
    state = {k: v for k, v in tensors.items() if k.startswith(_WEIGHT_PREFIXES)}
    for key, twin in twins:
        if key not in state and twin in state:
            state[key] = state[twin]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model
