"""iLRG (Ma et al., ICLR 2023, "Instance-wise Batch Label Restoration via Gradients in Federated
Learning"): the number of instances per class from the last layer's gradient and the global
model, by a least-squares (Moore-Penrose) solve. Implemented from the paper's description; the
core only (see "Simplified" below).

With `gW = (1/N) sum_i (p_i - y_i) h_i^T` and `gb = (1/N) sum_i (p_i - y_i)`:

1. class-wise embeddings: `hhat_c = gW[c] / gb[c]`, a weighted mean of the batch's layer inputs
   dominated by the samples labelled c (their weight `p_ic - 1` outweighs the others' `p_ic`
   while the model is unsure, as at random init);
2. class-wise probabilities: `phat_c = softmax(W hhat_c + b)` with the global model's last layer
   `(W, b)`: the softmax output of a sample of class c;
3. the linear equations `divisor * gb = sum_c n_c phat_c - n` (the batch's summed softmax minus
   its summed targets) plus `sum_c n_c = total`, C + 1 equations in the C counts, solved by
   least squares and rounded to non-negative integers summing to `total`.

Simplified against the paper: no estimate of the batch size (the server's N * K is used), no
separate label-existence step (a label is a class with a positive rounded count), and no use of
the weight-gradient equations beyond the embeddings. Where `|gb[c]|` is below `bias_floor` times
the largest `|gb|` (a label whose impact the other samples' softmax mass cancels, e.g. one
sample of 10 classes in a batch of 10 at random init) `hhat_c` is meaningless; its `phat_c` is
then the mean of the other classes' (`diagnostics["weak_classes"]`). Over K steps the sum of the
steps' gradients is read as `total = N * K` samples at the global model (`divisor = N`). Label
smoothing eps is corrected in the targets' mass. Needs a bias in the last layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.baselines import as_numpy_2d
from attacks.label_counts import as_vector, count_finding
from fedcore import Finding, not_applicable

__all__ = ["classwise_probabilities", "ilrg_counts"]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classwise_probabilities(
    weight_grad: Any, bias_grad: Any, weight: Any, bias: Any, bias_floor: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """`(P, weak)`: P (C, C) whose column c is `phat_c = softmax(W gW[c] / gb[c] + b)`, and the
    boolean mask of the classes whose `|gb[c]| < bias_floor * max |gb|` (their column is the mean
    of the others')."""
    gw, w = as_numpy_2d(weight_grad), as_numpy_2d(weight, "weight")
    num_classes = gw.shape[0]
    gb = as_vector(bias_grad, num_classes, "bias_grad")
    b = as_vector(bias, num_classes, "bias")
    if w.shape != gw.shape:
        raise ValueError(f"weight has shape {w.shape}, weight_grad {gw.shape}")
    weak = np.abs(gb) < float(bias_floor) * np.abs(gb).max()
    strong = np.flatnonzero(~weak)
    embeddings = gw[strong] / gb[strong, None]  # (S, d)
    probs = np.empty((num_classes, num_classes))
    probs[:, strong] = _softmax(embeddings @ w.T + b).T
    if weak.any():
        probs[:, weak] = probs[:, strong].mean(axis=1, keepdims=True)
    return probs, weak


def ilrg_counts(
    weight_grad: Any,
    bias_grad: Any,
    weight: Any,
    bias: Any,
    total: int,
    divisor: int,
    *,
    smoothing: float = 0.0,
    bias_floor: float = 0.05,
) -> Finding:
    """iLRG's label histogram (see the module doc).

    Args:
        weight_grad, bias_grad: the pseudo-gradient `-update / lr` of the last layer's weight
            (C, d) and bias (C,) (sum of the K steps' mean gradients; its scale matters).
        weight, bias: the global model's last layer (C, d), (C,).
        total: the number of samples N * K behind the gradient.
        divisor: the batch size each step's mean divides by (N; N * M for a secure aggregate).
        smoothing: label smoothing epsilon of the targets.
        bias_floor: relative size of `|gb[c]|` below which `gW[c] / gb[c]` is not trusted.

    Returns:
        LabelSet with counts summing to `total`; diagnostics: the least-squares residual
        (relative to `|divisor * gb|`), the weak classes and the rounding gap.
        `not_applicable` when the bias gradient is zero.
    """
    if int(total) <= 0 or int(divisor) <= 0:
        raise ValueError(f"total and divisor must be > 0, got {total}, {divisor}")
    eps = float(smoothing)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    gw = as_numpy_2d(weight_grad)
    if not np.all(np.isfinite(gw)):
        raise ValueError("weight_grad contains NaN or Inf; iLRG needs a finite gradient")
    num_classes = gw.shape[0]
    gb = as_vector(bias_grad, num_classes, "bias_grad")
    if not np.any(gb):
        return not_applicable("iLRG: the bias update is zero")
    probs, weak = classwise_probabilities(gw, gb, weight, bias, bias_floor)
    # divisor * gb = P n - [(1 - eps) n + eps * total / C]; sum(n) = total
    lhs = np.vstack([probs - (1.0 - eps) * np.eye(num_classes), np.ones((1, num_classes))])
    rhs = np.concatenate([int(divisor) * gb + eps * int(total) / num_classes, [float(total)]])
    raw, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    residual = float(np.linalg.norm(lhs @ raw - rhs) / max(np.linalg.norm(rhs[:-1]), 1e-300))
    return count_finding(
        raw,
        int(total),
        residual=residual,
        weak_classes=[int(c) for c in np.flatnonzero(weak)],
        raw_min=float(raw.min()),
    )
