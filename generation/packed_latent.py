"""One tensor that carries both streams of a clip through samplers that know a single latent (ComfyUI's).

ComfyUI's samplers, noise and sigma nodes work on one latent tensor. Current ComfyUI carries an audio-video latent
as a ``NestedTensor((video, audio))``; older versions (0.3.64, which this package supports) have no such type, so
SyncAV packs the two streams into one 5-D tensor laid out like the video latent, with the audio in extra columns::

    packed [B, Cv, F, H, W + Wa]:  [..., :W] = video [B, Cv, F, H, W]
                                   [..., W:] = audio [B, La, Ca] flattened per row into Cv*F*H*Wa slots, the
                                               slack after La*Ca values zero (it is never read)

so a sampler's elementwise arithmetic and per-row noise act on both streams, ComfyUI's latent previews show the
frames (the audio is a band on the right edge), and the layout is read back from the packed shape alone: F and H
fix the audio length through the codecs (``AVPipeline.audio_latent_length``), hence Wa, hence W. Plain torch.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch


class PackedAVLayout(NamedTuple):
    """Where each stream sits in a packed latent: video [B, Cv, F, H, W], audio [B, La, Ca]."""

    video_shape: tuple[int, ...]
    audio_shape: tuple[int, ...]

    @property
    def audio_columns(self) -> int:
        """Wa: the columns that hold the audio (at least one)."""
        _, cv, f, h, _ = self.video_shape
        return max(1, math.ceil(math.prod(self.audio_shape[1:]) / (cv * f * h)))

    @property
    def packed_shape(self) -> tuple[int, ...]:
        b, cv, f, h, w = self.video_shape
        return (b, cv, f, h, w + self.audio_columns)

    def pack(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """video [B, Cv, F, H, W] + audio [B, La, Ca] -> packed [B, Cv, F, H, W + Wa] (video's dtype/device)."""
        if tuple(video.shape[1:]) != tuple(self.video_shape[1:]) or tuple(audio.shape[1:]) != \
                tuple(self.audio_shape[1:]) or audio.shape[0] != video.shape[0]:
            raise ValueError(f"pack: expected video [B, {', '.join(map(str, self.video_shape[1:]))}] and audio "
                             f"[B, {', '.join(map(str, self.audio_shape[1:]))}], got {list(video.shape)} and "
                             f"{list(audio.shape)}")
        b, cv, f, h, _ = video.shape
        slots = cv * f * h * self.audio_columns
        flat = audio.reshape(b, -1).to(video.dtype)
        columns = torch.cat([flat, flat.new_zeros(b, slots - flat.shape[1])], dim=1)
        return torch.cat([video, columns.reshape(b, cv, f, h, self.audio_columns)], dim=4)

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """packed [B, Cv, F, H, W + Wa] -> (video [B, Cv, F, H, W], audio [B, La, Ca]) (views where possible)."""
        if tuple(packed.shape[1:]) != tuple(self.packed_shape[1:]):
            raise ValueError(f"unpack: expected a packed latent [B, {', '.join(map(str, self.packed_shape[1:]))}], "
                             f"got {list(packed.shape)}")
        b, width = packed.shape[0], self.video_shape[4]
        audio_values = math.prod(self.audio_shape[1:])
        audio = packed[..., width:].reshape(b, -1)[:, :audio_values].reshape(b, *self.audio_shape[1:])
        return packed[..., :width], audio


def layout_of_packed(packed_shape, audio_length: Callable[[int], int], audio_channels: int) -> PackedAVLayout:
    """The layout of a packed latent from its shape [B, Cv, F, H, W + Wa].

    audio_length(latent_frames) -> La: the codecs' audio latent length for a video latent of F frames;
    audio_channels: Ca. A ValueError for a shape no layout fits (a latent not made by SyncAV Empty AV Latent).
    """
    shape = tuple(int(s) for s in packed_shape)
    if len(shape) != 5:
        raise ValueError(f"expected a packed audio-video latent [B, C, F, H, W] (from SyncAV Empty AV Latent), got "
                         f"shape {list(shape)}")
    b, cv, f, h, total_width = shape
    audio_shape = (b, int(audio_length(f)), int(audio_channels))
    width = total_width - PackedAVLayout((b, cv, f, h, 1), audio_shape).audio_columns
    if width < 1:
        raise ValueError(f"a latent of shape {list(shape)} cannot hold video and a {audio_shape[1]}-step audio "
                         "latent: make it with SyncAV Empty AV Latent from the same loader")
    return PackedAVLayout((b, cv, f, h, width), audio_shape)
