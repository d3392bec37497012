"""Whisper's front end: 80-band log-mel of 16 kHz audio, 25 ms windows every 10 ms.

Power spectrum of a periodic-Hann STFT (n_fft 400, hop 160, centred with reflect padding, the
last frame dropped), Slaney-style mel filters (0-8 kHz, area-normalised, as librosa builds them),
then `log10(max(mel, 1e-10))`, floored at 8 below its maximum and mapped by `(x + 4) / 4`
(roughly [-1, 1]). Whisper was trained on 30 s windows: `pad_to_seconds=30` pads the audio with
silence first (3,000 frames); shorter inputs give `2 * audio_frames` ... frames as they are.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torchaudio
from torch import Tensor

__all__ = ["HOP", "N_FFT", "N_MELS", "SAMPLE_RATE", "log_mel", "mel_filters"]

SAMPLE_RATE, N_FFT, HOP, N_MELS = 16000, 400, 160, 80


@cache
def mel_filters(n_mels: int = N_MELS) -> Tensor:
    """Slaney mel filter bank `(n_mels, N_FFT // 2 + 1)` for 16 kHz (computed, not downloaded)."""
    banks = torchaudio.functional.melscale_fbanks(
        N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
    )
    return banks.T.contiguous()


def log_mel(
    wave: np.ndarray | Tensor, pad_to_seconds: float | None = None, n_mels: int = N_MELS
) -> Tensor:
    """Whisper log-mel `(n_mels, frames)` of a 16 kHz mono wave in [-1, 1], frames = samples /
    160 (after padding with zeros to `pad_to_seconds`, when given)."""
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if x.ndim != 1:
        raise ValueError(f"log_mel takes one mono wave (samples,), got shape {tuple(x.shape)}")
    if pad_to_seconds is not None:
        x = torch.nn.functional.pad(x, (0, max(0, int(pad_to_seconds * SAMPLE_RATE) - len(x))))
    spec = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = spec[:, :-1].abs() ** 2
    mel = torch.log10(torch.clamp(mel_filters(n_mels) @ power, min=1e-10))
    mel = torch.maximum(mel, mel.max() - 8.0)
    return (mel + 4.0) / 4.0
