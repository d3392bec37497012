"""The offline speech corpus: real prompts + synthesised Bible sentences -> cached log-mel features.

Sources (Debian packages, all offline):
- `asterisk-core-sounds-en-g722` + `asterisk-core-sounds-en`: studio prompts by one speaker
  (Allison Smith), G.722 at 16 kHz decoded with PyPI `g722`; transcripts from
  `/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz`.
- `pocketsphinx-testdata`: 5 LibriVox sentences (16 kHz wav).
- `flite` voices slt, rms, awb, kal16 at several speeds (duration stretch), reading clauses of the
  King James Bible (`bible-kjv`, public domain).
- Held-out voices (`fedsim.asr.voices`: festival `ked`, piper `joe`, espeak-ng) reading KJV
  clauses that no other utterance reads: the unseen-voice test splits `test-<voice>`.

`build_corpus` synthesises, decodes and featurises once into `<cache>/asr/<size>/` (cache:
`$FEDSIM_CACHE` or `~/.cache/fedsim`); `load_corpus` reuses it. Features: 40 log-mel bands, 25 ms
windows every 10 ms, normalised per utterance (zero mean, unit variance per band), stored float16;
and Whisper's 80-band log-mel of the same audio (`whisper_mel.npy`, float16, `(frames, 80)`).
Speaker ids: "allison", "librivox", "flite-<voice>-<stretch>" (14 in the default corpus), and the
held-out voices' names, kept for non-IID partitions. Splits: "train", "test" (unseen sentences,
seen speakers) and "test-<voice>" (unseen sentences, unseen voice). Run
`python -m fedsim.asr.corpus --size default` to prepare it (`--size large`: 10 h, ~10 min).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio

from fedsim.asr.text import normalise
from fedsim.asr.voices import HELDOUT_VOICES, check_voices, synthesize

__all__ = ["SIZES", "Corpus", "Utterance", "build_corpus", "cache_root", "load_corpus", "log_mel"]

ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ALLISON_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
SAMPLE_RATE, N_MELS, HOP = 16000, 40, 160
FORMAT = 2  # bump when the stored layout or features change

# asterisk: how many prompts (None = all); flite: KJV clauses synthesised, one voice/speed each;
# heldout: KJV clauses read by each held-out voice (unseen-voice test splits).
_FLITE = {"voices": ("slt", "rms", "awb", "kal16"), "stretches": (0.9, 1.0, 1.15)}
SIZES: dict[str, dict] = {
    "tiny": {"asterisk": 8, "flite": 12, "voices": ("kal16", "awb"), "stretches": (1.0,),
             "heldout": 0},
    "small": {"asterisk": 100, "flite": 300, **_FLITE, "heldout": 0},
    "default": {"asterisk": None, "flite": 2000, **_FLITE, "heldout": 0},
    "large": {"asterisk": None, "flite": 10000, **_FLITE, "heldout": 150},  # 10.3 h of flite
}  # fmt: skip


@dataclass(frozen=True)
class Utterance:
    """One utterance: id, speaker (voice) id, source, normalised transcript, split, and where its
    features `(frames, 40)` lie in the corpus feature array."""

    uid: str
    speaker: str
    source: str
    text: str
    split: str
    offset: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames * HOP / SAMPLE_RATE


@dataclass(frozen=True)
class Corpus:
    """A built corpus. `features` is the float16 `(total_frames, 40)` array (memory-mapped)."""

    root: Path
    utterances: tuple[Utterance, ...]
    features: np.ndarray
    info: dict

    def __len__(self) -> int:
        return len(self.utterances)

    def feature(self, i: int) -> np.ndarray:
        """Log-mel features of utterance i, float32 `(frames, 40)`."""
        u = self.utterances[i]
        return np.asarray(self.features[u.offset : u.offset + u.frames], dtype=np.float32)

    @property
    def splits(self) -> tuple[str, ...]:
        """The corpus's splits: "train", "test", then any "test-<voice>" (held-out voices)."""
        names = {u.split for u in self.utterances} | {"train", "test"}
        return ("train", "test", *sorted(names - {"train", "test"}))

    def indices(self, split: str) -> np.ndarray:
        """Indices of the utterances of `split` (one of `splits`)."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this corpus has {list(self.splits)}")
        return np.array([i for i, u in enumerate(self.utterances) if u.split == split], dtype=int)

    @property
    def text_path(self) -> Path:
        """Normalised text for the tokenizer: all transcripts, plus the whole KJV when the
        corpus uses it (one sentence per line)."""
        return self.root / "text.txt"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$FEDSIM_CACHE`, else `~/.cache/fedsim`; the corpus lives in `asr/`."""
    base = cache_dir or os.environ.get("FEDSIM_CACHE") or Path.home() / ".cache" / "fedsim"
    return Path(base) / "asr"


@cache
def _mel() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        SAMPLE_RATE, n_fft=400, win_length=400, hop_length=HOP, n_mels=N_MELS
    )


def log_mel(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per-utterance normalised log-mel features `(frames, 40)` of a mono wave in [-1, 1]."""
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if sample_rate != SAMPLE_RATE:
        x = torchaudio.functional.resample(x, sample_rate, SAMPLE_RATE)
    with torch.no_grad():
        feats = torch.log(_mel()(x) + 1e-6).T  # (frames, n_mels)
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-5)
    return feats.numpy()


# ----------------------------------------------------------------------------- sources


def _check_sources(needs_kjv: bool, heldout: tuple[str, ...] = ()) -> None:
    missing = [
        f"{path} (apt-get install {pkg})"
        for path, pkg in [
            (ALLISON, "asterisk-core-sounds-en-g722"),
            (ALLISON_TEXT, "asterisk-core-sounds-en"),
            (LIBRIVOX, "pocketsphinx-testdata"),
        ]
        if not path.exists()
    ]
    for tool, pkg in [("flite", "flite")] + ([("bible", "bible-kjv")] if needs_kjv else []):
        if shutil.which(tool) is None:
            missing.append(f"the `{tool}` program (apt-get install {pkg})")
    if missing:
        raise ValueError("the speech corpus needs: " + "; ".join(missing))
    check_voices(heldout)


def _allison_prompts() -> Iterator[tuple[str, str]]:
    """(key, normalised text) of every asterisk prompt with a spoken, normalisable transcript."""
    with gzip.open(ALLISON_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"^([\w/\-]+):\s*(.*)$", line.strip())
            if not m or m.group(2).startswith("[") or m.group(1).startswith("silence/"):
                continue
            text = normalise(m.group(2))
            if text and (ALLISON / f"{m.group(1)}.g722").exists():
                yield m.group(1), text


def _allison_wave(key: str) -> np.ndarray:
    import G722  # PyPI g722: the ITU-T G.722 decoder (16 kHz out at 64 kbit/s)

    data = (ALLISON / f"{key}.g722").read_bytes()
    pcm = np.asarray(G722.G722(SAMPLE_RATE, 64000).decode(data), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def _librivox() -> Iterator[tuple[str, str]]:
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"^<s>(.*)</s>\s*\((.+)\)$", line.strip())
        if m and (text := normalise(m.group(1))):
            yield m.group(2), text


def kjv_verses() -> list[str]:
    """The 31,102 verses of the King James Bible (original spelling and punctuation)."""
    out = subprocess.run(
        ["bible", "-l0", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    return [m.group(1) for line in out.splitlines() if (m := re.match(r"^\s+\d+\s+(.*)$", line))]


def _kjv_clauses(verses: list[str], min_words: int = 2, max_words: int = 20) -> list[str]:
    """Distinct clauses (split at . ; : ? !) of 2..20 words, original casing (for prosody)."""
    seen, out = set(), []
    for verse in verses:
        for clause in re.split(r"(?<=[.;:?!])\s+", verse):
            clause = clause.strip(" ,")
            text = normalise(clause)
            if text and min_words <= len(text.split()) <= max_words and text not in seen:
                seen.add(text)
                out.append(clause)
    return out


def _flite(text: str, voice: str, stretch: float, path: Path) -> np.ndarray:
    subprocess.run(
        ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text, "-o", path],
        check=True,
        capture_output=True,
    )
    wave, rate = soundfile.read(path, dtype="float32")
    path.unlink()
    return _resample(wave, rate)


# ----------------------------------------------------------------------------- build


def _progress(items, total: int, description: str | None):
    if description is None:
        return items
    from rich.progress import track

    return track(items, description=description, total=total)


def build_corpus(
    size: str = "default",
    cache_dir: str | os.PathLike | None = None,
    flite_utterances: int | None = None,
    heldout_utterances: int | None = None,
    max_seconds: float = 16.0,
    test_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Build the corpus of `size` ("tiny", "small", "default") once; returns its folder.

    Args:
        flite_utterances: override the number of synthesised KJV clauses of the size.
        heldout_utterances: override the KJV clauses per held-out voice (0: no such splits).
        max_seconds: drop longer utterances (a few long asterisk menus) to bound memory and time.
        test_fraction: share of sentences (seeded hash of the text) in the test split (>= 1).
        workers: parallel flite processes.
        force: rebuild even if a matching cached build exists.
    """
    if size not in SIZES:
        raise ValueError(f"unknown corpus size {size!r}; use one of {sorted(SIZES)}")
    opts = dict(SIZES[size])
    if flite_utterances is not None:
        opts["flite"] = int(flite_utterances)
    if heldout_utterances is not None:
        opts["heldout"] = int(heldout_utterances)
    wanted = {"format": FORMAT, "size": size, "seed": seed, "max_seconds": max_seconds,
              "test_fraction": test_fraction, **{k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in opts.items()}}  # fmt: skip
    root = cache_root(cache_dir) / size
    info_path = root / "info.json"
    if not force and info_path.exists() and json.loads(info_path.read_text())["options"] == wanted:
        return root
    heldout = HELDOUT_VOICES if opts["heldout"] > 0 else ()
    _check_sources(needs_kjv=opts["flite"] + opts["heldout"] > 0, heldout=heldout)
    start = time.perf_counter()
    verses = kjv_verses() if opts["flite"] + opts["heldout"] > 0 else []
    sources = _collect_sources(opts, verses, np.random.default_rng(seed))
    description = f"ASR corpus ({size})" if progress else None
    kept, feats, mels, dropped = _featurise(sources, workers, max_seconds, description)
    utterances, n_test = _split(kept, feats, test_fraction, seed)
    info = {
        "options": wanted,
        "utterances": len(utterances),
        "dropped_too_long": dropped,
        "hours": sum(u.frames for u in utterances) * HOP / SAMPLE_RATE / 3600,
        "words": sum(len(u.text.split()) for u in utterances),
        "speakers": sorted({u.speaker for u in utterances}),
        "test_utterances": n_test,
        "heldout_utterances": {v: sum(u.speaker == v for u in utterances) for v in heldout},
        "build_seconds": time.perf_counter() - start,
    }
    _write(root, feats, mels, utterances, verses, info)
    return root


@dataclass(frozen=True)
class _Source:
    """One utterance to build: ids, normalised transcript, and what to decode or synthesise."""

    uid: str
    speaker: str
    source: str  # "asterisk", "librivox", "flite" or "heldout"
    text: str
    how: Any  # asterisk, librivox: the file's key; flite: (text as written, voice, stretch);
    # heldout: (text as written, voice)


def _collect_sources(opts: dict, verses: list[str], rng: np.random.Generator) -> list[_Source]:
    """The asterisk prompts (a seeded sample when the size caps them), the LibriVox sentences,
    seeded KJV clauses, each with a seeded flite voice and speed, and for each held-out voice
    `opts["heldout"]` further clauses that no flite utterance reads."""
    prompts = sorted(_allison_prompts())
    if opts["asterisk"] is not None:
        prompts = [prompts[i] for i in sorted(rng.permutation(len(prompts))[: opts["asterisk"]])]
    sources = [_Source(f"allison/{key}", "allison", "asterisk", text, key) for key, text in prompts]
    for key, text in _librivox():
        sources.append(_Source(f"librivox/{key}", "librivox", "librivox", text, key))
    clauses = _kjv_clauses(verses)
    chosen = sorted(rng.choice(len(clauses), size=min(opts["flite"], len(clauses)), replace=False))
    combos = [(v, s) for v in opts["voices"] for s in opts["stretches"]]
    for c in chosen:
        voice, stretch = combos[int(rng.integers(len(combos)))]
        speaker = f"flite-{voice}-{stretch:g}"
        how = (clauses[c], voice, stretch)
        sources.append(
            _Source(f"{speaker}/kjv{c:05d}", speaker, "flite", normalise(clauses[c]), how)
        )
    rest = np.random.default_rng(rng.integers(1 << 31)).permutation(
        np.setdiff1d(np.arange(len(clauses)), chosen)
    )
    for v, voice in enumerate(HELDOUT_VOICES if opts["heldout"] > 0 else ()):
        for c in sorted(rest[v * opts["heldout"] : (v + 1) * opts["heldout"]]):
            how = (clauses[c], voice)
            sources.append(
                _Source(f"{voice}/kjv{c:05d}", voice, "heldout", normalise(clauses[c]), how)
            )
    return sources


def _wave(source: _Source, tmp: Path) -> np.ndarray:
    """The 16 kHz mono wave of `source` (flite writes its file under `tmp`)."""
    if source.source == "asterisk":
        return _allison_wave(source.how)
    if source.source == "librivox":
        wave, rate = soundfile.read(LIBRIVOX / f"{source.how}.wav", dtype="float32")
        return _resample(wave, rate)
    if source.source == "heldout":
        return synthesize(*source.how, tmp)
    text, voice, stretch = source.how
    return _flite(text, voice, stretch, tmp / (source.uid.replace("/", "_") + ".wav"))


def _featurise(
    sources: list[_Source], workers: int, max_seconds: float, description: str | None
) -> tuple[list[_Source], list[np.ndarray], list[np.ndarray], int]:
    """The sources kept, their float16 log-mel features `(frames, 40)` and Whisper log-mels
    `(frames, 80)`, and how many were dropped (longer than `max_seconds` or shorter than 4
    hops). Waves come from `workers` threads; a progress bar shows `description` unless None."""
    from fedsim.asr.whisper.audio import log_mel as whisper_log_mel

    tmp = Path(tempfile.mkdtemp(prefix="fedsim-asr-"))
    kept, feats, mels, dropped = [], [], [], 0
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            waves = pool.map(lambda source: _wave(source, tmp), sources)
            for source, wave in _progress(zip(sources, waves), len(sources), description):
                if len(wave) / SAMPLE_RATE > max_seconds or len(wave) < 4 * HOP:
                    dropped += 1
                    continue
                feats.append(log_mel(wave).astype(np.float16))
                mels.append(whisper_log_mel(wave).T.numpy().astype(np.float16))
                kept.append(source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return kept, feats, mels, dropped


def _split(
    sources: list[_Source], feats: list[np.ndarray], test_fraction: float, seed: int
) -> tuple[list[Utterance], int]:
    """The utterances, laid out one after another in the feature array, and the size of the
    test split. A sentence is "test" by its text alone (a seeded hash below `test_fraction`), so
    it is a test sentence in every corpus size and whoever reads it: a model trained on one
    size's train split has never seen a sentence of another size's test split (at least one
    test utterance). Held-out voices' utterances form the split `test-<voice>`."""
    seen = [i for i, s in enumerate(sources) if s.source != "heldout"]
    rank = {i: zlib.crc32(f"{seed}:{sources[i].text}".encode()) / 2**32 for i in seen}
    test = {i for i in seen if rank[i] < test_fraction} or {min(seen, key=rank.__getitem__)}
    n_test = len(test)
    utterances, offset = [], 0
    for i, (s, f) in enumerate(zip(sources, feats, strict=True)):
        split = f"test-{s.speaker}" if s.source == "heldout" else "test" if i in test else "train"
        utterances.append(Utterance(s.uid, s.speaker, s.source, s.text, split, offset, len(f)))
        offset += len(f)
    return utterances, n_test


def _write(
    root: Path,
    feats: list[np.ndarray],
    mels: list[np.ndarray],
    utterances: list[Utterance],
    verses: list[str],
    info: dict,
) -> None:
    """Write the corpus to a private folder, then move it to `root` (replacing an old build)."""
    out = root.with_name(f"{root.name}.{os.getpid()}.partial")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    np.save(out / "features.npy", np.concatenate(feats))
    np.save(out / "whisper_mel.npy", np.concatenate(mels))
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in mels])])
    (out / "whisper_mel.json").write_text(json.dumps({"offsets": offsets.tolist()}))
    (out / "utterances.jsonl").write_text("".join(json.dumps(asdict(u)) + "\n" for u in utterances))
    kjv_text = [t for v in verses if (t := normalise(v))]
    (out / "text.txt").write_text("\n".join([u.text for u in utterances] + kjv_text) + "\n")
    (out / "info.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    out.rename(root)


def _resample(wave: np.ndarray, rate: int) -> np.ndarray:
    """A mono wave at `rate` Hz resampled to 16 kHz."""
    if rate == SAMPLE_RATE:
        return wave
    return torchaudio.functional.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()


def load_corpus(
    size: str = "default", cache_dir: str | os.PathLike | None = None, **build_options
) -> Corpus:
    """The corpus of `size`, built first if it is not cached (see `build_corpus`)."""
    root = build_corpus(size, cache_dir, **build_options)
    lines = (root / "utterances.jsonl").read_text().splitlines()
    utterances = tuple(Utterance(**json.loads(line)) for line in lines)
    features = np.load(root / "features.npy", mmap_mode="r")
    return Corpus(root, utterances, features, json.loads((root / "info.json").read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare the offline ASR corpus (cached).")
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--flite-utterances", type=int, default=None)
    parser.add_argument("--heldout-utterances", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    corpus = load_corpus(
        args.size, args.cache_dir, flite_utterances=args.flite_utterances,
        heldout_utterances=args.heldout_utterances, workers=args.workers, force=args.force,
    )  # fmt: skip
    info = {k: v for k, v in corpus.info.items() if k != "options"}
    print(f"{corpus.root}: " + json.dumps(info))


if __name__ == "__main__":
    main()
