"""Word error rate (jiwer) over normalised transcripts."""

from __future__ import annotations

from collections.abc import Sequence

import jiwer

__all__ = ["word_error_rate"]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: (substitutions + deletions + insertions) / reference words, pooled over all
    pairs. References must be non-empty; an empty hypothesis counts as all deletions."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references or any(not r.split() for r in references):
        raise ValueError("WER needs at least one reference and no empty reference")
    return float(jiwer.wer(list(references), [h if h.strip() else "" for h in hypotheses]))
