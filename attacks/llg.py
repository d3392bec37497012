"""LLG (Wainakh et al., "User-Level Label Leakage from Gradients in Federated Learning", PETS
2022): the batch's label histogram from the row sums of the last layer's weight gradient.

With non-negative features (ReLU) the row sum of class c, `r_c = sum_j gW[c, j] = (1/N) sum_i
(p_ic - y_ic) s_i` with `s_i = sum_j h_ij >= 0`, is a positive offset (the softmax mass every
sample puts on c) minus one "impact" `s_i (1 - p_ic) / N` per sample labelled c. The attack:

1. every class with a negative row sum is a label: it gets one count and the impact `m` (< 0)
   is subtracted from its row sum (`r_c -= m`, moving it up towards 0);
2. until `total` counts are assigned: the class with the most negative remaining row sum gets
   one more count and `r_c -= m` again.

Variants (how `m` and the offsets are known):
- `"llg"` (the paper's LLG, gradient only): `m = (sum of the negative row sums) / total`, no
  offset. Scale-free: the update `after - before` works as well as the gradient once its sign
  is flipped, so the learning rate is not needed.
- `"llg_star"` (LLG*, a server that knows the model): `m = -E[s] / divisor`, the mean feature
  sum of the global model on dummy inputs (`attacks.label_counts.dummy_statistics`), on the
  scale of the pseudo-gradient `-update / lr`; no offset.
- `"llg_plus"` (LLG+): as LLG* and the per-class offset `K * E[p_c s]` is subtracted from the
  row sums first (`K` = local steps), so that step 1 sees `r_c ~ n_c * m`.

The number of samples `total = N * K` is the server's (train config), not estimated. Over K
local steps the sum of the steps' gradients is read as `total` samples at the global model
(the model's change between steps is ignored). Features of either sign (SiLU, tanh) break the
sign rule of step 1; the greedy still runs, but its counts degrade.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.baselines import as_numpy_2d
from attacks.label_counts import as_vector, count_finding
from fedcore import Finding, not_applicable

__all__ = ["llg_counts"]


def llg_counts(
    weight_grad: Any,
    total: int,
    *,
    impact: float | None = None,
    offset: Any | None = None,
    variant: str = "llg",
    tol: float = 1e-6,
) -> Finding:
    """LLG's label histogram from the `(C, d)` last-layer weight gradient (see the module doc).

    Args:
        weight_grad: the gradient (sum of the K steps' mean gradients), layout `nn.Linear.weight`;
            with `impact=None` any positive multiple of it works (the update with its sign
            flipped, `-update`).
        total: the number of label occurrences behind it (N * K), > 0.
        impact: `m` < 0, one sample's impact on its label's row sum; None estimates it from the
            gradient (LLG).
        offset: (C,) positive offsets subtracted from the row sums first (LLG+), or None.
        variant: the name recorded in the diagnostics.
        tol: a row sum counts as negative in step 1 only below `-tol * max |row sum|` (rounding
            noise on a non-label's exact zero must not make it a label).

    Returns:
        LabelSet with `counts` (summing to `total`) and `num_labels = total`; diagnostics: the
        impact, the number of negative row sums and the variant. `not_applicable` when no row sum
        is negative (LLG cannot start) or the impact is not negative.
    """
    grad = as_numpy_2d(weight_grad)
    if not np.all(np.isfinite(grad)):
        raise ValueError("weight_grad contains NaN or Inf; LLG needs a finite gradient")
    if int(total) <= 0:
        raise ValueError(f"total must be > 0, got {total}")
    total = int(total)
    rows = grad.sum(axis=1)
    if offset is not None:
        rows = rows - as_vector(offset, rows.shape[0], "offset")
    negative = np.flatnonzero(rows < -float(tol) * np.abs(rows).max())
    if impact is None:
        if negative.size == 0:
            return not_applicable("LLG: no negative row sum (the gradient shows no label)")
        impact = float(rows[negative].sum()) / total
    impact = float(impact)
    if not impact < 0:
        return not_applicable(f"LLG: the impact must be negative, got {impact:.3g}")
    counts = np.zeros(rows.shape[0], dtype=np.int64)
    if negative.size > total:  # more negative rows than samples: keep the most negative
        negative = negative[np.argsort(rows[negative], kind="stable")[:total]]
    counts[negative] = 1
    rows[negative] -= impact
    for _ in range(total - int(counts.sum())):
        c = int(np.argmin(rows))
        counts[c] += 1
        rows[c] -= impact
    return count_finding(
        counts.astype(np.float64),
        total,
        variant=variant,
        impact=impact,
        negative_rows=int(np.sum(grad.sum(axis=1) < 0)),
    )
