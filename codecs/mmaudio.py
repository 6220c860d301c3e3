"""Ovi's audio codec: MMAudio's 16 kHz mel VAE with the BigVGAN vocoder it was trained with.

encode: waveform [B, 1, T] at 16 kHz -> log-mel [B, 80, T // 256] (``mel.py``) -> VAE posterior mean
[B, 20, T // 512] -> latent [B, T // 512, 20], time-major. This is what Ovi feeds its audio tower: the VAE
standardises the mels per band itself and the latent gets no further scaling.
decode: latent [B, La, 20] -> VAE decoder -> log-mel [B, 80, 2 La] -> BigVGAN -> waveform [B, 1, 512 La].

Rates: 512 samples per latent, 31.25 latents per second. Latent ``j`` covers samples ``[512 j, 512 (j + 1))``
(its two mel frames are centred on the two halves), and a trailing part shorter than 512 samples is dropped, as
Ovi does: ``latent_length(T) = T // 512`` (1 s -> 31 latents; Ovi's 121 frames at 24 fps -> 157).
"""

from __future__ import annotations

import os

import torch

from .bigvgan import BigVGANGenerator, load_bigvgan
from .interface import AudioCodec
from .mel import MMAUDIO_16K_MEL, LogMelSpectrogram
from .mmaudio_vae import MMAudioVAE, load_mmaudio_vae
from ..files.safetensors_io import CheckpointError

MMAUDIO_SAMPLE_RATE_HZ = 16000
MMAUDIO_LATENT_CHANNELS = 20
MMAUDIO_SAMPLES_PER_LATENT = 512        # 256-sample mel hop x the VAE's 2x temporal downsampling

_CONVERT_HINT = ("; convert a .pth/.pt checkpoint with: python -m comfyui_syncav convert IN.pth OUT.safetensors")


class MMAudioCodec(AudioCodec):
    """Mono 16 kHz waveform [B, 1, T] <-> latents [B, T // 512, 20] through MMAudio's VAE and BigVGAN.

    The modules run on their own device and dtype; results come back on the input's device and dtype. Encoding and
    decoding are frozen (no gradients).
    """

    sample_rate = MMAUDIO_SAMPLE_RATE_HZ
    audio_channels = 1
    latent_channels = MMAUDIO_LATENT_CHANNELS
    samples_per_latent = MMAUDIO_SAMPLES_PER_LATENT

    def __init__(self, vae: MMAudioVAE, vocoder: BigVGANGenerator):
        mel = MMAUDIO_16K_MEL
        if vae.config.data_dim != mel.num_mels or vocoder.config.num_mels != mel.num_mels:
            raise ValueError(f"MMAudioCodec: the VAE takes {vae.config.data_dim} mel bands and the vocoder "
                             f"{vocoder.config.num_mels}; both must be {mel.num_mels}")
        if vae.config.embed_dim != self.latent_channels:
            raise ValueError(f"MMAudioCodec: the VAE has {vae.config.embed_dim} latent channels, expected "
                             f"{self.latent_channels}")
        if vocoder.hop_samples != mel.hop_samples or \
                mel.hop_samples * vae.config.temporal_stride != self.samples_per_latent:
            raise ValueError(f"MMAudioCodec: expected {mel.hop_samples} samples per mel frame (vocoder: "
                             f"{vocoder.hop_samples}) and {self.samples_per_latent // mel.hop_samples} frames per "
                             f"latent (VAE: {vae.config.temporal_stride})")
        self.vae = vae.eval().requires_grad_(False)
        self.vocoder = vocoder.eval().requires_grad_(False)
        self.mel = LogMelSpectrogram(mel).to(self.device)

    @classmethod
    def from_files(cls, vae_path: str | os.PathLike, vocoder_path: str | os.PathLike,
                   device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "MMAudioCodec":
        """Load the VAE (MMAudio's ``v1-16.pth`` as safetensors) and the vocoder (``best_netG.pt`` as safetensors).

        dtype: the weights' dtype in memory (default float32); the mel transform always runs in float32.
        """
        try:
            vae = load_mmaudio_vae(vae_path, device=device, dtype=dtype)
        except CheckpointError as error:
            raise CheckpointError(f"audio VAE {error}{_CONVERT_HINT if 'not a safetensors' in str(error) else ''}"
                                  ) from None
        try:
            vocoder = load_bigvgan(vocoder_path, device=device, dtype=dtype)
        except CheckpointError as error:
            raise CheckpointError(f"audio vocoder {error}{_CONVERT_HINT if 'not a safetensors' in str(error) else ''}"
                                  ) from None
        return cls(vae, vocoder)

    @property
    def device(self) -> torch.device:
        return self.vae.data_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.data_mean.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "MMAudioCodec":
        """Move (and optionally cast) the VAE and vocoder in place; the mel transform stays float32."""
        self.vae.to(device=device, dtype=dtype)
        self.vocoder.to(device=device, dtype=dtype)
        self.mel.to(device=device)
        return self

    def latent_length(self, num_samples: int) -> int:
        """Latents for ``num_samples`` samples: whole 512-sample blocks only (a shorter tail is dropped)."""
        return num_samples // self.samples_per_latent

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform [B, 1, T] at 16 kHz in -1..1 (clamped), T >= 512 -> latent [B, T // 512, 20]."""
        expected = f"[B, 1, T] mono at {self.sample_rate} Hz with T >= {self.samples_per_latent}"
        if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
            raise ValueError(f"MMAudioCodec.encode waveform: expected a float tensor {expected}, received "
                             f"{type(waveform).__name__} {getattr(waveform, 'dtype', '')}")
        if waveform.ndim != 3 or waveform.shape[1] != 1 or waveform.shape[2] < self.samples_per_latent:
            hint = (" (downmix with waveform.mean(1, keepdim=True))"
                    if waveform.ndim == 3 and waveform.shape[1] > 1 else "")
            raise ValueError(f"MMAudioCodec.encode waveform: expected {expected}, received "
                             f"{list(waveform.shape)}{hint}")
        with torch.no_grad():
            mel = self.mel(waveform[:, 0].to(self.device))                          # [B, 80, T // 256] float32
            mean, _ = self.vae.encode(mel.to(self.dtype))                          # [B, 20, T // 512]
        return mean.transpose(1, 2).to(device=waveform.device, dtype=waveform.dtype).contiguous()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, La, 20] -> waveform [B, 1, 512 La] in -1..1."""
        expected = f"[B, La, {self.latent_channels}] with La >= 1"
        if not isinstance(latent, torch.Tensor) or not latent.is_floating_point():
            raise ValueError(f"MMAudioCodec.decode latent: expected a float tensor {expected}, received "
                             f"{type(latent).__name__} {getattr(latent, 'dtype', '')}")
        if latent.ndim != 3 or latent.shape[2] != self.latent_channels or latent.shape[1] < 1:
            raise ValueError(f"MMAudioCodec.decode latent: expected {expected}, received {list(latent.shape)}")
        with torch.no_grad():
            z = latent.transpose(1, 2).to(device=self.device, dtype=self.dtype)      # [B, 20, La]
            mel = self.vae.decode(z)                                                # [B, 80, 2 La]
            waveform = self.vocoder(mel)                                            # [B, 1, 512 La]
        return waveform.to(device=latent.device, dtype=latent.dtype)
