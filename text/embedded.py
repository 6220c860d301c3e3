"""The embedded default's text encoder: a hashed word tokenizer and a two-block transformer, no downloads.

Words and punctuation are lower-cased and hashed (CRC-32, stable across processes and machines, unlike Python's
salted ``hash``) into a fixed number of buckets, embedded, given sinusoidal positions and mixed by small pre-norm
transformer blocks. The weights come from a fixed seed, so every instance of the untrained encoder is identical and
a joint model trained against it keeps working; a trained version can be saved and loaded as safetensors.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import unicodedata
import zlib

import torch
from torch import nn
from torch.nn import functional as F

from ..files.atomic import atomic_path
from ..model.config import PRESETS, TINY_TEXT_DIM
from ..files.safetensors_io import CheckpointError, describe_key_mismatch, load_weights, read_header
from .interface import EncodedText, TextEncoder

log = logging.getLogger(__name__)

TINY_TEXT_VOCAB_SIZE = 4096
TINY_TEXT_MAX_LENGTH = PRESETS["tiny"].video.text_len
_FILE_FORMAT = "comfyui-syncav tiny text encoder"

# A token is a run of letters/digits/underscores, or any single other visible character (punctuation, symbols).
_TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")


class HashTokenizer:
    """Prompt -> token ids: NFKC-normalised, lower-cased words and punctuation, each hashed into ``vocab_size``
    buckets with CRC-32. Unrelated words may share a bucket (1 in ``vocab_size``); there is no unknown word."""

    def __init__(self, vocab_size: int = TINY_TEXT_VOCAB_SIZE):
        if vocab_size < 2:
            raise ValueError(f"HashTokenizer: vocab_size must be at least 2, got {vocab_size}")
        self.vocab_size = vocab_size

    def words(self, prompt: str) -> list[str]:
        return _TOKEN_PATTERN.findall(unicodedata.normalize("NFKC", prompt).lower())

    def __call__(self, prompt: str) -> list[int]:
        return [zlib.crc32(word.encode("utf-8")) % self.vocab_size for word in self.words(prompt)]


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """[length, dim] transformer position code: sines in the first half of the channels, cosines in the second."""
    if dim % 2:
        raise ValueError(f"sinusoidal_positions: dim must be even, got {dim}")
    position = torch.arange(length, dtype=torch.float64)[:, None]
    frequency = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angle = position * frequency[None]
    return torch.cat([angle.sin(), angle.cos()], dim=1).float()


class TextEncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: self-attention over a prompt's tokens, then a GELU MLP."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TextEncoderBlock: dim {dim} must split into {num_heads} heads")
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x [B, L, D]; attend [B, 1, 1, L] bool, True on keys that are real tokens -> [B, L, D]."""
        b, length, dim = x.shape
        q, k, v = (self.qkv(self.attn_norm(x))
                   .view(b, length, 3, self.num_heads, dim // self.num_heads)
                   .permute(2, 0, 3, 1, 4))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        x = x + self.attn_out(attended.transpose(1, 2).reshape(b, length, dim))
        return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


class TinyTextNetwork(nn.Module):
    """Token ids [B, L] -> embeddings [B, L, dim]: embedding table + sinusoidal positions + blocks + final norm."""

    def __init__(self, vocab_size: int, dim: int, num_layers: int, num_heads: int, ffn_dim: int, max_length: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.register_buffer("positions", sinusoidal_positions(max_length, dim), persistent=False)
        self.blocks = nn.ModuleList(TextEncoderBlock(dim, num_heads, ffn_dim) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(dim)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Draw every weight from a generator seeded with ``seed`` (independent of the global RNG): embeddings
        N(0, 1), linear weights N(0, 1 / fan_in), biases 0, norms 1."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
            elif isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
                module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """token_ids [B, L] int64, lengths [B] -> [B, L, dim], rows at and past each length exactly zero."""
        length = token_ids.shape[1]
        index = torch.arange(length, device=token_ids.device)
        real = index[None] < lengths[:, None]                                          # [B, L]
        # An empty prompt still attends to its first (padding) row, so no softmax row is all -inf (NaN); the
        # output rows are zeroed below anyway.
        attend = (index[None] < lengths.clamp(min=1)[:, None])[:, None, None, :]        # [B, 1, 1, L]
        x = self.token_embedding(token_ids) + self.positions[:length].to(self.token_embedding.weight.dtype)
        for block in self.blocks:
            x = block(x, attend)
        return self.final_norm(x) * real[..., None].to(x.dtype)


class TinyTextEncoder(TextEncoder):
    """Prompts -> EncodedText [B, max_length, dim] with the embedded default's own encoder.

    ``weights_path``: a safetensors file written by ``save`` (a trained version); without it the weights are
    drawn from ``seed``, identically on every machine.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, *, dim: int = TINY_TEXT_DIM,
                 max_length: int = TINY_TEXT_MAX_LENGTH, vocab_size: int = TINY_TEXT_VOCAB_SIZE,
                 num_layers: int = 2, num_heads: int = 4, ffn_dim: int = 256, seed: int = 0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.dim = dim
        self.max_length = max_length
        self.hyperparameters = dict(dim=dim, max_length=max_length, vocab_size=vocab_size, num_layers=num_layers,
                                    num_heads=num_heads, ffn_dim=ffn_dim)
        self.tokenizer = HashTokenizer(vocab_size)
        self.network = TinyTextNetwork(vocab_size, dim, num_layers, num_heads, ffn_dim, max_length)
        self.network.reset_parameters(seed)
        if weights_path is not None:
            self.load(weights_path)
        self.network.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_file(cls, weights_path: str | os.PathLike, device=None, dtype: torch.dtype = torch.float32
                  ) -> "TinyTextEncoder":
        """Build an encoder with the hyperparameters stored in a file written by ``save``, and its weights."""
        config = _read_config(weights_path)
        # Check the file's tensors against its stated hyperparameters on the meta device before a real network of
        # that size is allocated (a corrupted config could ask for any size).
        with torch.device("meta"):
            network = TinyTextNetwork(**config)
        _check_shapes(weights_path, network)
        return cls(weights_path, device=device, dtype=dtype, **config)

    @property
    def device(self) -> torch.device:
        return self.network.token_embedding.weight.device

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.network.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict(state_dict)

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and hyperparameters as safetensors, atomically (temp file + rename)."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.network.state_dict().items()}
        metadata = {"format": _FILE_FORMAT, "config": json.dumps(self.hyperparameters, sort_keys=True)}
        with atomic_path(path) as temporary:
            save_file(tensors, temporary, metadata=metadata)

    def load(self, path: str | os.PathLike) -> None:
        """Load weights saved by ``save``; the file's hyperparameters must match this encoder's."""
        config = _read_config(path)
        if config != self.hyperparameters:
            raise ValueError(f"TinyTextEncoder: {os.fspath(path)!r} holds an encoder with {config}, this one has "
                             f"{self.hyperparameters} (use TinyTextEncoder.from_file to build it as saved)")
        _check_shapes(path, self.network)
        tensors = load_weights(path)           # refuses non-float and NaN/inf tensors, naming the first
        with torch.no_grad():
            self.network.load_state_dict({k: v.to(self.network.token_embedding.weight.dtype)
                                          for k, v in tensors.items()})

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (token ids [B, max(1, longest)] int64 zero-padded, lengths [B] int64); warns on truncation."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"TinyTextEncoder.encode prompts: expected a list of strings, received "
                             f"{type(prompts).__name__}" + ("" if isinstance(prompts, str) else
                                                            f" of {[type(p).__name__ for p in prompts]}"))
        rows = []
        for prompt in prompts:
            ids = self.tokenizer(prompt)
            if len(ids) > self.max_length:
                log.warning("TinyTextEncoder: prompt of %d tokens truncated to %d: %r", len(ids), self.max_length,
                            prompt[:80])
                ids = ids[:self.max_length]
            rows.append(ids)
        longest = max([1] + [len(ids) for ids in rows])
        token_ids = torch.zeros(len(rows), longest, dtype=torch.int64)
        for i, ids in enumerate(rows):
            token_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return token_ids, torch.tensor([len(ids) for ids in rows], dtype=torch.int64)

    def encode(self, prompts: list[str]) -> EncodedText:
        """prompts (B strings, "" allowed) -> EncodedText: embeddings [B, max_length, dim] (rows past each length
        zero; an empty prompt is all zero) and lengths [B]."""
        token_ids, lengths = self.tokenize(prompts)
        token_ids, lengths = token_ids.to(self.device), lengths.to(self.device)
        with torch.no_grad():
            embeddings = self.network(token_ids, lengths)
        padded = EncodedText(embeddings, lengths).padded_to(self.max_length)
        return padded


_CONFIG_KEYS = ("dim", "max_length", "vocab_size", "num_layers", "num_heads", "ffn_dim")
# max_length sizes a position table that no stored tensor shows; a corrupted value must not allocate terabytes.
_MAX_LENGTH_LIMIT = 1 << 16


def _read_config(path: str | os.PathLike) -> dict:
    """The hyperparameters a file written by ``save`` carries, checked (positive integers, the known names)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"TinyTextEncoder: weights file {path!r} does not exist")
    header, metadata = read_header(path)      # CheckpointError for a folder, a pickle or a malformed file
    if metadata.get("format") != _FILE_FORMAT or "config" not in metadata:
        raise CheckpointError(f"TinyTextEncoder: {path!r} is not a tiny text encoder saved by TinyTextEncoder.save "
                              f"(metadata format {metadata.get('format')!r}, expected {_FILE_FORMAT!r})")
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError:
        config = None
    if not isinstance(config, dict) or sorted(config) != sorted(_CONFIG_KEYS) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in config.values()) \
            or config["dim"] % config["num_heads"] or config["dim"] % 2 or config["max_length"] > _MAX_LENGTH_LIMIT:
        raise CheckpointError(f"TinyTextEncoder: {path!r}: metadata 'config' must give positive integers "
                              f"{', '.join(_CONFIG_KEYS)} (dim even and a multiple of num_heads, max_length at "
                              f"most {_MAX_LENGTH_LIMIT}), found "
                              f"{metadata['config'][:200]!r}")
    blocks = len({key.split(".")[1] for key in header if key.startswith("blocks.")})
    if blocks != config["num_layers"]:
        raise CheckpointError(f"TinyTextEncoder: {path!r}: metadata 'config' says {config['num_layers']} blocks, the "
                              f"file holds {blocks}")
    return config


def _check_shapes(path: str | os.PathLike, network: nn.Module) -> None:
    """The file holds exactly ``network``'s tensors (names and shapes), read from its header."""
    header, _ = read_header(path)
    expected = {k: list(v.shape) for k, v in network.state_dict().items()}
    found = {k: v["shape"] for k, v in header.items()}
    if found != expected:
        raise CheckpointError(f"TinyTextEncoder: {os.fspath(path)!r} does not hold the encoder its config "
                              f"describes: {describe_key_mismatch(expected, found)}")
