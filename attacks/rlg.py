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
when |L| = 1 it is S (with S estimated as the rank, only while the bias shows an untrained-like
model: a trained one maps a class's samples to one direction, so the rank can count classes);
otherwise they are estimated from the bias update `b`, where
`-b / lr = sum_i g_i`, so class c gets `P_c - n_c` (P_c = the summed softmax mass on c). With the
non-labels' mean mass as P_c for every class and the counts summing to S the scale cancels (lr
is not needed); this is reliable while the model is far from confident (P_c << 1, e.g. early
rounds, many classes) and degrades as the model fits its batch. Without a bias and with
1 < |L| < S the counts are not identifiable from the weight update alone: `counts` is None.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from attacks.labelset import LabelSet
from attacks.rlg_cone import separable_fast, separable_lp
from attacks.rlg_rank import RowSpace, one_blas_thread, row_space, steep_gap
from fedcore import Finding, not_applicable
from fedcore.tensors import to_numpy

__all__ = ["add_known_labels", "counts_from_bias", "counts_from_bias_ratios", "reveal_labels"]

MAX_GAP_TRIES = 3
NOISE_TOL_MAX = 1e-2  # a larger residual is not rounding noise (a defense, noise added on purpose)


@dataclass(frozen=True)
class _Search:
    """How the label set is searched for (the options of `reveal_labels`)."""

    method: str
    rank_ratio: float
    rank_floor: float
    feas_tol: float
    noise_cut: float
    seed: int
    max_labels: int | None


def reveal_labels(
    weight_update: Any,
    num_labels: int | None = None,
    *,
    bias_update: Any | None = None,
    method: str = "fast",
    rank_ratio: float = 4.0,
    rank_floor: float = 10.0,
    feas_tol: float = 1e-9,
    noise_cut: float = 5.0,
    seed: int = 0,
    threads: int | None = 1,
    max_labels: int | None = None,
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
        noise_cut: class points shorter than `noise_cut` times the estimated noise of a point
            (`RowSpace.point_noise`) are set to zero before the separability test: their
            direction is rounding noise (classes a trained model gives ~0 probability
            everywhere), and the test is scale-free, so such points would otherwise hide the
            labels. 0 disables it.
        seed: seed of the randomized range finder.
        max_labels: the most label occurrences the server thinks possible (e.g. N * K times the
            longest target); an estimated S above it means the update is not the low-rank
            product a batch makes (Sign-SGD, added noise), so the cone test, which costs minutes
            at S ~ d, is skipped and the finding is `not_applicable`. None: no bound.
        threads: BLAS threads during the call (default 1: more only thrash on a loaded CPU;
            None keeps the library's setting).

    Returns:
        `LabelSet` (labels sorted, num_labels = S used, counts or None) with diagnostics, or a
        `not_applicable` Finding naming the reason (not finite, zero, S >= min(C - 1, d), the
        update lacks the softmax cross-entropy structure).
    """
    start = time.perf_counter()
    w = to_numpy(weight_update, floating=True)
    if w.ndim != 2 or w.shape[0] < 2 or w.shape[1] < 1:
        raise ValueError(
            f"weight_update must be (C, d) with C >= 2 like nn.Linear.weight, got {w.shape}"
        )
    if method not in ("fast", "lp"):
        raise ValueError(f"method must be 'fast' or 'lp', got {method!r}")
    if max_labels is not None and int(max_labels) < 1:
        raise ValueError(f"max_labels must be a positive int or None, got {max_labels}")
    if num_labels is not None and int(num_labels) < 1:
        raise ValueError(f"num_labels must be a positive int (N * K) or None, got {num_labels}")
    bias = None
    if bias_update is not None:
        bias = to_numpy(bias_update, np.float64, finite=True, name="bias_update").ravel()
        if bias.shape[0] != w.shape[0]:
            raise ValueError(
                f"bias_update has {bias.shape[0]} entries, weight_update {w.shape[0]} rows"
            )
    search = _Search(method, rank_ratio, rank_floor, feas_tol, noise_cut, seed, max_labels)
    limit = nullcontext()
    if threads is not None:
        limit = threadpool_limits(limits=int(threads), user_api="blas")
    with limit:
        return _reveal(np.ascontiguousarray(w), num_labels, bias, search, start)


def _reveal(
    w: np.ndarray, num_labels: int | None, bias: np.ndarray | None, search: _Search, start: float
) -> Finding:
    """The label set of a finite, non-zero `(C, d)` update; retries at the next spectral gap
    when the first one gives no label set, then once at the last steep gap below the first
    estimate (`attacks.rlg_rank.steep_gap`; S unknown)."""
    after, tries, first = 0, 0, None
    fallback = steep = None  # the steep-gap rank below the first estimate; once it is tried
    while True:
        tries += 1
        space = row_space(w, num_labels if steep is None else steep, ratio=search.rank_ratio,
                          floor=search.rank_floor, seed=search.seed, after=after)  # fmt: skip
        if space.method.startswith("failed"):
            return not_applicable(f"weight update {space.method.removeprefix('failed: ')}")
        if space.rank == 0 and not np.any(space.column_sums) and not np.any(w):
            return not_applicable(
                "weight update is all zero (no training signal, or a defense removed it)"
            )
        sums = space.column_sums
        row_sum = float(np.linalg.norm(sums) / space.norm) if space.norm > 0 else 0.0
        diag: dict[str, Any] = {
            "rank": space.rank,
            "rank_method": space.method,
            "sketch_size": space.sketch_size,
            "rank_gap": _gap(space.singular_values, space.rank),
            "row_sum_residual": row_sum,
            "seconds_row_space": time.perf_counter() - start,
            "seconds_stages": dict(space.seconds),
            "gap_tries": tries,
        }
        if steep is not None:
            diag["rank_from"] = f"steep gap below S = {first[1]['rank']} ({first[0]})"
        labels, reason = _labels_of(space, search, diag, start)
        if reason is not None and first is None:
            first = (reason, diag)
            # A defense's residue under the label directions (GradDrop): the last try.
            fallback = steep_gap(space, float(np.finfo(w.dtype).eps), search.rank_floor)
        if reason is None or steep is not None or num_labels is not None:
            break
        # A gap among the first singular values (one dominant direction, e.g. features that
        # share a large mean) can hide the true rank further down: try the next gap.
        too_many = search.max_labels is not None and space.rank > search.max_labels
        if too_many or tries >= MAX_GAP_TRIES or not 0 < space.rank < space.structural_rank - 1:
            if fallback is None:
                break
            steep, after = fallback, 0
        else:
            after = space.rank
    if reason is not None:
        return not_applicable(first[0], **{**first[1], "gap_tries": diag["gap_tries"]})
    total = int(num_labels) if num_labels is not None else space.rank
    counts, how = _counts(labels, total, bias, estimated=num_labels is None)
    diag["counts"] = how
    if num_labels is None and counts:
        total = sum(counts.values())
    return LabelSet(
        labels=tuple(int(c) for c in labels),
        num_labels=total,
        counts=counts,
        diagnostics=diag,
    )


def _labels_of(
    space: RowSpace, search: _Search, diag: dict[str, Any], start: float
) -> tuple[np.ndarray, str | None]:
    """The separable classes of one row space, or (empty, why there is no label set)."""
    none = np.zeros(0, dtype=int)
    if space.rank == 0:
        return none, "weight update has numerical rank 0"
    if space.rank >= space.structural_rank:
        return none, (
            f"rank {space.rank} reaches min(C - 1, d') = {space.structural_rank}: S >= "
            "min(C - 1, d) or noise without a spectral gap; the label set is not identifiable"
        )
    if search.max_labels is not None and space.rank > search.max_labels:
        diag["seconds"] = time.perf_counter() - start
        return none, (
            f"estimated S = {space.rank} exceeds max_labels = {search.max_labels}: the update is "
            "not the low-rank product a client's batch makes (a defense such as Sign-SGD, or "
            "noise); raise max_labels or set it to None to run the cone test anyway"
        )
    cone_start = time.perf_counter()
    with one_blas_thread():  # (C, r) products and r-sized fits: threads only add waiting
        labels, reason = _separable(space, search.method, search.feas_tol, search.noise_cut, diag)
    diag["seconds"] = time.perf_counter() - start
    diag["seconds_stages"]["cone"] = diag["seconds"] - (cone_start - start)
    if reason is None and not 0 < labels.size <= space.rank:
        reason = (
            f"{labels.size} separable classes for rank {space.rank} (expected 1..rank): "
            "the update lacks the softmax cross-entropy structure (defense, label "
            "smoothing, or noise)"
        )
    return labels, reason


def _separable(
    space: Any, method: str, feas_tol: float, noise_cut: float, diag: dict[str, Any]
) -> tuple[np.ndarray, str | None]:
    """The separable classes of the row-space points, or (empty, reason)."""
    points = space.basis
    # Noise along one direction: the point noise is an RMS norm over `rank` directions.
    noise_tol = noise_cut * space.point_noise / np.sqrt(space.rank)
    norms2 = np.einsum("ij,ij->i", points, points)
    scale = float(np.sqrt(np.max(norms2)))
    if noise_tol > NOISE_TOL_MAX * scale:
        diag["noise_tol_skipped"] = noise_tol
        noise_tol = 0.0  # the residual is not small rounding noise: exact test
    if noise_tol > 0:
        quiet = norms2 <= noise_tol**2
        diag.update(noise_tol=noise_tol, quiet_points=int(quiet.sum()))
        if quiet.any():  # they constrain nothing (module doc of rlg_cone)
            points = np.where(quiet[:, None], 0.0, points)
    if method == "lp":
        return np.flatnonzero(separable_lp(points, noise_tol=noise_tol)), None
    dec = separable_fast(points, feas_tol=feas_tol, noise_tol=noise_tol)
    diag.update(
        candidates=dec.candidates,
        nnls_calls=dec.nnls_calls,
        lp_calls=dec.lp_calls,
        rounds=dec.rounds,
        min_margin=dec.min_margin,
        max_residual=dec.max_residual,
    )
    if not dec.spans:
        return dec.separable, (
            "the class points do not positively span the row space: the update lacks the "
            "softmax cross-entropy structure"
        )
    return dec.separable, None


def _gap(sv: np.ndarray, rank: int) -> float:
    if rank < 1 or rank >= len(sv) or sv[rank] <= 0:
        return float("inf")
    return float(sv[rank - 1] / sv[rank])


def _counts(
    labels: np.ndarray, total: int, bias: np.ndarray | None, estimated: bool = True
) -> tuple[dict[int, int] | None, str]:
    # Repeated labels that share one direction (an untrained model's softmax ignores the
    # input) keep the rank below S; clean bias ratios that count more than the rank and more
    # than |L| occurrences count every one of them.
    ratios = counts_from_bias_ratios(bias, labels) if bias is not None and estimated else None
    if ratios is not None and sum(ratios.values()) >= max(total, labels.size + 1):
        return ratios, "bias ratios (repeated labels share directions: rank < S)"
    by_rank = labels.size in (total, 1)  # all distinct or a single label: counts follow from S
    has_bias = bias is not None and bool(np.any(bias))
    if by_rank and not (estimated and has_bias):
        return _rank_counts(labels, total)
    if not has_bias:
        if bias is None:
            return None, "not identifiable: 1 < |L| < S and no bias update"
        return None, "not identifiable: the bias update is zero"
    # The premise of any count read with S estimated: an untrained-like bias (equal non-label
    # mass; with the rank as S also one count per label, since a trained model maps a class's
    # samples to nearly one direction and the rank then counts classes, not samples).
    spread = nonlabel_mass_spread(bias, labels, total)
    if by_rank:
        spread = max(spread, _unit_deficit_spread(bias, labels))
    if spread > MAX_MASS_SPREAD:
        if by_rank:
            return None, (
                f"not identifiable: S was estimated as the rank, which a trained model (the "
                f"bias strays {spread:.2f} of one count from equal masses) can hold below "
                "N by mapping a class's samples to one direction; attack=rlg_counts uses N"
            )
        return None, (
            f"not identifiable from the bias alone: the non-labels' softmax mass varies by "
            f"{spread:.2f} of one count (a trained model); attack=rlg_counts models it"
        )
    if by_rank:
        return _rank_counts(labels, total)
    return counts_from_bias(bias, labels, total), "bias"


def _rank_counts(labels: np.ndarray, total: int) -> tuple[dict[int, int], str]:
    if labels.size == total:
        return {int(c): 1 for c in labels}, "all distinct (|L| = S)"
    return {int(labels[0]): total}, "single label"


# Counts: the largest spread of P_c over the non-labels, in units of one count. A count read off
# the bias is off by one only where a label's P_c strays half a count from the mean; the
# non-labels (C - |L| classes, far more than the labels) bound that spread from above.
MAX_MASS_SPREAD = 0.5


def _deficits(bias_update: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(deficits of the labels, bias gradient of the non-labels) from a bias update or gradient
    of any sign: oriented so the labels carry the negative mass (`P_c - n_c`), a label's deficit
    is the non-labels' mean mass minus its entry (about n_c when every P_c is equal). None when
    every class is a label."""
    b = np.asarray(bias_update, dtype=np.float64)
    mask = np.zeros(b.shape[0], dtype=bool)
    mask[np.asarray(labels)] = True
    if mask.all():
        return None
    grad = b if b[mask].sum() < 0 else -b
    rest = grad[~mask]
    return float(rest.mean()) - grad[mask], rest


def nonlabel_mass_spread(bias_update: np.ndarray, labels: np.ndarray, total: int) -> float:
    """How far `counts_from_bias`'s premise (every class gets the same softmax mass P_c) is off,
    measured on the non-labels: max |P_c - mean P_c| over them, in units of one count's mass
    (the labels' summed deficit / `total`). Large on a trained model: its P_c differ by class,
    and a count read off the bias would then be a guess. 0 where every class is a label."""
    found = _deficits(bias_update, labels)
    if found is None:
        return 0.0
    raw, rest = found
    unit = float(np.maximum(raw, 0.0).sum()) / max(total, 1)
    if unit <= 0:
        return float("inf")
    return float(np.max(np.abs(rest - rest.mean()))) / unit


def _unit_deficit_spread(bias_update: np.ndarray, labels: np.ndarray) -> float:
    """With one sample per label, each label's deficit is one count: max |deficit / mean
    deficit - 1| over the labels (0 for one label). Large when a label hides repeats or is no
    label at all."""
    found = _deficits(bias_update, labels) if np.asarray(labels).size >= 2 else None
    if found is None:
        return 0.0
    raw = found[0]
    unit = float(raw.mean())
    return float(np.max(np.abs(raw / unit - 1.0))) if unit > 0 else float("inf")


def counts_from_bias_ratios(
    bias_update: np.ndarray, labels: np.ndarray, tolerance: float = 0.25
) -> dict[int, int] | None:
    """Label counts from the bias alone, when the weight update cannot tell them apart.

    At an untrained model the softmax barely depends on the input, so samples with the same
    label give (numerically) the same gradient direction: the rank of the weight update is |L|,
    not S. The bias still weighs each label by its count: `P_c - n_c` with P_c about equal for
    all classes, so `n_c` is proportional to (non-label mean - bias gradient_c). The counts are
    these values over the mass of one count (the smallest, then refitted as the median of
    value / count), accepted only when every ratio is within `tolerance` of an integer and the
    non-labels' P_c vary by less than `tolerance` counts (else None: a trained model's unequal
    P_c blur them). One step only: over K steps each step's
    mean divides by its own token count. Any sign and scale.
    """
    if not np.any(bias_update) or labels.size < 2:
        return None
    found = _deficits(bias_update, labels)
    if found is None:
        return None
    raw, rest = found
    if raw.min() <= 0:
        return None
    unit = raw.min()
    for _ in range(3):  # refit the unit (one count's mass) on all labels: the min alone is noisy
        counts = np.maximum(np.rint(raw / unit), 1.0)
        unit = float(np.median(raw / counts))
    ratio = raw / unit
    if np.max(np.abs(ratio - counts)) > tolerance:
        return None
    # The premise, checked on the non-labels: their P_c must be equal to within a fraction of
    # one count's mass. A partly trained model puts more mass on frequent pieces; a label among
    # them then looks like half a count, and every other label would be counted twice.
    spread = float(np.max(np.abs(rest - rest.mean())))
    if spread > tolerance * unit:
        return None
    return {int(c): int(n) for c, n in zip(labels, counts, strict=True)}


def counts_from_bias(bias_update: np.ndarray, labels: np.ndarray, total: int) -> dict[int, int]:
    """Label counts n_c (>= 1, summing to `total`) from a bias update or gradient (C,), any sign.

    Model: the summed bias gradient is `P_c - n_c` (P_c = softmax mass on class c, n_c = 0 off the
    labels). P_c is taken as the mean over the non-labels for every class; the unknown scale
    (the learning rate) follows from sum n_c = total. Rounded by largest remainder.
    """
    labels = np.asarray(labels)
    found = _deficits(bias_update, labels)
    if found is None:  # every class a label: no non-label mass to subtract
        b = np.asarray(bias_update, dtype=np.float64)
        raw = -(b if b.sum() < 0 else -b)
    else:
        raw = found[0]
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


def add_known_labels(found: Finding, known: Any) -> Finding:
    """`found` with the labels every sample is known to carry added (e.g. eos for speech).

    The protocol can make a class certain without the update: every speech target ends with eos.
    A trained model can still hide such a label from the cone test (its row then lies in the
    cone of the others), so a protocol-aware attacker adds it. S is kept; counts are dropped
    (set to None) when a label was added, since they were estimated without it. Findings that
    are not `LabelSet`s, or not ok, are returned unchanged. `diagnostics["added_known"]` lists
    the labels added.
    """
    known = sorted({int(k) for k in known})
    if not isinstance(found, LabelSet) or not found.ok or not known:
        return found
    added = [k for k in known if k not in found.labels]
    if not added:
        return found
    return replace(
        found,
        labels=tuple(sorted({*found.labels, *added})),
        counts=None,
        diagnostics={**found.diagnostics, "added_known": added},
    )
