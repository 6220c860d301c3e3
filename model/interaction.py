"""Harmony's global-local decoupled interaction between the towers (``JointConfig.cross_modal_window_frames``).

Ovi's fusion lets every video token attend every audio token and back. Harmony (and CCL's TARP) restrict the
cross-modal attention to a small temporal window around each token, on a time axis both latent rates share, so the
attention that carries timing cannot smear an impact over the whole clip; the identity of the scene (what is
sounding, what it looks like) travels through a separate global path instead. Here:

- **Local path:** a video token of latent frame f (centre f + 1/2 on the video RoPE axis) attends the audio tokens
  whose centres (j + 1/2) * rope_scale lie within ``window`` of it, and an audio token attends the video frames
  within ``window`` of it: ``window_masks``. Positions are the towers' own RoPE positions (model/rope.py), which
  already put one second at the same angle in both towers, so the window is the same span of seconds both ways.
- **Global path:** every token also receives the other tower's mean token through the cross-modal value
  projection (a one-key attention), so nothing but timing depends on the window.

Both paths reuse the cross-modal projections of Ovi's fusion (``k_fusion``, ``v_fusion``): the option adds no
parameter, and the same weights can be run either way.
"""

from __future__ import annotations

import torch


def window_masks(video_grid: tuple[int, int, int], audio_tokens: int, rope_scale: float, window_frames: float,
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(video_sees [Nv, Na], audio_sees [Na, Nv]) bool: which tokens of the other tower each token attends.

    video_grid (F, H, W) token grid flattened (f, h, w); audio positions are j * rope_scale video frames. Every row
    keeps at least its nearest key, so no token is left without a cross-modal key whatever the clip length.
    """
    frames, height, width = video_grid
    video_centre = torch.arange(frames, dtype=torch.float64) + 0.5                      # [F]
    audio_centre = (torch.arange(audio_tokens, dtype=torch.float64) + 0.5) * rope_scale  # [Na]
    distance = (video_centre[:, None] - audio_centre[None, :]).abs()                      # [F, Na]
    frame_sees_audio = distance <= window_frames
    frame_sees_audio[torch.arange(frames), distance.argmin(dim=1)] = True
    audio_sees_frame = (distance <= window_frames).T.clone()                               # [Na, F]
    audio_sees_frame[torch.arange(audio_tokens), distance.argmin(dim=0)] = True
    per_frame = height * width
    video_sees = frame_sees_audio.repeat_interleave(per_frame, dim=0)                      # [Nv, Na]
    audio_sees = audio_sees_frame.repeat_interleave(per_frame, dim=1)                      # [Na, Nv]
    return video_sees.to(device), audio_sees.to(device)
