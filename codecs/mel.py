"""Waveform -> log-mel spectrogram, computed the way MMAudio's 16 kHz VAE and its BigVGAN vocoder were trained.

Torch only (``torch.stft``); the mel filterbank is built here (Slaney mel scale, area-normalised triangles, the
default of librosa's ``filters.mel``), so no audio library is needed.

MMAudio's 16 kHz features: 1024-point FFT of a 1024-sample Hann window every 256 samples (16 ms), 80 mel bands
from 0 to 8 kHz, magnitude (not power) spectrum, ``log10(max(mel, 1e-5))``. The signal is reflect-padded by
``(n_fft - hop) / 2 = 384`` samples each side and framed without centring, so frame ``j`` is centred on the middle of
samples ``[256 j, 256 (j + 1))`` and ``T`` samples give ``T // 256`` frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MelConfig:
    sample_rate_hz: int
    n_fft: int
    hop_samples: int
    window_samples: int
    num_mels: int
    fmin_hz: float
    fmax_hz: float
    log_floor: float = 1e-5            # magnitudes below this are clamped before the log (-5 in log10 units)

    @property
    def side_padding_samples(self) -> int:
        return (self.n_fft - self.hop_samples) // 2

    def num_frames(self, num_samples: int) -> int:
        padded = num_samples + 2 * self.side_padding_samples
        return (padded - self.n_fft) // self.hop_samples + 1 if padded >= self.n_fft else 0


MMAUDIO_16K_MEL = MelConfig(sample_rate_hz=16000, n_fft=1024, hop_samples=256, window_samples=1024, num_mels=80,
                            fmin_hz=0.0, fmax_hz=8000.0)

# Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above (27 mels per factor 6.4).
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_LOG_BREAK_HZ = 1000.0
_LOG_BREAK_MEL = _LOG_BREAK_HZ / _LINEAR_HZ_PER_MEL
_MELS_PER_LOG_UNIT = 27.0 / math.log(6.4)


def hz_to_slaney_mel(hz: torch.Tensor) -> torch.Tensor:
    linear = hz / _LINEAR_HZ_PER_MEL
    logarithmic = _LOG_BREAK_MEL + torch.log(hz.clamp(min=_LOG_BREAK_HZ) / _LOG_BREAK_HZ) * _MELS_PER_LOG_UNIT
    return torch.where(hz >= _LOG_BREAK_HZ, logarithmic, linear)


def slaney_mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    linear = mel * _LINEAR_HZ_PER_MEL
    logarithmic = _LOG_BREAK_HZ * torch.exp((mel - _LOG_BREAK_MEL) / _MELS_PER_LOG_UNIT)
    return torch.where(mel >= _LOG_BREAK_MEL, logarithmic, linear)


def slaney_mel_filterbank(sample_rate_hz: float, n_fft: int, num_mels: int, fmin_hz: float, fmax_hz: float
                          ) -> torch.Tensor:
    """Mel filterbank [num_mels, n_fft // 2 + 1] (float32): triangles between band edges equally spaced on the
    Slaney mel scale, each scaled to unit area per Hz (height 2 / bandwidth), so ``bank @ spectrum`` gives band
    energies that do not grow with the band width."""
    bins_hz = torch.linspace(0.0, sample_rate_hz / 2, n_fft // 2 + 1, dtype=torch.float64)        # [K]
    edges_mel = torch.linspace(float(hz_to_slaney_mel(torch.tensor(fmin_hz, dtype=torch.float64))),
                               float(hz_to_slaney_mel(torch.tensor(fmax_hz, dtype=torch.float64))),
                               num_mels + 2, dtype=torch.float64)
    edges_hz = slaney_mel_to_hz(edges_mel)                                                         # [M + 2]
    widths_hz = edges_hz[1:] - edges_hz[:-1]                                                       # [M + 1]
    offsets = edges_hz[:, None] - bins_hz[None, :]                                                 # [M + 2, K]
    rising = -offsets[:-2] / widths_hz[:-1, None]                    # 0 at the lower edge, 1 at the centre
    falling = offsets[2:] / widths_hz[1:, None]                      # 1 at the centre, 0 at the upper edge
    triangles = torch.minimum(rising, falling).clamp(min=0.0)                                      # [M, K]
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area_norm[:, None]).to(torch.float32)


class LogMelSpectrogram(torch.nn.Module):
    """Waveform [B, T] (or [B, 1, T]) in -1..1 -> log10 mel magnitudes [B, num_mels, T // hop], float32.

    The filterbank and window are non-persistent buffers (not part of any checkpoint) so ``.to(device)`` moves
    them; the transform always runs in float32 (``torch.stft`` has no bfloat16 kernel, and the log of small
    magnitudes needs the precision).
    """

    def __init__(self, config: MelConfig = MMAUDIO_16K_MEL):
        super().__init__()
        self.config = config
        bank = slaney_mel_filterbank(config.sample_rate_hz, config.n_fft, config.num_mels, config.fmin_hz,
                                     config.fmax_hz)
        self.register_buffer("mel_filterbank", bank, persistent=False)                      # [M, n_fft/2 + 1]
        self.register_buffer("window", torch.hann_window(config.window_samples), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if waveform.ndim == 3 and waveform.shape[1] == 1:
            waveform = waveform[:, 0]
        if waveform.ndim != 2:
            raise ValueError(f"LogMelSpectrogram waveform: expected [B, T] or [B, 1, T], received "
                             f"{list(waveform.shape)}")
        pad = cfg.side_padding_samples
        if waveform.shape[1] <= pad:
            raise ValueError(f"LogMelSpectrogram waveform: needs more than {pad} samples for its reflect padding, "
                             f"received {waveform.shape[1]}")
        signal = waveform.to(device=self.window.device, dtype=torch.float32).clamp(-1.0, 1.0)
        signal = F.pad(signal[:, None], (pad, pad), mode="reflect")[:, 0]
        spectrum = torch.stft(signal, cfg.n_fft, hop_length=cfg.hop_samples, win_length=cfg.window_samples,
                              window=self.window, center=False, normalized=False, onesided=True,
                              return_complex=True)                                           # [B, K, frames]
        # The 1e-9 inside the root keeps the gradient finite at exact zeros (as the reference features do).
        magnitude = torch.sqrt(spectrum.real.square() + spectrum.imag.square() + 1e-9)
        mel = torch.matmul(self.mel_filterbank, magnitude)                                   # [B, M, frames]
        return torch.log10(mel.clamp(min=cfg.log_floor))
