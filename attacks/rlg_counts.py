"""Label counts (the batch's class histogram) for any batch, from the last layer's update and the
global model: the softmax-consistent class means, an integer least squares, and a certainty per
count.

Notation (softmax cross-entropy; every quantity on the scale of a sum over the S = N * K samples):
`GW = sum_i (p_i - y_i) h_i^T` (C, d) and `gb = sum_i (p_i - y_i) = P - n` (C,), with `p_i =
softmax(W h_i + b)` under the global model's last layer `(W, b)`, `h_i` the layer input of
sample i, `P` the batch's summed softmax and `n` the counts. The server reads them from the
update as `-divisor / lr * update` (`divisor` = N, the batch each step's mean divides by).

For a non-label c the bias gives `P_c` exactly; for a label the unknown `P_c` is the whole
problem. The model: the samples of class j share their mean input `m_j / n_j` (`m_j` the summed
input of class j), so `P ~ sum_j n_j p_j` with `p_j = softmax(W m_j / n_j + b)`, and the rows of
GW give the sums: `GW_c = sum_j p_jc m_j - [c in L] m_c`, fitted by least squares on the label
rows and the 2 |L| largest other rows (the `m_j` lie in the span of those rows, so each solve runs
in that span after one product `W GW_R^T`). A confident class admits two solutions (low and high
confidence, the same label row); each class's scale is found by secant steps on its log from
several starting scales (x1 to x300), and each class keeps the solution that fits its own row and
bias entry best. Given the `p_j` the bias equation `gb = sum_j n_j (p_j - e_j)` is linear in `n`:
a small integer least squares (sum = S, n >= 1 on RLG's labels or n >= 0 on all classes) solved
by rounding and exchange moves; `n` and the class means alternate to a fixed point, then exchange
moves are re-solved with the class means (each from the solution with its classes' mean inputs
kept; with at most `THOROUGH` classes also from every starting scale). Exact for duplicated
samples (their mean is themselves); the error of sharing a mean is second order in the spread of
a class's logits.

Certainty: a count is returned only when changing it by one (moving one count to or from the
best other class, class means re-solved) makes the bias residual at least `margin` times worse
than the residual of the solution plus its noise floor. Where one sample of a class hardly moves
the bias (a trained model confident on that class: `1 - p_jj` near 0, so the softmax mass of the
class is unknown to the precision of one count) or the shared-mean model does not fit (the residual
is large), the count is not pinned and the estimate carries `counts=None` with the reason and the
counts that were pinned. BatchNorm (either mode) and the model body do not enter: only the last
layer's input and output are modelled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from attacks.baselines import as_numpy_2d
from attacks.label_counts import as_vector

__all__ = ["CountEstimate", "softmax_counts"]

BOOSTS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
THOROUGH = 40  # up to this many classes, every class-mean solve tries every starting scale


@dataclass(frozen=True)
class CountEstimate:
    """The result of `softmax_counts`.

    Attributes:
        counts: class -> count (summing to `total`) when every count is pinned, else None.
        estimate: the best integer histogram, pinned or not (class -> count, positive only).
        margins: class -> how many times the residual grows when that count moves by one
            (the certainty; inf when no alternative exists).
        unpinned: class -> why the count is not pinned down (empty when `counts` is given).
        residual: the relative bias residual of the estimate, `|gb - gb_hat| / |gb|`.
        reason: why `counts` is None ("" when given).
        iterations: fixed-point rounds of counts and class means.
    """

    counts: dict[int, int] | None
    estimate: dict[int, int]
    margins: dict[int, float]
    unpinned: dict[int, str] = field(default_factory=dict)
    residual: float = 0.0
    reason: str = ""
    iterations: int = 0

    def diagnostics(self) -> dict[str, Any]:
        """Plain values for a finding's diagnostics."""
        return {
            "count_estimate": self.estimate,
            "count_margins": {c: round(float(m), 3) for c, m in self.margins.items()},
            "count_unpinned": self.unpinned,
            "count_residual": self.residual,
            "count_iterations": self.iterations,
            **({"count_reason": self.reason} if self.reason else {}),
        }


def _selection(num_rows: int, k: int) -> np.ndarray:
    """(num_rows, k): ones at (j, j), the label rows (the first k rows) of their classes."""
    sel = np.zeros((num_rows, k))
    sel[np.arange(k), np.arange(k)] = 1.0
    return sel


def _softmax_columns(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


class _Model:
    """The shared-mean model of one batch: class probabilities for a support and counts."""

    def __init__(self, gw: np.ndarray, gb: np.ndarray, weight: np.ndarray, bias: np.ndarray):
        self.gw, self.gb, self.weight, self.bias = gw, gb, weight, bias
        self.num_classes = gw.shape[0]
        self.row_norms = np.linalg.norm(gw, axis=1)
        self._rows: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def rows(self, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(R, W GW_R^T)` for a support L (cached): the rows R fitted are L and the 2 |L|
        largest other rows of GW (the others' softmax mass on them: they fix the scale of the
        class means where a label row alone allows two)."""
        key = tuple(int(c) for c in support)
        if key not in self._rows:
            others = np.setdiff1d(np.arange(self.num_classes), support)
            top = others[np.argsort(-self.row_norms[others], kind="stable")[: 2 * support.size]]
            rows = np.concatenate([support, np.sort(top)])
            self._rows[key] = (rows, self.weight @ self.gw[rows].T)
        return self._rows[key]

    def probabilities(
        self,
        support: np.ndarray,
        n: np.ndarray,
        start: np.ndarray | None = None,
        iters: int = 60,
        tol: float = 1e-9,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(probs, coef)`: probs (C, |L|) has column j = `softmax(W m_j / n_j + b)`, with the
        class sums `m = coef @ GW_R` fitted by least squares to the rows R of
        `GW_c = sum_j p_jc m_j - [c in L] m_c`.

        Solved as a fixed point in which each class's scale is found by a secant step on its
        log (the plain iteration is unstable where a class's confidence grows with its scale),
        from a small scale (`m_c = -GW_c`, exact at p = 0) and from `start`, and, where the model
        is confident, from a larger scale; the solution whose rows fit best is kept."""
        rows, wg = self.rows(support)
        warm = None
        if start is not None:  # a nearby solution (one count moved): continue from it
            warm = self._solve_scales(rows, wg, support, n, start, iters, tol)
            if warm[0] is not None and support.size > THOROUGH:
                return warm[0], warm[1]
        # scales from m_c = -GW_c (p = 0) up to 300x (a confident class: 1 - p_cc ~ 1/300);
        # each class keeps the start whose solution fits its own row best, then one joint solve
        base = -_selection(rows.size, support.size).T
        tried = [self._solve_scales(rows, wg, support, n, base * boost, iters, tol)
                 for boost in BOOSTS]  # fmt: skip
        per_row = np.stack([t[3] for t in tried])  # (starts, |L|)
        pick = np.argmin(per_row, axis=0)
        mixed = np.stack([tried[p][1][j] for j, p in enumerate(pick)])
        tried.append(self._solve_scales(rows, wg, support, n, mixed, iters, tol))
        if warm is not None:  # few classes: the best fit over the warm start and every start
            tried.append(warm)
        probs, coef, _, _ = min(tried, key=lambda t: t[2])
        if probs is None:  # no start converged: the p = 0 solution
            probs = _softmax_columns(wg @ base.T / n[None, :] + self.bias[:, None])
            coef = base
        return probs, coef

    def _solve_scales(self, rows, wg, support, n, coef, iters, tol):
        """One solve from `coef`: each class row is `exp(x_j) u_j`; the direction u_j follows the
        least-squares solution, the log-scale x_j solves `log(wanted scale / x_j) = 0` by secant
        steps. Returns (probs, coef, relative misfit of the rows R)."""
        sel = _selection(rows.size, support.size)

        def evaluate(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            probs = _softmax_columns(wg @ c.T / n[None, :] + self.bias[:, None])
            if not np.all(np.isfinite(probs)):
                raise np.linalg.LinAlgError("non-finite probabilities")
            new = np.linalg.pinv(probs[rows, :] - sel)
            ratio = np.einsum("ij,ij->i", new, c) / np.maximum(np.einsum("ij,ij->i", c, c), 1e-300)
            return probs, new, np.log(np.clip(ratio, 1e-3, 1e3))

        norms = np.maximum(np.linalg.norm(coef, axis=1), 1e-300)
        x, u = np.log(norms), coef / norms[:, None]
        low, high = x - 12.0, x + 12.0  # scales within e^12 of the start
        prev = None
        for _ in range(iters):
            try:
                probs, new, g = evaluate(np.exp(x)[:, None] * u)
            except np.linalg.LinAlgError:
                k = support.size
                return None, coef, np.inf, np.full(k, np.inf)
            if np.max(np.abs(g)) < tol:
                break
            step = g
            if prev is not None:
                dx, dg = x - prev[0], g - prev[1]
                ok = (np.abs(dx) > 1e-12) & (np.abs(dg) > 1e-12 * np.abs(dx))
                step = np.where(ok, -g * dx / np.where(ok, dg, 1.0), g)
            prev = (x, g)
            x = np.clip(x + np.clip(step, -1.0, 1.0), low, high)
            lengths = np.maximum(np.linalg.norm(new, axis=1), 1e-300)
            turned = np.einsum("ij,ij->i", new, u) <= 0  # keep a class's side: no sign flips
            u = np.where(turned[:, None], u, new / lengths[:, None])
        coef = np.exp(x)[:, None] * u
        probs = _softmax_columns(wg @ coef.T / n[None, :] + self.bias[:, None])
        if not np.all(np.isfinite(probs)):
            return None, coef, np.inf, np.full(support.size, np.inf)
        gw_rows = self.gw[rows]
        misfit = (probs[rows, :] - sel) @ coef @ gw_rows - gw_rows
        scale = max(np.linalg.norm(gw_rows), 1e-300)
        # each class judged by its own weight row and its own bias entry (both must fit)
        bias_res = self.residual(support, n, probs)
        bias_scale = max(float(np.linalg.norm(self.gb)), 1e-300)
        per_class = np.linalg.norm(misfit[: support.size], axis=1) / scale
        per_class = per_class + np.abs(bias_res[support]) / bias_scale
        total = float(np.linalg.norm(misfit) / scale + np.linalg.norm(bias_res) / bias_scale)
        return probs, coef, total, per_class

    def residual(self, support: np.ndarray, n: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """`gb - sum_j n_j (p_j - e_j)` (C,)."""
        pred = probs @ n
        pred[support] -= n
        return self.gb - pred


def _integer_fit(
    cols: np.ndarray, gb: np.ndarray, total: int, low: int, start: np.ndarray
) -> np.ndarray:
    """Integers n >= low summing to `total` minimising `|cols @ n - gb|`, from `start`, by
    exchange moves (one count from a to b) while the residual drops."""
    n = start.astype(np.int64).copy()
    res = gb - cols @ n
    for _ in range(4 * total + 10):
        # moving one count from a to b changes the residual by cols[:, a] - cols[:, b]
        gain = cols.T @ res  # (k,)
        sq = np.einsum("ij,ij->j", cols, cols)
        gram = cols.T @ cols
        # |res - cols_b + cols_a|^2 - |res|^2 = -2 res.(cols_b - cols_a) + |cols_b - cols_a|^2
        delta = (
            -2.0 * (gain[None, :] - gain[:, None]) + sq[None, :] + sq[:, None] - 2.0 * gram
        )  # [a, b]
        delta[n <= low, :] = np.inf
        np.fill_diagonal(delta, np.inf)
        a, b = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if not delta[a, b] < -1e-12 * max(float(res @ res), 1e-300):
            break
        n[a] -= 1
        n[b] += 1
        res = gb - cols @ n
    return n


def _round_start(raw: np.ndarray, total: int, low: int) -> np.ndarray:
    """Largest-remainder rounding of `raw` to integers >= low summing to `total`."""
    x = np.clip(raw - low, 0.0, None)
    rest = total - low * raw.size
    x = x * (rest / x.sum()) if x.sum() > 0 else np.full(raw.size, rest / raw.size)
    n = np.floor(x).astype(np.int64)
    order = np.argsort(-(x - n), kind="stable")
    n[order[: rest - int(n.sum())]] += 1
    return n + low


def softmax_counts(
    weight_grad: Any,
    bias_grad: Any,
    weight: Any,
    bias: Any,
    total: int,
    labels: Any | None = None,
    *,
    margin: float = 4.0,
    max_residual: float = 0.05,
    noise_floor: float = 1e-6,
    max_rounds: int = 12,
    max_seconds: float = 20.0,
    threads: int | None = 1,
) -> CountEstimate:
    """The batch's label counts from the last layer's gradient and the global model (module doc).

    Args:
        weight_grad: `sum_i (p_i - y_i) h_i^T` (C, d), i.e. `-divisor / lr * weight update`.
        bias_grad: `sum_i (p_i - y_i)` (C,), i.e. `-divisor / lr * bias update`.
        weight, bias: the global model's last layer (C, d), (C,).
        total: the number of samples S = N * K (> 0).
        labels: the label set (e.g. RLG's), counts >= 1 on it and 0 elsewhere; None searches all
            classes with counts >= 0.
        margin: the factor by which the residual must grow when a count moves by one for that
            count to be pinned.
        max_residual: the largest relative bias residual `|gb - gb_hat| / |gb|` of the best
            histogram for which any count is given (above it the shared-mean model does not
            explain the update, e.g. a trained model whose samples of one class differ widely).
        noise_floor: the residual floor, relative to `|gb|` (float32 rounding of the update).
        max_rounds: alternations of counts and class means.
        max_seconds: time for the search of exchange moves; a search cut short gives no counts
            (the reason says so).
        threads: BLAS threads during the call (1: more only thrash on a loaded CPU; None keeps
            the library's setting).

    Returns:
        `CountEstimate`; `counts` None (with `reason` and `unpinned`) unless every count is
        pinned.
    """
    if threads is None:
        return _solve(weight_grad, bias_grad, weight, bias, total, labels, margin,
                      max_residual, noise_floor, max_rounds, max_seconds)  # fmt: skip
    with threadpool_limits(limits=int(threads), user_api="blas"):
        return _solve(weight_grad, bias_grad, weight, bias, total, labels, margin,
                      max_residual, noise_floor, max_rounds, max_seconds)  # fmt: skip


def _solve(
    weight_grad: Any,
    bias_grad: Any,
    weight: Any,
    bias: Any,
    total: int,
    labels: Any | None,
    margin: float,
    max_residual: float,
    noise_floor: float,
    max_rounds: int,
    max_seconds: float,
) -> CountEstimate:
    deadline = time.perf_counter() + float(max_seconds)
    gw = as_numpy_2d(weight_grad)
    num_classes = gw.shape[0]
    gb = as_vector(bias_grad, num_classes, "bias_grad")
    w = as_numpy_2d(weight, "weight")
    b = as_vector(bias, num_classes, "bias")
    if w.shape != gw.shape:
        raise ValueError(f"weight has shape {w.shape}, weight_grad {gw.shape}")
    if int(total) <= 0:
        raise ValueError(f"total must be > 0, got {total}")
    total = int(total)
    if not np.all(np.isfinite(gw)):
        raise ValueError("weight_grad contains NaN or Inf")
    if labels is None:
        support, low = np.arange(num_classes), 0
    else:
        support, low = np.unique(np.asarray(labels, dtype=np.int64)), 1
        if support.size == 0 or support.min() < 0 or support.max() >= num_classes:
            raise ValueError(f"labels must be class ids in [0, {num_classes}), got {labels}")
        if support.size > total:
            raise ValueError(f"{support.size} labels cannot share {total} samples")
    scale = float(np.linalg.norm(gb))
    if scale == 0:
        return CountEstimate(None, {}, {}, residual=0.0, reason="the bias update is zero")
    model = _Model(gw, gb, w, b)
    if low == 1 and support.size in (1, total):  # forced: one label, or every sample distinct
        counts = {int(c): total // support.size for c in support}
        return CountEstimate(counts, counts, dict.fromkeys(counts, float("inf")))

    # start: uniform softmax mass (LLBG's prior) on the support
    n = _round_start(total / num_classes - gb[support], total, low)
    active = support if low else support[n > 0]
    rounds, warm = 0, None
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (reported)
        k_active = active if active.size else support
        same = warm is not None and np.array_equal(warm[0], k_active)
        start = _rescaled(warm[1], warm[2], n_of(n, support, k_active)) if same else None
        probs, coef = model.probabilities(
            k_active, np.maximum(n_of(n, support, k_active), 0.5), start
        )
        warm = (k_active, coef, n_of(n, support, k_active))
        cols = _columns(probs, support, k_active)
        new = _integer_fit(cols, gb, total, low, n)
        if np.array_equal(new, n):
            break
        n = new
        active = support if low else support[n > 0]
    active = support[n > 0]
    same = warm is not None and np.array_equal(warm[0], active)
    start = _rescaled(warm[1], warm[2], n[n > 0].astype(float)) if same else None
    probs, coef = model.probabilities(active, n[n > 0].astype(float), start)
    best = _rel(model.residual(active, n[n > 0].astype(float), probs), scale)
    table = None
    if low == 1 and (best > 1e-3 or support.size <= THOROUGH):  # p moves with n: re-solve moves
        n, best, coef, table = _refine(model, support, n, probs, coef, best, scale, total, deadline)
        active = support[n > 0]
        if table is None:
            estimate = {int(c): int(k) for c, k in zip(support, n, strict=True) if k > 0}
            return CountEstimate(
                None, estimate, {}, {c: "search cut short" for c in estimate}, best,
                f"the search of exchange moves reached max_seconds = {max_seconds}", rounds,
            )  # fmt: skip
    estimate = {int(c): int(k) for c, k in zip(support, n, strict=True) if k > 0}
    if low == 0 and active.size == num_classes:
        return CountEstimate(
            None, estimate, {}, {c: "every class present" for c in estimate}, best,
            "every class has a count (S >= C): the class means, and with them the softmax mass "
            "of each label, are not identifiable from the update",
            rounds,
        )  # fmt: skip
    if best > max_residual:
        return CountEstimate(
            None, estimate, {}, {c: "no fit" for c in estimate}, best,
            f"the shared-mean model leaves {best:.3g} of the bias update unexplained (> "
            f"{max_residual}): the samples of a class differ too much for the counts to be read",
            rounds,
        )  # fmt: skip
    if table is not None and support.size <= THOROUGH:  # every move was re-solved: use them
        margins = _table_margins(table, support, n, best + noise_floor)
    else:
        margins = _margins(model, support, n, low, best, scale, noise_floor)
    unpinned = {
        c: f"a count of {estimate.get(c, 0)} +- 1 fits the bias only {m:.2f}x worse (< {margin})"
        for c, m in margins.items()
        if m < margin
    }
    if unpinned:
        return CountEstimate(
            None,
            estimate,
            margins,
            unpinned,
            best,
            f"{len(unpinned)} of {len(margins)} counts not pinned down by the bias update "
            "(a confident model's softmax mass, or classes whose inputs do not share a mean)",
            rounds,
        )
    return CountEstimate(estimate, estimate, margins, {}, best, "", rounds)


def _refine(model, support, n, probs, coef, best, scale, total, deadline, top=12):
    """Exchange moves (one count from a to b, label set fixed) re-solved with the class means,
    each from the solution with the two classes' sums rescaled to their new counts (their mean
    inputs kept): every move for few classes, else the `top` best of the fixed-p model; the best
    improvement is taken until none improves. Returns (n, residual, coef, {(a, b): residual}),
    the table None when `deadline` (perf_counter seconds) passed first."""
    table: dict[tuple[int, int], float] = {}
    for _ in range(2 * total):
        cols = _columns(probs, support, support)
        res = model.gb - cols @ n
        gain = cols.T @ res
        sq = np.einsum("ij,ij->j", cols, cols)
        delta = -2.0 * (gain[None, :] - gain[:, None]) + sq[None, :] + sq[:, None]
        delta -= 2.0 * (cols.T @ cols)
        delta[n <= 1, :] = np.inf
        np.fill_diagonal(delta, np.inf)
        size = 3 * support.size if support.size <= THOROUGH else top
        order = np.argsort(delta, axis=None)[:size]
        found, table = None, {}
        for flat in order:
            a, b = np.unravel_index(int(flat), delta.shape)
            if not np.isfinite(delta[a, b]):
                break
            if time.perf_counter() > deadline:
                return n, best, coef, None
            alt = n.copy()
            alt[a] -= 1
            alt[b] += 1
            p_alt, c_alt = model.probabilities(support, alt.astype(float), _rescaled(coef, n, alt))
            r_alt = _rel(model.residual(support, alt.astype(float), p_alt), scale)
            table[(int(a), int(b))] = r_alt
            if r_alt < best and (found is None or r_alt < found[1]):
                found = (alt, r_alt, p_alt, c_alt)
        if found is None:
            break
        n, best, probs, coef = found
    return n, best, coef, table


def _table_margins(table, support, n, floor) -> dict[int, float]:
    """Per class: the best residual of a move to or from it, over the residual (+ floor)."""
    out = {}
    for i in np.flatnonzero(n > 0):
        r = [v for (a, b), v in table.items() if i in (a, b)]
        out[int(support[i])] = min(r) / floor if r else float("inf")
    return out


def _rescaled(coef: np.ndarray, n: np.ndarray, alt: np.ndarray) -> np.ndarray:
    """Class sums for counts `alt` that keep the mean inputs of the solution for counts `n`."""
    return coef * (alt / np.maximum(n, 1))[:, None]


def n_of(n: np.ndarray, support: np.ndarray, active: np.ndarray) -> np.ndarray:
    """The counts of the `active` classes (a subset of `support`) as floats."""
    index = np.searchsorted(support, active)
    return n[index].astype(float)


def _columns(probs: np.ndarray, support: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(C, |support|): column j = p_j - e_j; classes outside `active` get the mean of the active
    columns' probabilities (a class with no sample yet: what one sample of it would add)."""
    num_classes = probs.shape[0]
    cols = np.empty((num_classes, support.size))
    index = np.searchsorted(support, active)
    mean = probs.mean(axis=1)
    cols[:] = mean[:, None]
    cols[:, index] = probs
    cols[support, np.arange(support.size)] -= 1.0
    return cols


def _rel(res: np.ndarray, scale: float) -> float:
    return float(np.linalg.norm(res) / scale)


def _margins(
    model: _Model,
    support: np.ndarray,
    n: np.ndarray,
    low: int,
    best: float,
    scale: float,
    noise_floor: float,
) -> dict[int, float]:
    """Per class with a count: (residual of the best +-1 alternative) / (residual + floor)."""
    floor = best + noise_floor
    pos = np.flatnonzero(n > 0)
    active = support[pos]
    probs, coef = model.probabilities(active, n[pos].astype(float))
    cols = _columns(probs, support, active)
    res0 = model.residual(active, n[pos].astype(float), probs)
    out: dict[int, float] = {}
    # every class with a count, and (labels unknown) every class without one: can it gain one?
    for i in range(support.size) if low == 0 else pos:
        worst = np.inf
        for sign in (+1, -1):
            if sign < 0 and n[i] <= low:
                continue
            # partner: the class whose opposite move fits best on the fixed-p model
            trial = res0[:, None] - sign * (cols[:, [i]] - cols)
            cost = np.einsum("ij,ij->j", trial, trial)
            cost[i] = np.inf
            if sign > 0:
                cost[n <= low] = np.inf
            if not np.isfinite(cost).any():
                continue
            j = int(np.argmin(cost))
            alt = n.copy()
            alt[i] += sign
            alt[j] -= sign
            keep = np.flatnonzero(alt > 0)
            if np.array_equal(keep, pos):  # same classes: re-solved from the solution
                act, k_alt = support[keep], alt[keep].astype(float)
                p_alt, _ = model.probabilities(act, k_alt, _rescaled(coef, n[pos], alt[keep]))
                r_alt = _rel(model.residual(act, k_alt, p_alt), scale)
            else:  # a class appears or vanishes: the fixed-p model (one count moves ~1 of bias)
                r_alt = float(np.sqrt(cost[j])) / scale
            worst = min(worst, r_alt / floor)
        out[int(support[i])] = float(worst)
    return out
