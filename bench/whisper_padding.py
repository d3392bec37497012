"""Whisper tiny.en greedy WER on the 5 LibriVox sentences, by how much the input is padded.

Whisper was trained on 30 s windows; shorter inputs slice the encoder's positions. Settings:
`none` (the utterance as it is), `+Ns` (N seconds of silence appended), `30s` (Whisper's
window). References and hypotheses are normalised by `fedsim.asr.text.normalise` (so "Mr." is
"mr", against the reference "mister").

Usage: `python bench/whisper_padding.py`. Writes `bench/results/whisper_padding.json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import soundfile
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from fedsim.asr.corpus import LIBRIVOX, _librivox  # noqa: E402
from fedsim.asr.metrics import word_error_rate  # noqa: E402
from fedsim.asr.text import normalise  # noqa: E402
from fedsim.asr.whisper.audio import SAMPLE_RATE, log_mel  # noqa: E402
from fedsim.asr.whisper.decoding import greedy_decode  # noqa: E402
from fedsim.asr.whisper.tokenizer import WhisperTokenizer  # noqa: E402
from fedsim.asr.whisper.weights import load_tiny_en, tiny_en_dir  # noqa: E402

SETTINGS = {"none": None, "+2s": 2.0, "+4s": 4.0, "+8s": 8.0, "30s": "window"}


def main() -> None:
    torch.set_num_threads(1)
    model, tok = load_tiny_en(), WhisperTokenizer.from_dir(tiny_en_dir())
    refs, waves = [], []
    for key, text in _librivox():
        wave, _ = soundfile.read(LIBRIVOX / f"{key}.wav", dtype="float32")
        refs.append(text)
        waves.append(wave)
    rows = []
    for name, extra in SETTINGS.items():
        start, hyps = time.perf_counter(), []
        for wave in waves:
            seconds = 30.0 if extra == "window" else None
            if isinstance(extra, float):
                seconds = len(wave) / SAMPLE_RATE + extra
            ids = greedy_decode(model, log_mel(wave, pad_to_seconds=seconds)[None], tok)[0]
            hyps.append(normalise(tok.decode(ids)) or "")
        rows.append({"padding": name, "wer": word_error_rate(refs, hyps), "hypotheses": hyps,
                     "seconds": time.perf_counter() - start})  # fmt: skip
        print(f"| {name} | {rows[-1]['wer']:.3f} | {rows[-1]['seconds']:.1f} s |", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()  # fmt: skip
    (ROOT / "results").mkdir(exist_ok=True)
    out = ROOT / "results" / "whisper_padding.json"
    out.write_text(json.dumps({"commit": commit, "references": refs, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
