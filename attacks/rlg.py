"""RLG (Dang et al. 2021, "Revealing and Protecting Labels in Distributed Training"): the label
set of a training batch from the last layer's weight update, exact and oracle-free.

For softmax cross-entropy the last layer's summed gradient is `W = G^T H` (C, d), where the
row `g_i` (C,) of sample i has exactly one negative entry, at its label (`p_i - onehot(y_i)`).
Let Q (C, S) be an orthonormal basis of span{g_i} (the paper's row space) and q_c its row c.
Class c is a label iff q_c can be separated from every other q_j by a hyperplane through the
origin, i.e. iff q_c is not in the cone of the others (Farkas). This holds for features of any
sign (ReLU, tanh, SiLU, GELU), for any scale or sign of W (update or gradient), and for K local
steps with a changing model (then S = N*K samples), as long as the S vectors g_i are linearly
independent and S < min(C - 1, d).

Label counts (beyond the paper): when every found label is distinct (|L| = S) they are all 1;
when |L| = 1 it is S; otherwise they are estimated from the bias update `b`, where
`-b / lr = sum_i g_i`, so class c gets `P_c - n_c` (P_c = the summed softmax mass on c). With the
non-labels' mean mass as P_c for every class and the counts summing to S the scale cancels (lr
is not needed); this is reliable while the model is far from confident (P_c << 1, e.g. early
rounds, many classes) and degrades as the model fits its batch. Without a bias and with
1 < |L| < S the counts are not identifiable from the weight update alone: `counts` is None.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np

from attacks.base import Finding, not_applicable
from attacks.labelset import LabelSet
from attacks.rlg_cone import separable_fast, separable_lp
from attacks.rlg_rank import row_space

try:  # optional: keeps small problems single-threaded (BLAS threads thrash on a loaded CPU)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

__all__ = ["counts_from_bias", "reveal_labels"]


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32 if a.dtype == np.float16 else np.float64)
    return a


def reveal_labels(
    weight_update: Any,
    num_labels: int | None = None,
    *,
    bias_update: Any | None = None,
    method: str = "fast",
    rank_ratio: float = 4.0,
    rank_floor: float = 10.0,
    feas_tol: float = 1e-9,
    seed: int = 0,
    threads: int | None = 1,
) -> Finding:
    """The set of labels in the batch(es) behind a last-layer update.

    Args:
        weight_update: (C, d) torch tensor or numpy array in `nn.Linear.weight` layout, float32 or
            float64, proportional to the summed gradient of the K local steps (any sign: the
            update `after - before` or the gradient).
        num_labels: S, the number of samples behind the update (N * K), when known; None
            estimates it from the spectrum (rule in `attacks.rlg_rank`).
        bias_update: optional (C,) update of the layer's bias, same sign convention as
            `weight_update`; used only to estimate label counts.
        method: "fast" (safe screen + NNLS certificates, LP fallback) or "lp" (one HiGHS LP
            per class against all classes: the slow reference).
        rank_ratio, rank_floor: the rank rule's gap ratio and floor (units of eps(dtype) * s_1).
        feas_tol: slack of the separating hyperplane's constraints (unit-norm rows).
        seed: seed of the randomized range finder.
        threads: BLAS threads during the call (default 1; None keeps the library's setting).
            On a busy 2-core CPU two BLAS threads were 2.5-6x slower than one (16000 x 2048);
            needs the optional `threadpoolctl`, without it the library's setting is used.

    Returns:
        `LabelSet` (labels sorted, num_labels = S used, counts or None) with diagnostics, or a
        `not_applicable` Finding naming the reason (not finite, zero, S >= min(C - 1, d), the
        update lacks the softmax cross-entropy structure).
    """
    start = time.perf_counter()
    w = _as_array(weight_update, "weight_update")
    if w.ndim != 2 or w.shape[0] < 2 or w.shape[1] < 1:
        raise ValueError(
            f"weight_update must be (C, d) with C >= 2 like nn.Linear.weight, got {w.shape}"
        )
    if method not in ("fast", "lp"):
        raise ValueError(f"method must be 'fast' or 'lp', got {method!r}")
    if num_labels is not None and int(num_labels) < 1:
        raise ValueError(f"num_labels must be a positive int (N * K) or None, got {num_labels}")
    bias = None
    if bias_update is not None:
        bias = _as_array(bias_update, "bias_update").astype(np.float64).ravel()
        if bias.shape[0] != w.shape[0]:
            raise ValueError(
                f"bias_update has {bias.shape[0]} entries, weight_update {w.shape[0]} rows"
            )
    if not np.all(np.isfinite(w)):
        return not_applicable("weight update contains NaN or Inf")
    if not np.any(w):
        return not_applicable(
            "weight update is all zero (no training signal, or a defense removed it)"
        )
    w = np.ascontiguousarray(w)
    limit = nullcontext()
    if threads is not None and threadpool_limits is not None:
        limit = threadpool_limits(limits=int(threads), user_api="blas")
    with limit:
        return _reveal(w, num_labels, bias, method, rank_ratio, rank_floor, feas_tol, seed, start)


def _reveal(
    w: np.ndarray,
    num_labels: int | None,
    bias: np.ndarray | None,
    method: str,
    rank_ratio: float,
    rank_floor: float,
    feas_tol: float,
    seed: int,
    start: float,
) -> Finding:
    row_sum = float(np.linalg.norm(w.sum(axis=0, dtype=np.float64)) / np.linalg.norm(w))

    space = row_space(w, num_labels, ratio=rank_ratio, floor=rank_floor, seed=seed)
    diag: dict[str, Any] = {
        "rank": space.rank,
        "rank_method": space.method,
        "sketch_size": space.sketch_size,
        "rank_gap": _gap(space.singular_values, space.rank),
        "row_sum_residual": row_sum,
        "seconds_row_space": time.perf_counter() - start,
    }
    if space.rank == 0:
        return not_applicable("weight update has numerical rank 0", **diag)
    if space.rank >= space.structural_rank:
        return not_applicable(
            f"rank {space.rank} reaches min(C - 1, d') = {space.structural_rank}: "
            "S >= min(C - 1, d) or noise without a spectral gap; the label set is not identifiable",
            **diag,
        )

    if method == "lp":
        labels = np.flatnonzero(separable_lp(space.basis))
    else:
        dec = separable_fast(space.basis, feas_tol=feas_tol)
        diag.update(
            candidates=dec.candidates,
            nnls_calls=dec.nnls_calls,
            lp_calls=dec.lp_calls,
            rounds=dec.rounds,
            min_margin=dec.min_margin,
            max_residual=dec.max_residual,
        )
        if not dec.spans:
            return not_applicable(
                "the class points do not positively span the row space: the update lacks the "
                "softmax cross-entropy structure",
                **diag,
            )
        labels = dec.separable
    diag["seconds"] = time.perf_counter() - start
    if labels.size == 0 or labels.size > space.rank:
        return not_applicable(
            f"{labels.size} separable classes for rank {space.rank} (expected 1..rank): the update "
            "lacks the softmax cross-entropy structure (defense, label smoothing, or noise)",
            **diag,
        )
    counts, how = _counts(labels, space.rank, bias)
    diag["counts"] = how
    return LabelSet(
        labels=tuple(int(c) for c in labels),
        num_labels=space.rank,
        counts=counts,
        diagnostics=diag,
    )


def _gap(sv: np.ndarray, rank: int) -> float:
    if rank < 1 or rank >= len(sv) or sv[rank] <= 0:
        return float("inf")
    return float(sv[rank - 1] / sv[rank])


def _counts(
    labels: np.ndarray, total: int, bias: np.ndarray | None
) -> tuple[dict[int, int] | None, str]:
    if labels.size == total:
        return {int(c): 1 for c in labels}, "all distinct (|L| = S)"
    if labels.size == 1:
        return {int(labels[0]): total}, "single label"
    if bias is None:
        return None, "not identifiable: 1 < |L| < S and no bias update"
    if not np.any(bias):
        return None, "not identifiable: the bias update is zero"
    return counts_from_bias(bias, labels, total), "bias"


def counts_from_bias(bias_update: np.ndarray, labels: np.ndarray, total: int) -> dict[int, int]:
    """Label counts n_c (>= 1, summing to `total`) from a bias update or gradient (C,), any sign.

    Model: the summed bias gradient is `P_c - n_c` (P_c = softmax mass on class c, n_c = 0 off the
    labels). P_c is taken as the mean over the non-labels for every class; the unknown scale
    (the learning rate) follows from sum n_c = total. Rounded by largest remainder.
    """
    b = np.asarray(bias_update, dtype=np.float64)
    labels = np.asarray(labels)
    mask = np.zeros(b.shape[0], dtype=bool)
    mask[labels] = True
    grad = b if b[mask].sum() < 0 else -b  # labels carry the negative gradient mass
    mass = float(grad[~mask].mean()) if np.any(~mask) else 0.0
    raw = mass - grad[mask]
    raw = np.maximum(raw, 0.0)
    scale = raw.sum() / total if raw.sum() > 0 else 1.0
    raw = raw / scale
    extra = total - labels.size  # everyone gets one; distribute the rest
    share = np.maximum(raw - 1.0, 0.0)
    share = (
        share * (extra / share.sum())
        if share.sum() > 0
        else np.full(labels.size, extra / labels.size)
    )
    base = np.floor(share).astype(int)
    rest = extra - int(base.sum())
    if rest > 0:
        base[np.argsort(-(share - base), kind="stable")[:rest]] += 1
    return {int(c): int(1 + n) for c, n in zip(labels, base, strict=True)}
