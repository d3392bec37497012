"""Whisper's byte-level BPE tokenizer (GPT-2's, 51,864 ids for the English-only models).

Read from the package's `tokenizer.json` with the `tokenizers` library. A transcript of the task
`"and mister john"` is trained as `" And mister john."` (`styled`; Whisper's text starts with a
space).
Teacher forcing: the decoder reads `[sot, notimestamps, t1..tn]` and is scored on `[t1..tn, eot]`
at positions 1..n+1 (position 0, predicting notimestamps, is the prompt and not scored).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

__all__ = ["WhisperTokenizer", "styled"]


def styled(text: str) -> str:
    """A normalised transcript ("as i live saith the lord") in the style Whisper writes: first
    letter and the pronoun I capitalised, a final period ("As I live saith the lord."). Training
    on the bare form would spend the first steps unlearning case and punctuation, and the rows
    of "The", "." and the like (which the model then predicts with near certainty instead of the
    targets) would look like read tokens to the tied-embedding read-out."""
    text = re.sub(r"\bi\b", "I", text.strip())
    return (text[:1].upper() + text[1:] + ".") if text else text


@dataclass(frozen=True)
class WhisperTokenizer:
    """Whisper's tokenizer and special ids, from `tokenizer.json` (and `config.json` beside it
    for the ids greedy decoding suppresses)."""

    path: Path
    _special: dict[str, int] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        data = json.loads(Path(self.path).read_text())
        self._special.update({t["content"]: t["id"] for t in data["added_tokens"]})

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> WhisperTokenizer:
        return cls(Path(folder) / "tokenizer.json")

    @cached_property
    def _tok(self):
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            hint = "Whisper's tokenizer needs `tokenizers`: pip install 'fedsim[whisper]'"
            raise ImportError(hint) from err
        return Tokenizer.from_file(str(self.path))

    def special(self, content: str) -> int:
        if content not in self._special:
            raise ValueError(f"{self.path} has no special token {content!r}")
        return self._special[content]

    @property
    def eot(self) -> int:
        return self.special("<|endoftext|>")

    @property
    def sot(self) -> int:
        return self.special("<|startoftranscript|>")

    @property
    def no_timestamps(self) -> int:
        return self.special("<|notimestamps|>")

    @property
    def period(self) -> int:
        return int(self._tok.token_to_id("."))

    @property
    def protocol_labels(self) -> tuple[int, ...]:
        """Labels every `targets` holds: the period `styled` ends with, and eot."""
        return (self.period, self.eot)

    @property
    def prompt(self) -> tuple[int, ...]:
        """The decoder's fixed start, English-only model without timestamps: sot, notimestamps."""
        return (self.sot, self.no_timestamps)

    @cached_property
    def vocab_size(self) -> int:
        """Rows of the model's embedding: the lines of `vocabulary.txt` beside the tokenizer
        (51,864 for tiny.en: `tokenizer.json` lacks the timestamp ids)."""
        with open(Path(self.path).parent / "vocabulary.txt", encoding="utf-8") as f:
            return sum(1 for _ in f)

    def encode(self, text: str) -> list[int]:
        """Text ids of `" " + text` (no special tokens)."""
        return self._tok.encode(" " + text.strip(), add_special_tokens=False).ids

    def targets(self, text: str) -> list[int]:
        """Scored targets of a normalised transcript: the ids of its Whisper-style form
        (`styled`), then eot."""
        return [*self.encode(styled(text)), self.eot]

    def decode(self, ids: list[int]) -> str:
        """Text of ids; special ids (>= eot) are dropped."""
        return self._tok.decode([i for i in ids if i < self.eot]).strip()

    def pieces(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]

    @cached_property
    def suppressed(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(always, at the first step) suppressed ids from `config.json` beside the tokenizer:
        non-speech symbols; the first step also suppresses a blank and eot."""
        config = json.loads((Path(self.path).parent / "config.json").read_text())
        return tuple(config["suppress_ids"]), tuple(config["suppress_ids_begin"])
