"""Whisper's 80-mel features of the speech corpus, computed once and cached beside it.

The corpus (`fedsim.asr.corpus`) keeps 40-band features for the LAS model, not audio; Whisper
needs its own front end, so the audio is made again from the corpus's sources (the Allison
prompt files, the LibriVox files, flite re-reading the same KJV clause with the same voice and
speed: flite is deterministic) and featurised by `fedsim.asr.whisper.audio.log_mel` without
padding. Stored float16 `(total_frames, 80)` in `<corpus>/whisper_mel.npy`, utterance i at the
corpus's own order, `offsets[i]:offsets[i+1]`.

`padded(mel, frames)` pads to Whisper's 30 s window with what a zero-padded wave gives: the
floor `max - 2` of the utterance's scaled log-mel (`max(log10 mel, max - 8)`, then `(x + 4) / 4`).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch

from fedsim.asr import corpus as speech
from fedsim.asr.whisper.audio import log_mel

__all__ = ["WhisperMels", "padded", "whisper_mels"]

FORMAT = 1


class WhisperMels:
    """Per-utterance Whisper log-mel `(80, frames)` float32 of a corpus, from the cache."""

    def __init__(self, features: np.ndarray, offsets: np.ndarray) -> None:
        self.features, self.offsets = features, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return torch.from_numpy(np.asarray(self.features[a:b], dtype=np.float32).T.copy())


def padded(mel: torch.Tensor, frames: int = 3000) -> torch.Tensor:
    """`mel` `(80, T)` padded on the right to `frames` with the value zero audio gets."""
    if mel.shape[1] > frames:
        raise ValueError(f"utterance of {mel.shape[1]} frames is longer than {frames} (30 s)")
    return torch.nn.functional.pad(mel, (0, frames - mel.shape[1]), value=float(mel.max()) - 2.0)


def _wave(u: speech.Utterance, clauses: list[str] | None, tmp: Path) -> np.ndarray:
    key = u.uid.split("/", 1)[1]
    if u.source == "asterisk":
        return speech._allison_wave(key)
    if u.source == "librivox":
        wave, rate = soundfile.read(speech.LIBRIVOX / f"{key}.wav", dtype="float32")
        return speech._resample(wave, rate)
    m = re.fullmatch(r"flite-(\w+)-([\d.]+)", u.speaker)
    if not m or clauses is None:
        raise ValueError(f"cannot remake the audio of utterance {u.uid!r} (source {u.source})")
    clause = clauses[int(key.removeprefix("kjv"))]
    return speech._flite(clause, m.group(1), float(m.group(2)), tmp / f"{key}.wav")


def whisper_mels(corpus: speech.Corpus, progress: bool = True) -> WhisperMels:
    """The cached Whisper log-mels of `corpus`, made first when missing (see module docstring)."""
    path, info = corpus.root / "whisper_mel.npy", corpus.root / "whisper_mel.json"
    if info.exists() and json.loads(info.read_text()).get("format") == FORMAT:
        offsets = np.asarray(json.loads(info.read_text())["offsets"], dtype=np.int64)
        return WhisperMels(np.load(path, mmap_mode="r"), offsets)
    needs_kjv = any(u.source == "flite" for u in corpus.utterances)
    clauses = speech._kjv_clauses(speech.kjv_verses()) if needs_kjv else None
    tmp = Path(tempfile.mkdtemp(prefix="fedsim-whisper-"))
    items = corpus.utterances
    if progress:
        from rich.progress import track

        items = track(items, description="Whisper log-mel of the corpus")
    try:
        mels = [log_mel(_wave(u, clauses, tmp)).T.numpy().astype(np.float16) for u in items]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in mels])])
    partial = path.with_name(f"whisper_mel.{np.random.default_rng().integers(1 << 30)}.npy")
    np.save(partial, np.concatenate(mels))
    partial.rename(path)
    info.write_text(json.dumps({"format": FORMAT, "offsets": offsets.tolist()}))
    return WhisperMels(np.load(path, mmap_mode="r"), offsets)
