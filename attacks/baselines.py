"""Baseline label-recovery rules: Yin et al. (2021) Eq. (5) and iDLG (Zhao et al., 2020).

Both take the last layer's *gradient* (not the update), layout `(C, d)` like `nn.Linear.weight`:
for softmax cross-entropy `dW = G^T H` with `G` (n, C) the logit gradients and `H` (n, d) the
features. `G[i, c] < 0` only at the label of sample i, so with non-negative features (ReLU) every
row of a non-label class is >= 0. Neither rule holds for features of either sign (SiLU, GELU, tanh).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.labelset import LabelSet
from fedcore.tensors import to_numpy

__all__ = ["as_numpy_2d", "idlg_label", "yin_labels"]


def as_numpy_2d(matrix: Any, name: str = "weight_grad") -> np.ndarray:
    """A float64 numpy view/copy of a `(C, d)` torch tensor or array; ValueError if not 2-D."""
    array = to_numpy(matrix, np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (C, d) like nn.Linear.weight, got shape {array.shape}"
        )
    return array


def yin_labels(weight_grad: Any, num_labels: int | None = None) -> LabelSet:
    """Yin et al. Eq. (5): class j is present iff `min_k dW[j, k] < 0`.

    Args:
        weight_grad: `(C, d)` gradient of the last layer's weight (sum or mean over samples).
        num_labels: None for the threshold rule; an int n keeps the n classes with the most
            negative row minima instead (Yin's rule when the number of distinct labels is known).

    Returns:
        LabelSet; `num_labels` is the given n (None for the threshold rule);
        diagnostics["negative_rows"] counts the rows with a negative minimum.
    """
    grad = as_numpy_2d(weight_grad)
    if not np.all(np.isfinite(grad)):
        raise ValueError("weight_grad contains NaN or Inf; Yin's rule needs a finite gradient")
    row_min = grad.min(axis=1)
    if num_labels is None:
        labels = np.flatnonzero(row_min < 0)
    else:
        if not 0 <= int(num_labels) <= grad.shape[0]:
            raise ValueError(f"num_labels must be in [0, C={grad.shape[0]}], got {num_labels}")
        labels = np.argsort(row_min, kind="stable")[: int(num_labels)]
    return LabelSet(
        labels=tuple(sorted(int(c) for c in labels)),
        num_labels=None if num_labels is None else int(num_labels),
        diagnostics={"negative_rows": int(np.sum(row_min < 0))},
    )


def idlg_label(weight_grad: Any, bias_grad: Any | None = None) -> LabelSet:
    """iDLG for a single sample: the label is the class whose gradient row is negative.

    Without a bias: argmin of the row sums of `weight_grad` (the paper's rule; exact for
    non-negative features, since `dW[c] = g_c h` and only `g_label < 0`). With `bias_grad` (C,):
    argmin of `bias_grad` (`db = g`), exact for features of any sign.
    """
    grad = as_numpy_2d(weight_grad)
    if bias_grad is not None:
        bias = to_numpy(bias_grad, np.float64).ravel()
        if bias.shape[0] != grad.shape[0]:
            raise ValueError(
                f"bias_grad has {bias.shape[0]} entries but weight_grad {grad.shape[0]} rows"
            )
        scores, rule = bias, "bias"
    else:
        scores, rule = grad.sum(axis=1), "row_sum"
    if not np.all(np.isfinite(scores)):
        raise ValueError("gradient contains NaN or Inf; iDLG needs a finite gradient")
    return LabelSet(labels=(int(np.argmin(scores)),), num_labels=1, diagnostics={"rule": rule})
