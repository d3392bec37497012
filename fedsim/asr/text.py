"""Transcript normalisation: lower-case words of letters and apostrophes, numbers spelt out.

The normal form is what the tokenizer, the model and WER see: `a-z`, `'` and single spaces, e.g.
"Press 1, then #." -> None (a symbol with no agreed spoken form) and "Press 1 to exit." ->
"press one to exit".
"""

from __future__ import annotations

import re

__all__ = ["normalise", "number_words"]

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_UNSPOKEN = re.compile(r"[#@$=+<>*/\d]")  # symbols (and digits left over) with no agreed reading


def number_words(n: int) -> str:
    """Spell 0 <= n < 100 in words ("42" -> "forty two"); larger numbers are ambiguous in speech
    ("1234": "one two three four" or "twelve thirty four") and raise ValueError."""
    if not 0 <= n < 100:
        raise ValueError(f"only 0..99 can be spelt unambiguously, got {n}")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def normalise(text: str) -> str | None:
    """The normal form of a transcript, or None when it holds something with no safe spoken form
    (numbers of 3+ digits, decimals, symbols such as # or @) or no words at all.

    Hyphens and punctuation become spaces; apostrophes inside words stay ("party's").
    """
    text = re.sub(r"\b(\d{1,2})\b(?![.,]\d)", lambda m: number_words(int(m.group(1))), text)
    if _UNSPOKEN.search(text):
        return None
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^a-z']+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes
    words = text.split()
    return " ".join(words) if words else None
