"""`LabelSet`: the result of every label-recovery attack (RLG, Yin et al., iDLG)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from attacks.base import Finding
from attacks.metrics import count_l1, label_set_scores

if TYPE_CHECKING:
    from fedsim.update import Truth

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
