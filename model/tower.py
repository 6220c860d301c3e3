"""One Wan2.2-style tower (video or audio) of the joint model, with Ovi's module and parameter names.

A tower owns its embeddings (patches, noise level, text), its blocks and its output head. The blocks are driven
in pairs by ``JointModel`` (model/joint.py) because each block's cross-attention also reads the other tower.
Linear and convolution layers come from an ``operations`` namespace (default ``torch.nn``) the way ComfyUI's
own models are built, so ComfyUI can swap in its casting / fp8 / offloading layers.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from .attention import attention
from .config import TowerConfig
from .norms import LayerNorm32, RMSNorm32
from .rope import Rotation

TORCH_OPS = SimpleNamespace(Linear=nn.Linear, Conv1d=nn.Conv1d, Conv3d=nn.Conv3d)


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """values [N] (timesteps on the 0..1000 scale) -> [N, dim] float64, cos half first (Wan's order)."""
    half = dim // 2
    frequencies = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=values.device) / half)
    angles = torch.outer(values.to(torch.float64), frequencies)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ConvSwiGLU(nn.Module):
    """Gated conv MLP over time, channels-first [B, C, L] (MMAudio's ConvMLP: w2(silu(w1 x) * w3 x))."""

    def __init__(self, ops, dim: int, hidden_dim: int, kernel_size: int):
        super().__init__()
        padding = kernel_size // 2
        self.w1 = ops.Conv1d(dim, hidden_dim, kernel_size, padding=padding, bias=False)
        self.w2 = ops.Conv1d(hidden_dim, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ops.Conv1d(dim, hidden_dim, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


def swiglu_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """MMAudio's sizing: 2/3 of 4*dim, rounded up to a multiple of 256 (dim 3072 -> 8192, dim 64 -> 256)."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class AudioPatchEmbedding(nn.Sequential):
    """Audio latents [B, L, Ca] -> tokens [B, L, dim]: conv, SiLU, gated conv MLP (Ovi's audio tower input)."""

    def __init__(self, ops, in_channels: int, dim: int, kernel_size: int):
        super().__init__(
            ops.Conv1d(in_channels, dim, kernel_size, padding=kernel_size // 2),
            nn.SiLU(),
            ConvSwiGLU(ops, dim, swiglu_hidden_dim(dim), kernel_size),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return super().forward(latent.transpose(1, 2)).transpose(1, 2)


class Modulation(nn.Module):
    """Learned offsets added to the noise-level projection: [B, L, 6, dim] -> six [B, L, dim] chunks
    (shift/scale/gate for self-attention, then for the FFN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, time_projection: torch.Tensor) -> list[torch.Tensor]:
        mod = self.modulation.to(time_projection.device, time_projection.dtype) + time_projection
        return list(mod.unbind(dim=2))


class SelfAttention(nn.Module):
    def __init__(self, ops, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (ops.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm32(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm32(dim, eps) if qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))

    def forward(self, x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
        """x [B, L, dim] -> [B, L, dim]."""
        q = rotation.apply(self.heads(self.norm_q(self.q(x))))
        k = rotation.apply(self.heads(self.norm_k(self.k(x))))
        return self.o(attention(q, k, self.heads(self.v(x))))


class CrossAttention(SelfAttention):
    """Text cross-attention plus Ovi's cross-modal attention to the other tower's tokens.

    One query serves both: unrotated against the text keys, rotated (own angles) against the other tower's keys
    (rotated with that tower's angles). The two results are summed before the output projection.
    """

    def __init__(self, ops, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__(ops, dim, num_heads, qk_norm, eps)
        self.k_fusion = ops.Linear(dim, dim)
        self.v_fusion = ops.Linear(dim, dim)
        self.pre_attn_norm_fusion = LayerNorm32(dim, eps=1e-6, elementwise_affine=True)
        self.norm_k_fusion = RMSNorm32(dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_lengths: torch.Tensor | None,
                other: torch.Tensor | None = None, own_rotation: Rotation | None = None,
                other_rotation: Rotation | None = None, other_gate: torch.Tensor | None = None,
                other_visible: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, dim], text [B, Lt, dim] -> [B, L, dim].

        other [Bo, Lo, dim] (Bo <= B) or None: the other tower's tokens for the first Bo rows of x; the remaining
        rows (an audio-alone pass) and every row when None get no cross-modal part.
        other_gate [Bo] (1 or 0): per-row switch of the cross-modal part, so a batch can mix rows with the
        cross-modal attention cut (LTX-2's modality guidance pass) and rows with it.
        other_visible [L, Lo] bool or None: Harmony's local + global interaction (model/interaction.py): each query
        attends only the other tokens it marks, and the other tower's mean token is added through the same value
        projection (the global path); None: Ovi's global fusion attention.
        """
        q = self.heads(self.norm_q(self.q(x)))
        k = self.heads(self.norm_k(self.k(text)))
        out = attention(q, k, self.heads(self.v(text)), text_lengths)
        if other is not None:
            rows = other.shape[0]
            other = self.pre_attn_norm_fusion(other)
            k_other = other_rotation.apply(self.heads(self.norm_k_fusion(self.k_fusion(other))))
            v_other = self.heads(self.v_fusion(other))
            cross = attention(own_rotation.apply(q[:rows]), k_other, v_other, visible=other_visible)
            if other_visible is not None:      # the global path: a one-key attention to the mean token
                cross = cross + self.v_fusion(other.mean(dim=1, keepdim=True))
            if other_gate is not None:
                cross = cross * other_gate.to(cross.dtype)[:, None, None]
            out = out + cross if rows == out.shape[0] else torch.cat([out[:rows] + cross, out[rows:]])
        return self.o(out)


class TowerBlock(nn.Module):
    """A Wan attention block, split in the two halves a fusion block interleaves across towers."""

    def __init__(self, ops, cfg: TowerConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm32(dim, cfg.eps)
        self.self_attn = SelfAttention(ops, dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = LayerNorm32(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(ops, dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = LayerNorm32(dim, cfg.eps)
        self.ffn = nn.Sequential(ops.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 ops.Linear(cfg.ffn_dim, dim))
        self.modulation = Modulation(dim)

    def self_attention_step(self, x: torch.Tensor, mod: list[torch.Tensor], rotation: Rotation) -> torch.Tensor:
        shift, scale, gate = mod[0], mod[1], mod[2]
        y = self.self_attn(self.norm1(x) * (1 + scale) + shift, rotation)
        return x + y * gate

    def cross_attention_ffn_step(self, x: torch.Tensor, mod: list[torch.Tensor], text: torch.Tensor,
                                 text_lengths: torch.Tensor | None, other: torch.Tensor | None,
                                 own_rotation: Rotation, other_rotation: Rotation,
                                 other_gate: torch.Tensor | None = None,
                                 other_visible: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.cross_attn(self.norm3(x), text, text_lengths, other, own_rotation, other_rotation, other_gate,
                                other_visible)
        shift, scale, gate = mod[3], mod[4], mod[5]
        y = self.ffn(self.norm2(x) * (1 + scale) + shift)
        return x + y * gate


class Head(nn.Module):
    def __init__(self, ops, cfg: TowerConfig):
        super().__init__()
        self.norm = LayerNorm32(cfg.dim, cfg.eps)
        self.head = ops.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], time_embedding [B, L or 1, dim] -> [B, L, prod(patch) * out_channels]."""
        mod = self.modulation.to(x.device, x.dtype)[:, None] + time_embedding[:, :, None]  # [B, L, 2, dim]
        shift, scale = mod[:, :, 0], mod[:, :, 1]
        return self.head(self.norm(x) * (1 + scale) + shift)


class Tower(nn.Module):
    """Embeddings, blocks and head of one modality. Key names match Ovi's ``video_model.*`` / ``audio_model.*``."""

    def __init__(self, cfg: TowerConfig, operations=None):
        super().__init__()
        ops = operations or TORCH_OPS
        self.config = cfg
        if cfg.modality == "video":
            self.patch_embedding = ops.Conv3d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size,
                                              stride=cfg.patch_size)
        else:
            self.patch_embedding = AudioPatchEmbedding(ops, cfg.in_channels, cfg.dim, cfg.audio_embed_kernel)
        self.text_embedding = nn.Sequential(ops.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            ops.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(ops.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(),
                                            ops.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([TowerBlock(ops, cfg) for _ in range(cfg.num_layers)])
        self.head = Head(ops, cfg)

    # ---- inputs -------------------------------------------------------------------------------------------
    def token_grid(self, latent_shape: torch.Size) -> tuple[int, ...]:
        """Token grid of a latent: video [B,C,F,H,W] -> (F/pt, H/ph, W/pw); audio [B,L,C] -> (L,)."""
        cfg = self.config
        if cfg.modality == "audio":
            return (latent_shape[1],)
        sizes = latent_shape[2:]
        if any(s % p for s, p in zip(sizes, cfg.patch_size)):
            raise ValueError(f"video latent of frames x height x width {tuple(sizes)} cannot be cut into patches "
                             f"of {cfg.patch_size}: each size must be a multiple of its patch size")
        return tuple(s // p for s, p in zip(sizes, cfg.patch_size))

    def embed_tokens(self, latent: torch.Tensor) -> torch.Tensor:
        """video [B, Cv, F, H, W] / audio [B, L, Ca] -> tokens [B, N, dim] (video flattened (f, h, w))."""
        tokens = self.patch_embedding(latent)
        if self.config.modality == "video":
            tokens = tokens.flatten(2).transpose(1, 2)
        return tokens

    def embed_time(self, timesteps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """timesteps [B, N] (0..1000) -> (embedding [B, N, dim], projection [B, N, 6, dim]).

        N may be 1 when every token of a sample shares its noise level; the result then broadcasts, which is
        the same function as embedding each token (Ovi does that) at a fraction of the cost.
        """
        b, n = timesteps.shape
        sinusoid = sinusoidal_embedding(timesteps.flatten(), self.config.freq_dim).to(dtype)
        emb = self.time_embedding(sinusoid).unflatten(0, (b, n))
        proj = self.time_projection(emb).unflatten(2, (6, self.config.dim))
        return emb, proj

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """text [B, Lt, text_dim] -> [B, text_len, dim]: zero-padded to text_len rows before the embedding
        (Ovi attends all text_len rows, the embedded zero rows included)."""
        b, length, width = text.shape
        cfg = self.config
        if width != cfg.text_dim:
            raise ValueError(f"{cfg.modality} text embeddings are {width} wide; this model takes {cfg.text_dim} "
                             "(is the text encoder the one this model was trained with?)")
        if length > cfg.text_len:
            raise ValueError(f"{cfg.modality} text has {length} rows; this model takes at most {cfg.text_len}")
        if length < cfg.text_len:
            text = torch.cat([text, text.new_zeros(b, cfg.text_len - length, width)], dim=1)
        return self.text_embedding(text)

    # ---- output -------------------------------------------------------------------------------------------
    def unpatchify(self, out: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Head output [B, N, prod(patch) * C] -> video [B, C, F, H, W] / audio [B, L, C]."""
        cfg = self.config
        if cfg.modality == "audio":
            return out
        b, c = out.shape[0], cfg.out_channels
        pt, ph, pw = cfg.patch_size
        f, h, w = grid
        x = out.reshape(b, f, h, w, pt, ph, pw, c)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, f * pt, h * ph, w * pw)

    def tokens_to_latent_layout(self, per_token: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """A per-token scalar [B, N] -> broadcastable over the latent: video [B,1,F,H,W], audio [B,L,1]."""
        if self.config.modality == "audio":
            return per_token[:, :, None]
        pt, ph, pw = self.config.patch_size
        x = per_token.reshape(per_token.shape[0], 1, *grid)
        return x.repeat_interleave(pt, 2).repeat_interleave(ph, 3).repeat_interleave(pw, 4)
