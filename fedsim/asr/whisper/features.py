"""Whisper's 80-mel features of the speech corpus, stored beside it by the corpus build.

The corpus build (`fedsim.asr.corpus`) featurises each wave twice: 40 bands for the LAS model
and `fedsim.asr.whisper.audio.log_mel` (no padding) for Whisper, stored float16
`(total_frames, 80)` in `<corpus>/whisper_mel.npy`, utterance i at the corpus's own order,
`offsets[i]:offsets[i+1]` (`whisper_mel.json`).

`padded(mel, frames)` pads to Whisper's 30 s window with what a zero-padded wave gives: the
floor `max - 2` of the utterance's scaled log-mel (`max(log10 mel, max - 8)`, then `(x + 4) / 4`).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from fedsim.asr import corpus as speech

__all__ = ["Ragged", "WhisperMels", "padded", "whisper_mels"]


class Ragged:
    """Per-utterance rows of one stored `(total, dim)` array: utterance i is
    `features[offsets[i]:offsets[i + 1]]`, returned float32 `(frames, dim)`."""

    def __init__(self, features: np.ndarray, offsets: np.ndarray) -> None:
        self.features, self.offsets = features, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def rows(self, i: int) -> np.ndarray:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.features[a:b], dtype=np.float32)

    __getitem__ = rows


class WhisperMels(Ragged):
    """Per-utterance Whisper log-mel `(80, frames)` float32 of a corpus, from the cache."""

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.rows(i).T.copy())


def padded(mel: torch.Tensor, frames: int = 3000) -> torch.Tensor:
    """`mel` `(80, T)` padded on the right to `frames` with the value zero audio gets."""
    if mel.shape[1] > frames:
        raise ValueError(f"utterance of {mel.shape[1]} frames is longer than {frames} (30 s)")
    return torch.nn.functional.pad(mel, (0, frames - mel.shape[1]), value=float(mel.max()) - 2.0)


def whisper_mels(corpus: speech.Corpus) -> WhisperMels:
    """The Whisper log-mels of `corpus`, stored by its build (see module docstring)."""
    path, info = corpus.root / "whisper_mel.npy", corpus.root / "whisper_mel.json"
    if not info.exists():
        raise ValueError(
            f"{corpus.root} has no Whisper log-mels (built by an older fedsim); rebuild it: "
            f"python -m fedsim.asr.corpus --size {corpus.info['options']['size']} --force"
        )
    offsets = np.asarray(json.loads(info.read_text())["offsets"], dtype=np.int64)
    return WhisperMels(np.load(path, mmap_mode="r"), offsets)
