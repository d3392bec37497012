"""`LabelSet`: the result of every label-recovery attack (RLG, Yin et al., iDLG)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from attacks.metrics import count_l1, label_set_scores
from fedcore import Finding, Score

if TYPE_CHECKING:
    from fedcore import Truth

__all__ = ["LabelSet"]


@dataclass(frozen=True, kw_only=True)
class LabelSet(Finding):
    """A recovered set of labels.

    Attributes:
        labels: sorted tuple of the class ids found.
        num_labels: estimated number of label occurrences S (samples over all local steps, or
            tokens for ASR); None when the method does not estimate it.
        counts: estimated occurrences per label when identifiable, else None.
    """

    SCORES = (
        Score("precision", "prec"),
        Score("recall"),
        Score("f1", headline=True),
        Score("exact"),
        Score("length_error", "len_err", higher_is_better=False),
        Score("count_l1", higher_is_better=False),
    )

    labels: tuple[int, ...] = ()
    num_labels: int | None = None
    counts: Mapping[int, int] | None = None

    def score(self, truth: Truth) -> dict[str, float]:
        """precision, recall, f1, exact of the set; length_error |S_hat - S|; count_l1."""
        if not self.ok:
            return {}
        scores = label_set_scores(self.labels, truth.label_set)
        true_counts = truth.label_counts
        if self.num_labels is not None:
            scores["length_error"] = float(abs(self.num_labels - sum(true_counts.values())))
        if self.counts is not None:
            scores["count_l1"] = count_l1(self.counts, true_counts)
        return scores
