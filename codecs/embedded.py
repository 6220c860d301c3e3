"""The embedded default's codecs: fixed orthonormal transforms that ship with the package (no weights, no downloads).

Video (``TinyVideoCodec``): pixels are centred on mid-grey, turned into one luma and two chroma channels by an
orthonormal colour rotation, cut into 2x4x4 (frames x rows x columns) blocks and projected on 16 of the 96 basis
vectors of the orthonormal 3-D DCT of a block: luma keeps the whole 2x2x2 low-frequency cube (mean, temporal
change, vertical and horizontal gradient and their products), each chroma channel keeps its mean, temporal change
and the two gradients. 16 fps, 2x temporal and 4x spatial stride: a 2 s 32x32 clip is 16x8x8 latents.

Audio (``TinyAudioCodec``): an MDCT (sine window, 50 % overlap, hop 64 samples at 8 kHz) whose 32 lowest bins
(0 to 2 kHz) are kept. The MDCT is critically sampled and orthonormal (time-domain aliasing cancels between
neighbouring frames); the first and last frames use a window that is flat on the signal side and zero outside, so
``ceil(T / 64)`` latents cover ``[0, T)`` exactly and 2 s of audio is 250 latents.

Both codecs are linear maps whose rows are orthonormal up to a fixed per-channel gain, so decode(encode(x)) is the
orthogonal projection of ``x`` on the kept basis (what is lost is exactly the energy of the dropped coefficients),
and both are differentiable, batched, and follow the device and dtype of their input. Mid-grey frames and digital
silence encode to exactly zero latents, which makes the SyncCFG anchors (``static_latent``, ``silence_latent``)
zero tensors. docs/codec.md has the measured round-trip error.
"""

from __future__ import annotations

import math

import torch

from .blocks import blocks_to_frames, check_frames, check_latent, frames_to_blocks, require_float
from .interface import AudioCodec, VideoCodec
from ..model.config import TINY_AUDIO_CHANNELS, TINY_VIDEO_CHANNELS


def dct_ii_matrix(size: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix [size, size] (float64); row k is the k-th cosine, so ``coefficients = M @ x``."""
    k = torch.arange(size, dtype=torch.float64)[:, None]
    n = torch.arange(size, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (n + 0.5) * k / size) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix


def mdct_matrix(hop: int) -> torch.Tensor:
    """Orthonormal-convention MDCT kernel [2 * hop, hop] (float64): ``coefficients = windowed_frame @ K``.

    With a window satisfying w[n]^2 + w[n + hop]^2 = 1 the same kernel, transposed, windowed again and
    overlap-added with hop ``hop``, reconstructs the signal exactly (Princen-Bradley time-domain aliasing
    cancellation).
    """
    n = torch.arange(2 * hop, dtype=torch.float64)[:, None]
    k = torch.arange(hop, dtype=torch.float64)[None, :]
    return math.sqrt(2.0 / hop) * torch.cos(math.pi / hop * (n + 0.5 + hop / 2) * (k + 0.5))


def _copy_to(master: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Always a fresh copy: a master made under torch.inference_mode (ComfyUI builds codecs inside nodes) must not
    # leak into a training graph, where autograd refuses to save inference tensors.
    return master.to(device=like.device, dtype=like.dtype, copy=True)


# ----------------------------------------------------------------------------------------------------- video

TINY_VIDEO_FPS = 16.0

# Orthonormal colour rotation, rows = output channels over (R, G, B): luma, red-blue and green-magenta opponents.
# Orthonormal (not BT.601 YCbCr) so that the codec as a whole stays an orthogonal projection.
COLOUR_ROTATION = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, -2.0, 1.0]], dtype=torch.float64)
COLOUR_ROTATION = COLOUR_ROTATION / COLOUR_ROTATION.norm(dim=1, keepdim=True)

# The kept 3-D DCT coefficients, one latent channel each: (colour channel, temporal, vertical, horizontal frequency).
# Measured on bouncing coloured balls (docs/codec.md): after the block means, the energy sits in the first-order
# terms of every colour channel (motion and edges of uniformly coloured objects are as much chroma as luma), then
# in the mixed terms; this set reaches 28.2 dB where the best 16 by measured energy reach 28.5 dB, while keeping
# more luma detail for real footage (34.7 dB vs 33.5 dB on the same clips in greyscale).
TINY_VIDEO_COEFFICIENTS: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1),     # luma: mean, temporal change, d/dy, d/dx
    (0, 1, 1, 0), (0, 1, 0, 1), (0, 0, 1, 1), (0, 1, 1, 1),     # luma: the mixed terms of the 2x2x2 cube
    (1, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 1),     # red-blue: mean, temporal change, d/dy, d/dx
    (2, 0, 0, 0), (2, 1, 0, 0), (2, 0, 1, 0), (2, 0, 0, 1),     # green-magenta: the same
)

# Standard deviation of each kept coefficient (orthonormal units, pixels centred on 0.5) over bouncing coloured
# balls on random plain backgrounds (tests/test_codec.py's generator, another seed); latents are coefficient / std,
# so they have unit variance on that content. The block means vary most because backgrounds vary between clips.
TINY_VIDEO_COEFFICIENT_STD: tuple[float, ...] = (
    1.60, 0.202, 0.210, 0.209, 0.109, 0.107, 0.083, 0.070,
    1.48, 0.194, 0.199, 0.199,
    1.59, 0.190, 0.197, 0.198,
)


class TinyVideoCodec(VideoCodec):
    """Frames [B, F, H, W, 3] in 0..1 <-> latents [B, 16, F/2, H/4, W/4]; 16 fps, non-causal (F = 2 * Fv)."""

    fps = TINY_VIDEO_FPS
    latent_channels = TINY_VIDEO_CHANNELS
    temporal_stride = 2
    spatial_stride = 4
    causal_first_frame = False
    block_size = temporal_stride * spatial_stride * spatial_stride * 3    # values per block: frames x rows x cols x rgb

    def __init__(self):
        if len(TINY_VIDEO_COEFFICIENTS) != self.latent_channels:
            raise ValueError(f"TinyVideoCodec: {len(TINY_VIDEO_COEFFICIENTS)} kept coefficients do not match "
                             f"TINY_VIDEO_CHANNELS = {self.latent_channels}")
        t_dct = dct_ii_matrix(self.temporal_stride)
        s_dct = dct_ii_matrix(self.spatial_stride)
        rows = []
        for colour, t, y, x in TINY_VIDEO_COEFFICIENTS:
            # One basis vector over a block laid out as (frame, row, column, rgb).
            vector = torch.einsum("a,b,c,d->abcd", t_dct[t], s_dct[y], s_dct[x], COLOUR_ROTATION[colour])
            rows.append(vector.reshape(-1))
        self.basis = torch.stack(rows)                                    # [16, 96] orthonormal rows
        self.coefficient_std = torch.tensor(TINY_VIDEO_COEFFICIENT_STD, dtype=torch.float64)   # [16]

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, F, H, W, 3] in 0..1 (clamped) -> latent [B, 16, F/2, H/4, W/4]."""
        check_frames("TinyVideoCodec.encode frames", frames, self.temporal_stride, self.spatial_stride)
        centred = frames.clamp(0.0, 1.0) - 0.5                           # mid-grey -> 0, so grey encodes to 0
        blocks = frames_to_blocks(centred, self.temporal_stride, self.spatial_stride)   # [B, Fv, Hv, Wv, 96]
        analysis = _copy_to(self.basis / self.coefficient_std[:, None], frames)           # [16, 96]
        latent = blocks @ analysis.T                                                       # [B, Fv, Hv, Wv, 16]
        return latent.permute(0, 4, 1, 2, 3).contiguous()

    def preview_rgb_factors(self) -> tuple[list[list[float]], list[float]]:
        """Exact for this linear codec: each channel's basis vector averaged over its block, in -1..1 (a zero latent
        is mid-grey, so no bias)."""
        synthesis = (self.basis * self.coefficient_std[:, None]).reshape(self.latent_channels, -1, 3)
        return (2 * synthesis.mean(dim=1)).tolist(), [0.0, 0.0, 0.0]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 16, Fv, Hv, Wv] -> frames [B, 2 Fv, 4 Hv, 4 Wv, 3] in 0..1 (clamped)."""
        check_latent("TinyVideoCodec.decode latent", latent, self.latent_channels)
        synthesis = _copy_to(self.basis * self.coefficient_std[:, None], latent)          # [16, 96]
        blocks = latent.permute(0, 2, 3, 4, 1) @ synthesis                                 # [B, Fv, Hv, Wv, 96]
        frames = blocks_to_frames(blocks, self.temporal_stride, self.spatial_stride)
        return (frames + 0.5).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------- audio

TINY_AUDIO_SAMPLE_RATE_HZ = 8000
TINY_AUDIO_SAMPLES_PER_LATENT = 64          # MDCT hop: 125 latents per second, 62.5 Hz per bin

# Standard deviation of each kept MDCT bin over click tracks (decaying 300-1500 Hz tones, tests/test_codec.py's
# generator, another seed), floored at a quarter of the largest: bins below 300 Hz and above 1.5 kHz only see click
# onsets there, and unfloored gains of ~100 would blow any other sound (speech, music) far past unit variance.
TINY_AUDIO_BIN_STD: tuple[float, ...] = (
    0.0184, 0.0190, 0.0223, 0.0270, 0.0485, 0.0618, 0.0649, 0.0644,     #    0 -  500 Hz
    0.0663, 0.0620, 0.0701, 0.0703, 0.0729, 0.0703, 0.0667, 0.0677,     #  500 - 1000 Hz
    0.0736, 0.0709, 0.0731, 0.0691, 0.0643, 0.0627, 0.0626, 0.0564,     # 1000 - 1500 Hz
    0.0349, 0.0184, 0.0184, 0.0184, 0.0184, 0.0184, 0.0184, 0.0184,     # 1500 - 2000 Hz
)


class TinyAudioCodec(AudioCodec):
    """Mono waveform [B, 1, T] at 8 kHz <-> latents [B, ceil(T / 64), 32] (125 latents/s, bins 0-2 kHz).

    Latent ``j`` is the MDCT frame centred on samples ``[64 j, 64 (j + 1))``; its window spans 128 samples (16 ms),
    so a sound is never smeared further than 8 ms either side by the band limit. Decoding gives ``64 * La`` samples.
    """

    sample_rate = TINY_AUDIO_SAMPLE_RATE_HZ
    audio_channels = 1
    latent_channels = TINY_AUDIO_CHANNELS
    samples_per_latent = TINY_AUDIO_SAMPLES_PER_LATENT

    def __init__(self):
        hop = self.samples_per_latent
        if not 0 < self.latent_channels <= hop:
            raise ValueError(f"TinyAudioCodec: an MDCT with hop {hop} has {hop} bins, cannot keep "
                             f"TINY_AUDIO_CHANNELS = {self.latent_channels}")
        if len(TINY_AUDIO_BIN_STD) != self.latent_channels:
            raise ValueError(f"TinyAudioCodec: {len(TINY_AUDIO_BIN_STD)} bin scales do not match "
                             f"TINY_AUDIO_CHANNELS = {self.latent_channels}")
        self.kernel = mdct_matrix(hop)[:, :self.latent_channels]                   # [128, 32]
        self.bin_std = torch.tensor(TINY_AUDIO_BIN_STD, dtype=torch.float64)        # [32]

    @property
    def band_limit_hz(self) -> float:
        """Highest frequency the kept bins represent."""
        return self.latent_channels * self.sample_rate / (2 * self.samples_per_latent)

    def frame_windows(self, latent_length: int, like: torch.Tensor) -> torch.Tensor:
        """Windows [La, 2 hop] of the MDCT frames: sine, except the outer halves of the first and last frames.

        Frame ``j`` spans samples ``[hop (j - 1/2), hop (j + 3/2))``. The first frame's outer half is zero on the
        half-hop before sample 0 and one after it (and mirrored for the last frame), which still satisfies
        w[n]^2 + w[hop - 1 - n]^2 = 1 there, so the edge samples reconstruct without a neighbour frame.
        """
        hop, half = self.samples_per_latent, self.samples_per_latent // 2
        n = torch.arange(2 * hop, device=like.device, dtype=torch.float64)
        windows = torch.sin(math.pi * (n + 0.5) / (2 * hop)).repeat(latent_length, 1)
        edge = torch.cat([torch.zeros(half, dtype=torch.float64, device=like.device),
                          torch.ones(hop - half, dtype=torch.float64, device=like.device)])
        windows[0, :hop] = edge
        windows[-1, hop:] = edge.flip(0)
        return windows.to(like.dtype)

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform [B, 1, T] (any T >= 1, zero-padded to a multiple of 64) -> latent [B, ceil(T / 64), 32]."""
        expected = "[B, 1, T] mono at 8 kHz with T >= 1"
        require_float("TinyAudioCodec.encode waveform", waveform, expected)
        if waveform.ndim != 3 or waveform.shape[1] != 1 or waveform.shape[2] < 1:
            hint = (" (downmix with waveform.mean(1, keepdim=True))"
                    if waveform.ndim == 3 and waveform.shape[1] > 1 else "")
            raise ValueError(f"TinyAudioCodec.encode waveform: expected {expected}, "
                             f"received {list(waveform.shape)}{hint}")
        b, _, t = waveform.shape
        hop, half = self.samples_per_latent, self.samples_per_latent // 2
        length = self.latent_length(t)
        # Half a hop of zeros before sample 0 and after the last latent's hop, then 128-sample frames every 64.
        padded = torch.nn.functional.pad(waveform[:, 0], (half, length * hop - t + hop - half))
        chunks = padded.reshape(b, length + 1, hop)
        frames = torch.cat([chunks[:, :-1], chunks[:, 1:]], dim=-1) * self.frame_windows(length, waveform)
        analysis = _copy_to(self.kernel / self.bin_std, waveform)                      # [128, 32]
        return frames @ analysis

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, La, 32] -> waveform [B, 1, 64 La] in -1..1 (clamped)."""
        require_float("TinyAudioCodec.decode latent", latent, f"[B, La, {self.latent_channels}]")
        if latent.ndim != 3 or latent.shape[2] != self.latent_channels or latent.shape[1] < 1:
            raise ValueError(f"TinyAudioCodec.decode latent: expected [B, La, {self.latent_channels}] with La >= 1, "
                             f"received {list(latent.shape)}")
        b, length, _ = latent.shape
        hop, half = self.samples_per_latent, self.samples_per_latent // 2
        synthesis = _copy_to(self.kernel * self.bin_std, latent).T                     # [32, 128]
        frames = (latent @ synthesis) * self.frame_windows(length, latent)             # [B, La, 128]
        # Overlap-add: frame j's first half lands on chunk j, its second half on chunk j + 1 (no in-place writes,
        # so the graph stays differentiable).
        zeros = frames.new_zeros(b, 1, hop)
        chunks = torch.cat([frames[..., :hop], zeros], dim=1) + torch.cat([zeros, frames[..., hop:]], dim=1)
        waveform = chunks.reshape(b, (length + 1) * hop)[:, half:half + length * hop]
        return waveform.clamp(-1.0, 1.0)[:, None]
