"""Frozen Whisper tiny.en encoder states of the speech corpus, computed once and cached (fp16).

`model=las_whisper` trains a LAS decoder over the states of Whisper's pretrained encoder, which
never changes; running the encoder in every client step would cost ~95 % of a round, so the
states are computed once per corpus and stored beside it:

- input: the corpus's Whisper log-mel (`whisper_mel.npy`, no padding to 30 s; the encoder's
  sinusoidal positions are sliced to the input length);
- the encoder (2 convolutions, 4 pre-LN blocks, ln_post) gives `(ceil(T / 2), 384)` at 50 Hz;
- averaged over pairs of frames: `(ceil(T / 4), 384)` at 25 Hz (T = 10 ms frames);
- stored float16 `(total, 384)` in `<corpus>/whisper_enc.npy`, utterance i at rows
  `offsets[i]:offsets[i + 1]` (`whisper_enc.json`).

Each utterance's states are those of the utterance encoded alone: batches only group
utterances of the same length (padding would move the states of the last ~0.5 s: Whisper's
encoder attends over the whole input).
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.asr import corpus as speech
from fedsim.asr.whisper.features import Ragged, padded, whisper_mels

__all__ = ["ENCODER_DIM", "encode", "encoder_states"]

ENCODER_DIM = 384  # tiny.en's n_audio_state
FORMAT = 1


@torch.no_grad()
def encode(encoder: torch.nn.Module, mels: list[torch.Tensor]) -> list[np.ndarray]:
    """Pooled encoder states `(ceil(T_i / 4), d)` float32 of log-mels `(80, T_i)`, one batch
    (padded to its longest: give utterances of one length for states that match them alone)."""
    width = max(m.shape[1] for m in mels)
    width += width % 2
    x = torch.stack([padded(m, width) for m in mels])
    states = encoder(x)  # (B, width / 2, d)
    out = []
    for m, h in zip(mels, states, strict=True):
        h = h[: (m.shape[1] + 1) // 2]
        pooled = F.avg_pool1d(h.T[None], 2, 2, ceil_mode=True)[0].T
        out.append(pooled.numpy())
    return out


def _batches(frames: np.ndarray, max_frames: int) -> list[np.ndarray]:
    """Utterance indices sorted by length, in batches of one length and <= `max_frames` frames."""
    order = np.argsort(frames, kind="stable")
    batches, current = [], []
    for i in order:
        full = (len(current) + 1) * int(frames[i]) > max_frames
        if current and (full or frames[current[0]] != frames[i]):
            batches.append(np.array(current))
            current = []
        current.append(int(i))
    return batches + ([np.array(current)] if current else [])


def encoder_states(
    corpus: speech.Corpus, progress: bool = True, max_frames: int = 24_000
) -> Ragged:
    """The cached pooled encoder states `(frames, 384)` of every utterance of `corpus`, made
    first when missing (see the module docstring; ~1 min per hour of audio on 2 cores)."""
    path, info = corpus.root / "whisper_enc.npy", corpus.root / "whisper_enc.json"
    if info.exists() and json.loads(info.read_text()).get("format") == FORMAT:
        offsets = np.asarray(json.loads(info.read_text())["offsets"], dtype=np.int64)
        return Ragged(np.load(path, mmap_mode="r"), offsets)
    from fedsim.asr.whisper.weights import load_tiny_en

    encoder = load_tiny_en().encoder
    mels = whisper_mels(corpus)
    lengths = np.diff(mels.offsets)
    batches = _batches(lengths, max_frames)
    if progress:
        from rich.progress import track

        batches = track(batches, description="Whisper encoder states of the corpus")
    start, states = time.perf_counter(), [None] * len(mels)
    for batch in batches:
        for i, h in zip(batch, encode(encoder, [mels[int(i)] for i in batch]), strict=True):
            states[int(i)] = h.astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in states])])
    partial = path.with_name(f"whisper_enc.{np.random.default_rng().integers(1 << 30)}.npy")
    np.save(partial, np.concatenate(states))
    partial.rename(path)
    seconds = round(time.perf_counter() - start, 1)
    info.write_text(json.dumps({"format": FORMAT, "seconds": seconds, "offsets": offsets.tolist()}))
    return Ragged(np.load(path, mmap_mode="r"), offsets)
