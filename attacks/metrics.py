"""Scores of attack findings against the truth (pure functions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["count_l1", "label_set_scores"]


def label_set_scores(predicted: Iterable[int], truth: Iterable[int]) -> dict[str, float]:
    """Precision, recall, F1 and exact match of a predicted label set against the true set.

    Duplicates are ignored (sets). Conventions for empty sets: precision is 1 when nothing is
    predicted and nothing is true, 0 when nothing is predicted but something is true; recall is 1
    when the true set is empty. F1 is 0 when precision + recall is 0.
    """
    p, t = set(int(x) for x in predicted), set(int(x) for x in truth)
    hits = len(p & t)
    precision = hits / len(p) if p else float(not t)
    recall = hits / len(t) if t else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "exact": float(p == t)}


def count_l1(predicted: Mapping[int, int], truth: Mapping[int, int]) -> float:
    """L1 distance between two label-count histograms (missing labels count as 0)."""
    keys = set(predicted) | set(truth)
    return float(sum(abs(int(predicted.get(k, 0)) - int(truth.get(k, 0))) for k in keys))
