"""Word pieces: a sentencepiece BPE model trained on the corpus text, with explicit special ids.

Special tokens (fixed ids, the same for every vocabulary size):
- 0 `<pad>`: padding of target sequences; never a target (ignored by the loss).
- 1 `<unk>`: unknown piece; cannot occur on normalised text (character coverage 1.0).
- 2 `<s>` (bos): the decoder's first input only; never a target.
- 3 `</s>` (eos): ends every target sequence; it IS a target (once per utterance).
So a transcript of n pieces gives decoder inputs `[bos, p1..pn]` and targets `[p1..pn, eos]`.

Vocabulary sizes: the text is the corpus transcripts plus (default and small corpora) the whole
normalised King James Bible (823k words, 12.8k distinct). On it, BPE supports up to 31,532
pieces (unigram only 8,824), so the paper's 16k vocabulary is reachable with BPE, which is why
BPE is used for every size. The tiny corpus's text includes the whole KJV too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "Tokenizer", "load_tokenizer", "train_tokenizer"]

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass(frozen=True)
class Tokenizer:
    """A trained word-piece model. `vocab_size` counts the 4 special tokens."""

    path: Path
    processor: spm.SentencePieceProcessor

    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Piece ids of a normalised transcript (no bos/eos)."""
        return self.processor.encode(text)

    def targets(self, text: str) -> list[int]:
        """The ids that enter the loss for `text`: its pieces followed by eos."""
        return [*self.encode(text), EOS_ID]

    def decode(self, ids: list[int]) -> str:
        """Text of piece ids; stops at the first eos, skips pad and bos."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                out.append(int(i))
        return self.processor.decode(out)

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.processor.id_to_piece(int(i)) for i in ids]


def train_tokenizer(
    text_path: str | os.PathLike, vocab_size: int = 1000, out_dir: str | os.PathLike | None = None
) -> Tokenizer:
    """Train (or load the cached) BPE model of `vocab_size` pieces on one-sentence-per-line text.

    The model is cached next to the text as `spm_bpe_<vocab_size>.model`. Raises ValueError with
    the largest size the text supports when `vocab_size` is too large.
    """
    text_path = Path(text_path)
    out = Path(out_dir or text_path.parent) / f"spm_bpe_{vocab_size}"
    model = out.with_suffix(".model")
    if not model.exists():
        if vocab_size < 8:
            raise ValueError(
                f"vocab_size must be >= 8 (4 special tokens + pieces), got {vocab_size}"
            )
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # atomic: parallel processes
        try:
            spm.SentencePieceTrainer.train(
                input=str(text_path),
                model_prefix=str(tmp),
                vocab_size=vocab_size,
                model_type="bpe",
                character_coverage=1.0,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as err:
            found = re.search(r"value <= (\d+)", str(err))
            if found:
                raise ValueError(
                    f"vocab_size {vocab_size} is too large for {text_path}: it supports at most "
                    f"{found.group(1)} pieces; use a smaller vocab_size or a larger corpus"
                ) from err
            raise
        os.replace(tmp.with_suffix(".tmp.vocab"), out.with_suffix(".vocab"))
        os.replace(tmp.with_suffix(".tmp.model"), model)
    return load_tokenizer(model)


def load_tokenizer(model: str | os.PathLike) -> Tokenizer:
    """A trained sentencepiece model file (e.g. a shipped checkpoint's `tokenizer.model`)."""
    model = Path(model)
    if not model.exists():
        raise ValueError(f"no word-piece model at {model}")
    return Tokenizer(model, spm.SentencePieceProcessor(model_file=str(model)))
