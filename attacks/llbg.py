"""LLBG, label counts from the bias gradient alone (label leakage from bias gradients, AISec
2024; implemented from the equation, a simplified reading).

For the mean loss of a batch of N, the last layer's bias gradient is `gb = (1/N) sum_i
(p_i - y_i)`, so the counts are `n_c = N * pbar_c - N * gb_c` with `pbar` the batch's mean softmax
output. The server does not know `pbar`; it is estimated by

- `prior="uniform"`: `pbar = 1/C` (a randomly initialised model barely prefers any class);
- `prior="dummy"`: the global model's mean softmax on standard-normal dummy inputs
  (`attacks.label_counts.dummy_statistics`), which follows the model's bias towards classes;
- an explicit (C,) vector.

Over K steps the pseudo-gradient is the sum of the K mean gradients, read at the global model:
`n = total * pbar - divisor * gb` with `total = N * K` and `divisor = N`. With label smoothing
eps the targets' mass is corrected (`attacks.label_counts.counts_from_target_mass`). The raw
estimate is rounded to non-negative integers summing to `total` (`round_counts`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.label_counts import as_vector, count_finding, counts_from_target_mass
from fedcore import Finding, not_applicable
from fedcore.tensors import to_numpy

__all__ = ["llbg_counts"]


def llbg_counts(
    bias_grad: Any,
    total: int,
    divisor: int,
    mean_prob: Any | None = None,
    *,
    smoothing: float = 0.0,
    prior: str = "uniform",
) -> Finding:
    """LLBG's label histogram from the `(C,)` bias gradient (sum of the K steps' mean gradients).

    Args:
        bias_grad: the pseudo-gradient `-bias_update / lr` (its scale matters).
        total: the number of samples N * K behind it.
        divisor: the batch size each step's mean divides by (N; N * M for a secure aggregate).
        mean_prob: the estimate of the mean softmax output (C,); None for uniform 1/C.
        smoothing: the label smoothing epsilon of the targets.
        prior: the name of the estimate, recorded in the diagnostics.

    Returns:
        LabelSet with counts summing to `total`; diagnostics: the raw (real-valued) estimate's
        most negative entry and rounding gap. `not_applicable` when the bias gradient is zero.
    """
    if int(total) <= 0 or int(divisor) <= 0:
        raise ValueError(f"total and divisor must be > 0, got {total}, {divisor}")
    g = to_numpy(bias_grad, np.float64, finite=True, name="bias_grad").ravel()
    if not np.any(g):
        return not_applicable("LLBG: the bias update is zero")
    num_classes = g.shape[0]
    if mean_prob is None:
        pbar = np.full(num_classes, 1.0 / num_classes)
    else:
        pbar = as_vector(mean_prob, num_classes, "mean_prob")
    mass = int(total) * pbar - int(divisor) * g  # summed targets: sum_i y_i
    raw = counts_from_target_mass(mass, int(total), num_classes, smoothing)
    return count_finding(raw, int(total), prior=prior, raw_min=float(raw.min()))
