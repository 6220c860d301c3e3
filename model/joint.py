"""The joint audio-video diffusion transformer (Ovi's fusion model, key-compatible with its checkpoints).

Per fusion block i (Ovi's order, which the checkpoints were trained with):
  1. audio self-attention, 2. video self-attention,
  3. audio cross-attention to its text and to the video tokens of step 2, then the audio FFN,
  4. video cross-attention to its text and to the audio tokens of step 1 (before step 3), then the video FFN.
Noise levels are independent per modality and may differ per token, so a stream can be given clean
(sigma = 0) while the other is noisy: SyncCFG's driven passes and cross-task training rely on that.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import JointConfig
from .interaction import window_masks
from .rope import Rotation, audio_angles, video_angles
from .tower import Tower


class JointModel(nn.Module):
    def __init__(self, config: JointConfig, operations=None):
        super().__init__()
        self.config = config
        self.video_model = Tower(config.video, operations)
        self.audio_model = Tower(config.audio, operations)
        self.gradient_checkpointing = False
        # Dtype the forward computes in; None: the dtype of the weights (bf16 when they are stored in fp8).
        self.compute_dtype: torch.dtype | None = None
        # The computation of one fusion block, given its two tower blocks: one function for all blocks, so
        # regional compilation (runtime/compile.py) compiles it once and reuses it for every block.
        self.fusion_step = fusion_step

    # ---- helpers ------------------------------------------------------------------------------------------
    def working_dtype(self) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        dtype = self.video_model.patch_embedding.weight.dtype
        return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) else torch.bfloat16

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = enabled

    @staticmethod
    def _timesteps(sigma: torch.Tensor, batch: int, num_tokens: int, scale: float, name: str) -> torch.Tensor:
        """sigma [B] or [B, N] -> timesteps [B, 1] or [B, N] on the 0..1000 scale."""
        sigma = torch.as_tensor(sigma)
        if sigma.dim() == 0:
            sigma = sigma.expand(batch)
        if sigma.dim() == 1:
            sigma = sigma[:, None]
        if sigma.shape[0] != batch or sigma.shape[1] not in (1, num_tokens):
            raise ValueError(f"{name} must be [B={batch}] or [B={batch}, tokens={num_tokens}], "
                             f"got {list(sigma.shape)}")
        return sigma * scale

    @staticmethod
    def _check_latents(video: torch.Tensor, audio: torch.Tensor, cfg: JointConfig, audio_alone_rows: int) -> None:
        if video.dim() != 5 or video.shape[1] != cfg.video.in_channels:
            raise ValueError(f"video latent must be [B, {cfg.video.in_channels}, F, H, W], got {list(video.shape)}")
        if audio.dim() != 3 or audio.shape[2] != cfg.audio.in_channels:
            raise ValueError(f"audio latent must be [B, L, {cfg.audio.in_channels}] (time-major), "
                             f"got {list(audio.shape)}")
        if isinstance(audio_alone_rows, bool) or not isinstance(audio_alone_rows, int) \
                or not 0 <= audio_alone_rows < audio.shape[0]:
            raise ValueError(f"audio_alone_rows must be an integer in 0..{audio.shape[0] - 1} (fewer than the audio "
                             f"rows), got {audio_alone_rows!r}")
        if video.shape[0] != audio.shape[0] - audio_alone_rows:
            raise ValueError(f"video and audio latents have different batch sizes: {video.shape[0]} vs "
                             f"{audio.shape[0]}" + (f" less {audio_alone_rows} audio-alone rows"
                                                     if audio_alone_rows else ""))
        if audio.shape[1] < 1:
            raise ValueError("audio latent has no time steps")

    # ---- forward ------------------------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, audio: torch.Tensor, sigma_video: torch.Tensor,
                sigma_audio: torch.Tensor, text_video: torch.Tensor, text_audio: torch.Tensor, *,
                text_video_lengths: torch.Tensor | None = None, text_audio_lengths: torch.Tensor | None = None,
                skip_blocks: Iterable[int] = (), skip_rows: torch.Tensor | None = None,
                cross_modal: bool = True, cross_modal_rows: torch.Tensor | None = None,
                audio_alone_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities (noise - x0) of both streams.

        video [Bv, Cv, F, H, W]; audio [B, La, Ca]; sigma_* [rows] or [rows, tokens] in [0, 1];
        text_* [rows, Lt, Dt] zero-padded (lengths [rows] are used only when the config masks text padding);
        skip_blocks: fusion blocks to skip (skip-layer guidance); skip_rows [B] bool: skip them only for these
        rows (so a batched guidance step can skip layers on its negative rows alone);
        cross_modal=False: each tower ignores the other (no cross-modal attention);
        cross_modal_rows [Bv] bool: rows whose towers see each other (False: that row's cross-modal attention is
        cut, LTX-2's modality-guidance pass), so one batch can mix both kinds;
        audio_alone_rows: the last k audio rows run the audio tower alone: no video tower, no cross-modal part
        (a sync anchor that costs a fraction of a pass). Bv = B - k.
        Returns (velocity_video [Bv, Cv, F, H, W], velocity_audio [B, La, Ca]) in the compute dtype.
        """
        cfg = self.config
        self._check_latents(video, audio, cfg, audio_alone_rows)
        dtype = self.working_dtype()
        vt, at = self.video_model, self.audio_model
        video_batch, batch = video.shape[0], audio.shape[0]
        video_grid, audio_grid = vt.token_grid(video.shape), at.token_grid(audio.shape)
        n_video, n_audio = video_grid[0] * video_grid[1] * video_grid[2], audio_grid[0]
        skip = set(int(i) for i in skip_blocks)
        bad = [i for i in skip if not 0 <= i < cfg.num_blocks]
        if bad:
            raise ValueError(f"skip_blocks {bad} out of range: this model has blocks 0..{cfg.num_blocks - 1}")
        gate = None
        if cross_modal and cross_modal_rows is not None:
            if tuple(cross_modal_rows.shape) != (video_batch,):
                raise ValueError(f"cross_modal_rows must be [{video_batch}] (one per video row), got "
                                 f"{list(cross_modal_rows.shape)}")
            gate = cross_modal_rows.to(video.device, dtype)

        video_in, audio_in = video.to(dtype), audio.to(dtype)
        t_video = self._timesteps(sigma_video, video_batch, n_video, cfg.timestep_scale, "sigma_video"
                                  ).to(video.device)
        t_audio = self._timesteps(sigma_audio, batch, n_audio, cfg.timestep_scale, "sigma_audio").to(video.device)

        v = vt.embed_tokens(video_in)
        a = at.embed_tokens(audio_in)
        v_emb, v_proj = vt.embed_time(t_video, dtype)
        a_emb, a_proj = at.embed_time(t_audio, dtype)
        v_text = vt.embed_text(text_video.to(video.device, dtype))
        a_text = at.embed_text(text_audio.to(video.device, dtype))
        v_lengths = a_lengths = None
        if cfg.mask_text_padding:
            # A zero-length prompt keeps one (zero) row so the softmax has something to attend.
            v_lengths = None if text_video_lengths is None else text_video_lengths.clamp(min=1)
            a_lengths = None if text_audio_lengths is None else text_audio_lengths.clamp(min=1)
        head_dim = cfg.video.head_dim
        v_rot = Rotation(video_angles(video_grid, head_dim, device=video.device))
        a_rot = Rotation(audio_angles(n_audio, head_dim, cfg.audio.rope_scale, device=video.device))
        windows = None
        if cfg.cross_modal_window_frames is not None and cross_modal:
            windows = window_masks(video_grid, n_audio, cfg.audio.rope_scale, cfg.cross_modal_window_frames,
                                   device=video.device)

        if skip_rows is not None:
            skip_rows = skip_rows.to(video.device, torch.bool)
        for i in range(cfg.num_blocks):
            if i in skip and skip_rows is None:
                continue
            args = (i, v, a, v_proj, a_proj, v_text, a_text, v_lengths, a_lengths, v_rot, a_rot, cross_modal, gate,
                    windows)
            if self.training and self.gradient_checkpointing and torch.is_grad_enabled():
                v_new, a_new = checkpoint(self._fusion_block, *args, use_reentrant=False)
            else:
                v_new, a_new = self._fusion_block(*args)
            if i in skip:  # skip only the chosen rows: keep their block input
                v = torch.where(skip_rows[:video_batch, None, None], v, v_new)
                a = torch.where(skip_rows[:, None, None], a, a_new)
            else:
                v, a = v_new, a_new

        out_video = vt.unpatchify(vt.head(v, v_emb), video_grid)
        out_audio = at.unpatchify(at.head(a, a_emb), audio_grid)
        if cfg.prediction == "x0":
            out_video = self._x0_to_velocity(video_in, out_video, t_video / cfg.timestep_scale, vt, video_grid)
            out_audio = self._x0_to_velocity(audio_in, out_audio, t_audio / cfg.timestep_scale, at, audio_grid)
        return out_video, out_audio

    def _fusion_block(self, i, v, a, v_proj, a_proj, v_text, a_text, v_lengths, a_lengths, v_rot, a_rot,
                      cross_modal, gate=None, windows=None):
        """Block ``i`` of both towers (the one place a forward runs a block: block swap wraps it)."""
        return self.fusion_step(self.video_model.blocks[i], self.audio_model.blocks[i], v, a, v_proj, a_proj,
                                v_text, a_text, v_lengths, a_lengths, v_rot, a_rot, cross_modal, gate, windows)

    def _x0_to_velocity(self, x_sigma: torch.Tensor, x0_hat: torch.Tensor, sigma_tokens: torch.Tensor,
                        tower: Tower, grid) -> torch.Tensor:
        """x0 head: velocity = (x_sigma - x0_hat) / max(sigma, floor), sigma broadcast over the latent."""
        if sigma_tokens.shape[1] == 1:
            sigma_tokens = sigma_tokens.expand(-1, x0_hat.shape[1] if x0_hat.dim() == 3 else
                                               grid[0] * grid[1] * grid[2])
        sigma = tower.tokens_to_latent_layout(sigma_tokens, grid).to(x0_hat.dtype)
        return (x_sigma - x0_hat) / sigma.clamp(min=self.config.x0_sigma_floor)


def fusion_step(video_block, audio_block, v, a, v_proj, a_proj, v_text, a_text, v_lengths, a_lengths, v_rot,
                a_rot, cross_modal: bool, gate=None, windows=None):
    """One fusion block in Ovi's order. v [Bv, Nv, dim], a [B, Na, dim] (the last B - Bv audio rows run alone);
    gate [Bv] or None: per-row switch of the cross-modal attention; windows (video_sees [Nv, Na], audio_sees
    [Na, Nv]) or None: Harmony's local + global interaction instead of global fusion (model/interaction.py)."""
    video_sees, audio_sees = windows if windows is not None else (None, None)
    a_mod = audio_block.modulation(a_proj)
    a = audio_block.self_attention_step(a, a_mod, a_rot)
    v_mod = video_block.modulation(v_proj)
    v = video_block.self_attention_step(v, v_mod, v_rot)
    audio_before_cross = a
    a = audio_block.cross_attention_ffn_step(a, a_mod, a_text, a_lengths, v if cross_modal else None, a_rot, v_rot,
                                             gate, audio_sees)
    v = video_block.cross_attention_ffn_step(v, v_mod, v_text, v_lengths,
                                             audio_before_cross[:v.shape[0]] if cross_modal else None, v_rot, a_rot,
                                             gate, video_sees)
    return v, a
