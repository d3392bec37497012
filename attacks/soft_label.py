"""Soft-label inversion: the exact soft label and last-layer input from ONE sample's gradient.

For a last layer `z = W h + b` trained with cross-entropy on a soft target `y` (label smoothing,
mixup, or one-hot), the weight gradient of one sample's loss is the rank-one matrix `G = g h^T`
with `g = softmax(z) - y` (Wang, Liang, He, "Towards Eliminating Hard Label Constraints in
Gradient Inversion Attacks", ICLR 2024).

- With the bias gradient (`= g`) the answer is closed-form: `h = G^T g / |g|^2`, then
  `y = softmax(W h + b) - g`.
- Without it, the SVD `G = sigma u v^T` leaves one unknown scalar: `h = lam v`,
  `g = (sigma / lam) u`, and the candidate label `y(lam) = softmax(lam W v + b) - (sigma/lam) u`.
  The true `lam` is a root of the label's structural residual (all entries but the top one
  equal: smoothing; all but the top two zero: mixup). Instead of the paper's local L-BFGS from
  `lam = +-1` we scan both signs of `lam` on a dense log grid over the whole admissible range
  (`|g| <= min(sqrt 2, 1/max|u_j|)` because `y` and `softmax` both lie in the simplex, down to
  `|g| = alpha_min`), polish every local minimum by Gauss-Newton, add the closed-form roots of
  the hard/mixup log-linear equations as extra seeds, and keep every root that gives a valid
  label (non-negative, sums to one, right structure). Two distinct valid labels -> `ambiguous`.

Signs and units: `weight_grad` is the gradient of the loss (not an update); for one SGD step
with learning rate `lr` it is `-(after - before) / lr`. Labels are probability vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attacks.input_checks import check_magnitude
from fedcore import Finding, Score, not_applicable
from fedcore.tensors import to_numpy

if TYPE_CHECKING:
    from fedcore import Truth

__all__ = [
    "KINDS",
    "SoftLabel",
    "label_kind",
    "recover_soft_label",
    "structure_residual",
]

KINDS = ("hard", "smoothing", "mixup")
_SEARCH_KINDS = {"auto": ("smoothing", "mixup"), "hard": ("hard",)}
_SEARCH_KINDS.update({"smoothing": ("smoothing",), "mixup": ("mixup",)})


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftLabel(Finding):
    """A recovered soft label and last-layer input of one sample.

    Attributes:
        label: `(C,)` float64, the recovered training target (sums to one).
        features: `(d,)` float64, the recovered input `h` of the last linear layer.
        kind: "hard", "smoothing" or "mixup" (the structure the label fits).
        diagnostics: method ("closed_form" or "root_search"), lam (`h = lam v`), rank_ratio
            (sigma_2 / sigma_1), residual_<kind> for each kind searched (structural residual
            over |g|), num_valid_roots, ambiguous, valid, epsilon / mixup_weight, ...
    """

    SCORES = (
        Score("l1", higher_is_better=False),
        Score("success", headline=True),
        Score("top1_correct", "top1"),
        Score("kind_correct", "kind_ok"),
        Score("feature_cosine", "feat_cos"),
        Score("paper_success", "paper_ok"),
    )

    label: np.ndarray | None = None
    features: np.ndarray | None = None
    kind: str = ""

    def score(self, truth: Truth) -> dict[str, float]:
        """Scores against `truth.soft_labels[0, 0]` (one-hot of `truth.labels[0, 0]` if None).

        l1: sum |y_hat - y|; success: 1.0 iff l1 < 1e-3 (the strict metric); top1_correct;
        kind_correct: the structure of the true label equals `kind`. With `truth.features`:
        feature_cosine, feature_rel_error `|h_hat - h| / |h|`, and the paper's criterion
        (it compares the scalar lam with the true one): lam_rel_error `|lam*/lam_hat - 1|`
        with `lam*/lam_hat = <h, h_hat> / |h_hat|^2`, paper_success iff it is < 1e-3 (the
        paper's exact threshold is not stated in what we read; 1e-3 is ours).
        """
        if not self.ok or self.label is None:
            return {}
        label = np.asarray(self.label, dtype=np.float64)
        if truth.soft_labels is not None:
            true = np.asarray(truth.soft_labels, dtype=np.float64)[0, 0]
        else:
            true = np.zeros_like(label)
            true[int(np.asarray(truth.labels)[0, 0])] = 1.0
        l1 = float(np.abs(label - true).sum())
        scores = {
            "l1": l1,
            "success": float(l1 < 1e-3),
            "top1_correct": float(int(np.argmax(label)) == int(np.argmax(true))),
            "kind_correct": float(label_kind(true) == self.kind),
        }
        if truth.features is not None and self.features is not None:
            h = np.asarray(truth.features, dtype=np.float64)[0, 0].ravel()
            h_hat = np.asarray(self.features, dtype=np.float64).ravel()
            nh, nhh = float(np.linalg.norm(h)), float(np.linalg.norm(h_hat))
            if nh > 0 and nhh > 0:
                scores["feature_cosine"] = float(h @ h_hat / (nh * nhh))
                scores["feature_rel_error"] = float(np.linalg.norm(h_hat - h) / nh)
                lam_err = abs(float(h @ h_hat) / nhh**2 - 1.0)
                scores["lam_rel_error"] = lam_err
                scores["paper_success"] = float(lam_err < 1e-3)
        return scores


def label_kind(label: np.ndarray, atol: float = 1e-9) -> str:
    """Structure of an exact (ground-truth) label: "hard", "mixup" (two non-zero entries),
    "smoothing" (all but the top entry equal and positive), or "other"."""
    y = np.asarray(label, dtype=np.float64).ravel()
    nonzero = int((np.abs(y) > atol).sum())
    if nonzero == 1:
        return "hard"
    rest = np.delete(y, int(np.argmax(y)))
    if y.size > 2 and np.ptp(rest) <= atol and rest[0] > atol:
        return "smoothing"
    if nonzero == 2:
        return "mixup"
    return "other"


def structure_residual(label: np.ndarray, kind: str) -> tuple[float, dict[str, Any]]:
    """Absolute 2-norm distance of `label` `(C,)` from the nearest label of structure `kind`
    with the same top entries, and that structure's parameters (class ids, epsilon, weights)."""
    y = np.asarray(label, dtype=np.float64).ravel()
    dev2, _ = _dev2(y[None, :], kind)
    order = np.argsort(-y)
    c = y.size
    if kind == "mixup":
        params = {"classes": (int(order[0]), int(order[1])), "weights": (y[order[0]], y[order[1]])}
    elif kind == "smoothing":
        params = {"classes": (int(order[0]),), "epsilon": float(c * (1.0 - y[order[0]]) / (c - 1))}
    else:
        params = {"classes": (int(order[0]),)}
    return float(np.sqrt(max(dev2[0], 0.0))), params


def _dev2(y: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Squared structural residual of each row of `y` `(n, C)` and the row's top index
    (computed entry by entry: no cancellation when the residual is tiny)."""
    n, c = y.shape
    rows = np.arange(n)
    top = np.argmax(y, axis=1)
    d = y.copy()
    if kind == "hard":
        d[rows, top] -= 1.0
    elif kind == "smoothing":
        d[rows, top] = 0.0
        d -= (d.sum(axis=1) / (c - 1))[:, None]
        d[rows, top] = 0.0
    elif kind == "mixup":
        if c < 3:
            return np.zeros(n), top
        two = np.argpartition(-y, 1, axis=1)[:, :2]
        d[rows[:, None], two] = 0.0
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return (d * d).sum(axis=1), top


def _residual_vector(y: np.ndarray, kind: str, targets: Sequence[int]) -> np.ndarray:
    """Linear structural residual of `y` `(C,)` for fixed target classes (used by Newton)."""
    rest = np.ones(y.size, dtype=bool)
    rest[targets] = False
    if kind == "smoothing":
        r = y[rest]
        return r - r.mean()
    if kind == "hard":
        out = y.copy()
        out[targets[0]] -= 1.0
        return out
    return y[rest]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class _Root:
    lam: float
    kind: str
    residual: float  # |structural deviation|_2 / |g|
    label: np.ndarray
    flat: bool = False  # not identifiable: noise could move the label by > max_error
    error_estimate: float = 0.0  # L1 label error a residual at the noise level would cause
    entry_residual: float = 0.0  # max over entries of |structural deviation| / (p_j + |g_j|)


class _Problem:
    """`y(lam) = softmax(lam a + b) - (sigma / lam) u` and its derivative."""

    def __init__(self, a: np.ndarray, b: np.ndarray, u: np.ndarray, sigma: float):
        self.a, self.b, self.u, self.sigma = a, b, u, sigma

    def labels(self, lam: np.ndarray) -> np.ndarray:
        p = _softmax(lam[:, None] * self.a[None, :] + self.b[None, :])
        return p - (self.sigma / lam)[:, None] * self.u[None, :]

    def labels_and_slopes(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = _softmax(lam[:, None] * self.a[None, :] + self.b[None, :])
        y = p - (self.sigma / lam)[:, None] * self.u[None, :]
        pa = p @ self.a
        dy = p * (self.a[None, :] - pa[:, None]) + (self.sigma / lam**2)[:, None] * self.u
        return y, dy

    def label_and_slope(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        p = _softmax(lam * self.a + self.b)
        y = p - (self.sigma / lam) * self.u
        dy = p * (self.a - p @ self.a) + (self.sigma / lam**2) * self.u
        return y, dy


def _rows_residual(y: np.ndarray, dy: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Structural residual `R` and its slope `dR/dlam` for each row of `y`, `dy` `(n, C)`,
    the target classes (top 1, top 2 for mixup) read from each row of `y`."""
    n, c = y.shape
    rows = np.arange(n)
    rest = np.ones_like(y, dtype=bool)
    if kind == "mixup":
        rest[rows[:, None], np.argpartition(-y, 1, axis=1)[:, :2]] = False
        return y * rest, dy * rest
    top = np.argmax(y, axis=1)
    if kind == "hard":
        r = y.copy()
        r[rows, top] -= 1.0
        return r, dy
    rest[rows, top] = False
    e = (y * rest).sum(axis=1, keepdims=True) / (c - 1)
    de = (dy * rest).sum(axis=1, keepdims=True) / (c - 1)
    return (y - e) * rest, (dy - de) * rest


def _polish(
    prob: _Problem, lam: np.ndarray, kind: str, bounds: tuple[float, float], iters: int = 40
) -> np.ndarray:
    """Gauss-Newton on the structural residual, all seeds `lam` `(n,)` at once; each keeps its
    sign, steps are capped to a factor 4 and `|lam|` stays in `bounds`; the best iterate of
    each seed is returned."""
    lo, hi = bounds
    lam = np.asarray(lam, dtype=np.float64).copy()
    best, best_r = lam.copy(), np.full(lam.shape, np.inf)
    for _ in range(iters):
        y, dy = prob.labels_and_slopes(lam)
        r, j = _rows_residual(y, dy, kind)
        rn = (r * r).sum(axis=1)
        better = rn < best_r
        best[better], best_r[better] = lam[better], rn[better]
        jj = (j * j).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = lam - (j * r).sum(axis=1) / jj
        new = np.where(np.isfinite(new) & (np.sign(new) == np.sign(lam)), new, lam * 2.0)
        mag = np.clip(np.abs(new), np.maximum(np.abs(lam) / 4, lo), np.minimum(np.abs(lam) * 4, hi))
        new = np.sign(lam) * mag
        if np.all(np.abs(new - lam) <= 1e-13 * np.abs(lam)):
            break
        lam = new
    return best


def _log_linear_seeds(prob: _Problem, kind: str) -> list[float]:
    """Closed-form `lam` for hard / mixup labels: for non-target j, `y_j = 0` means
    `log(s u_j) - lam a_j - b_j` is the same for every such j (least squares over them)."""
    c = prob.u.size
    k = 2 if kind == "mixup" else 1
    if c - k < 2:
        return []
    seeds = []
    for s in (1.0, -1.0):
        su = s * prob.u
        rest = np.argsort(su)[k:]
        if np.any(su[rest] <= 0):
            continue
        t = np.log(su[rest]) - prob.b[rest]
        x = prob.a[rest] - prob.a[rest].mean()
        den = float(x @ x)
        if den <= 0:
            continue
        lam = float(x @ (t - t.mean())) / den
        if lam != 0 and np.sign(lam) == s:
            seeds.append(lam)
    return seeds


def _search(
    prob: _Problem, kinds: Sequence[str], alpha_min: float, grid_points: int, max_seeds: int
) -> list[_Root]:
    """All polished roots (valid or not) of each kind's structural residual, both signs."""
    u = prob.u
    alpha_max = 1.05 * min(np.sqrt(2.0), 1.0 / float(np.abs(u).max()))
    alphas = np.geomspace(alpha_max, alpha_min, grid_points)
    bounds = (prob.sigma / alpha_max, prob.sigma / alpha_min)
    grid = {s: (s * prob.sigma / alphas) for s in (1.0, -1.0)}
    labels = {s: prob.labels(lam) for s, lam in grid.items()}
    roots: list[_Root] = []
    for kind in kinds:
        seeds: list[float] = _log_linear_seeds(prob, kind) if kind != "smoothing" else []
        for s, lam in grid.items():
            r = np.sqrt(np.maximum(_dev2(labels[s], kind)[0], 0.0)) / alphas
            inner = np.flatnonzero((r[1:-1] <= r[:-2]) & (r[1:-1] <= r[2:])) + 1
            inner = inner[np.argsort(r[inner])][:max_seeds]
            seeds += [float(x) for x in lam[inner]]
        seeds_arr = np.array([x for x in seeds if bounds[0] <= abs(x) <= bounds[1]])
        if seeds_arr.size == 0:
            continue
        for lam in _polish(prob, seeds_arr, kind, bounds):
            if abs(lam) >= 0.999 * bounds[1]:  # ran off to lam -> inf: the saturated limit
                continue
            y = prob.labels(np.array([lam]))[0]
            dev, _ = structure_residual(y, kind)
            roots.append(_Root(float(lam), kind, dev / (prob.sigma / abs(lam)), y))
    return roots


def _is_valid(root: _Root, tol: float, atol: float) -> bool:
    y = root.label
    ok = root.residual < tol and y.min() >= -atol and y.max() <= 1 + atol
    return bool(ok and abs(y.sum() - 1.0) < max(atol, 1e-6))


def _with_flatness(prob: _Problem, root: _Root, max_error: float, noise: float) -> _Root:
    """Attach the entry-relative residual and mark a root "flat" (not identifiable).

    Gradient entries carry relative noise `noise` each (float32 outer products do), so the
    structural residual is weighted entry by entry by `1 / (p_j + |g_j|)`. The label error
    such noise causes is about `noise * sqrt(n) * |dy/dlam|_1 / |dR_w/dlam|`; above
    `max_error` the root is flat (e.g. a saturated softmax under label smoothing, where
    rescaling h and g leaves both the gradient and the prediction unchanged)."""
    lam = root.lam
    p = _softmax(lam * prob.a + prob.b)
    y, dy = prob.label_and_slope(lam)
    k = 2 if root.kind == "mixup" else 1
    targets = np.argsort(-y)[:k]
    rest = np.ones(y.size, dtype=bool)
    rest[targets] = False
    scale = (p + (prob.sigma / abs(lam)) * np.abs(prob.u) + 1e-300)[rest]
    if root.kind == "hard":
        r, j = y[rest], dy[rest]
    else:
        r = _residual_vector(y, root.kind, targets)
        j = _residual_vector(dy, root.kind, targets)
    jn = float(np.linalg.norm(j / scale))
    err = noise * np.sqrt(r.size) * float(np.abs(dy).sum()) / jn if jn > 0 else float("inf")
    rel = float(np.abs(r / scale).max()) if r.size else 0.0
    return _Root(lam, root.kind, root.residual, root.label, err > max_error, err, rel)


def _classify(y: np.ndarray, kind: str, hard_tol: float) -> str:
    """The kind to report for a valid root of `kind`: "hard" when it is one-hot within hard_tol."""
    order = np.argsort(-y)
    if y[order[0]] >= 1.0 - hard_tol:
        return "hard"
    return kind


def recover_soft_label(
    weight_grad: torch.Tensor | np.ndarray,
    weight: torch.Tensor | np.ndarray,
    bias: torch.Tensor | np.ndarray | None = None,
    bias_grad: torch.Tensor | np.ndarray | None = None,
    kind: str = "auto",
    *,
    rank_tol: float = 1e-3,
    tol: float = 1e-3,
    atol: float = 1e-4,
    hard_tol: float = 1e-4,
    alpha_min: float = 1e-10,
    grid_points: int = 2000,
    max_seeds: int = 6,
    ambiguity_ratio: float = 100.0,
    max_error: float = 1e-3,
    noise: float = 1e-6,
) -> SoftLabel | Finding:
    """Recover the soft label `(C,)` and last-layer input `(d,)` of one sample.

    Args:
        weight_grad: `(C, d)` gradient of ONE sample's cross-entropy loss w.r.t. the last
            layer's weight (a gradient, not an update: for one SGD step, `-update / lr`).
        weight: `(C, d)` the layer's weight at which the gradient was taken.
        bias: `(C,)` its bias, or None for a layer without bias.
        bias_grad: `(C,)` the bias gradient if known (closed form); None -> 1-D root search.
        kind: "auto" (pick the structure that fits), "hard", "smoothing" or "mixup".
        rank_tol: largest sigma_2/sigma_1 accepted as rank one (one sample).
        tol: largest structural residual, relative to |g| = |softmax(z) - y|, of a valid root.
        atol: slack on non-negativity / <= 1 / sum-to-one of a valid label.
        hard_tol: a valid label with top entry >= 1 - hard_tol is reported as "hard".
        alpha_min: smallest |g| searched (root search only).
        grid_points: grid size per sign and kind over log |g| (root search only).
        max_seeds: local minima of the grid polished per sign and kind.
        ambiguity_ratio: another distinct valid root whose entry residual is within this
            factor of the best one, or below 10 * noise (both exact within the gradient's
            precision), makes the answer `ambiguous` (roots far worse are only counted).
        max_error: a root whose estimated L1 label error (from a residual at the noise level)
            exceeds this is "not identifiable" and makes the answer `ambiguous`.
        noise: relative noise level of the gradient (1e-6 suits float32 gradients; larger
            for updates differenced in float32).

    Returns:
        `SoftLabel` (status ok; `diagnostics["valid"]` False when no root gave a valid label,
        `diagnostics["ambiguous"]` True when several distinct valid labels exist, the one
        with the smallest residual is returned), or a `not_applicable` finding when the
        gradient is not a single sample's (rank > 1), is zero, or its rows do not sum to zero.
    """
    g_w, w, b = _checked_inputs(weight_grad, weight, bias, bias_grad, kind)
    for array, name in ((g_w, "weight_grad"), (w, "weight"), (b, "bias")):
        check_magnitude(array, name)
    spectrum = _rank_one(g_w, rank_tol)
    if isinstance(spectrum, Finding):
        return spectrum
    u, v, sigma, diag = spectrum
    if bias_grad is not None:
        g = to_numpy(bias_grad, np.float64, finite=True, name="bias_grad").ravel()
        check_magnitude(g, "bias_grad")
        return _closed_form(g_w, w, b, g, kind, diag, tol, atol, hard_tol)
    prob = _Problem(w @ v, b, u, sigma)
    kinds = _SEARCH_KINDS[kind]
    roots = _search(prob, kinds, alpha_min, grid_points, max_seeds)
    if not roots:
        return not_applicable("the root search found no candidate lam in range", **diag)
    for k in kinds:
        res = [r.residual for r in roots if r.kind == k]
        diag[f"residual_{k}"] = float(min(res)) if res else float("inf")
    valid = [_with_flatness(prob, r, max_error, noise) for r in roots if _is_valid(r, tol, atol)]
    best, found, picked = _pick(roots, valid, hard_tol, ambiguity_ratio, noise)
    diag.update(picked, lam=best.lam)
    diag.update(_params(best.label, found))
    return SoftLabel(label=best.label, features=best.lam * v, kind=found, diagnostics=diag)


def _checked_inputs(
    weight_grad: Any, weight: Any, bias: Any, bias_grad: Any, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weight gradient `(C, d)`, weight `(C, d)` and bias `(C,)` (zero when None) as finite
    float64 arrays; ValueError on bad shapes or options."""
    if kind not in ("auto", *KINDS):
        raise ValueError(f"kind must be 'auto', 'hard', 'smoothing' or 'mixup', got {kind!r}")
    g_w = to_numpy(weight_grad, np.float64, finite=True, name="weight_grad")
    w = to_numpy(weight, np.float64, finite=True, name="weight")
    if g_w.ndim != 2 or w.shape != g_w.shape:
        raise ValueError(
            f"weight_grad {g_w.shape} and weight {w.shape} must both be (C, d) "
            "(nn.Linear layout: classes first)"
        )
    c, _ = g_w.shape
    if c < 2:
        raise ValueError("need at least two classes (C >= 2)")
    b = np.zeros(c) if bias is None else to_numpy(bias, np.float64, finite=True, name="bias")
    b = b.ravel()
    if b.shape != (c,):
        raise ValueError(f"bias must have shape ({c},), got {b.shape}")
    if bias_grad is not None and bias is None:
        raise ValueError("bias_grad given without bias: pass the layer's bias too")
    return g_w, w, b


def _rank_one(
    g_w: np.ndarray, rank_tol: float
) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]] | Finding:
    """`G = sigma u v^T`: (u, v, sigma, diagnostics), or a `not_applicable` finding when G is
    zero, not rank one, or its rows do not sum to zero (not a softmax cross-entropy gradient)."""
    _, ss, vt = np.linalg.svd(g_w, full_matrices=False)
    sigma = float(ss[0])
    if sigma == 0.0:
        return not_applicable("the weight gradient is zero (nothing to invert)")
    rank_ratio = float(ss[1] / sigma) if ss.size > 1 else 0.0
    diag: dict[str, Any] = {"rank_ratio": rank_ratio, "sigma": sigma}
    if rank_ratio > rank_tol:
        return not_applicable(
            f"the weight gradient is not rank one (sigma2/sigma1 = {rank_ratio:.3g} > "
            f"{rank_tol:g}): it sums several samples; soft-label inversion needs batch size 1 "
            "and one local step",
            **diag,
        )
    v = vt[0]
    # u from G v, row by row: each entry keeps its relative precision (the SVD's u has only
    # absolute precision ~1e-16, which wipes out tiny softmax entries the search needs)
    u = g_w @ v / sigma
    if v.sum() < 0:  # convention: lam > 0 for mostly non-negative features (after a ReLU)
        u, v = -u, -v
    col_sum = float(abs(u.sum()))
    diag["column_sum"] = col_sum
    if col_sum > max(10 * rank_tol, 1e-6) * np.sqrt(g_w.shape[0]):
        return not_applicable(
            f"the gradient's rows do not sum to zero (|sum u| = {col_sum:.3g}): not a softmax "
            "cross-entropy gradient, or the weight is not laid out (C, d)",
            **diag,
        )
    return u, v, sigma, diag


def _pick(
    roots: list[_Root], valid: list[_Root], hard_tol: float, ambiguity_ratio: float, noise: float
) -> tuple[_Root, str, dict[str, Any]]:
    """The root to report, its kind, and diagnostics: the best distinct valid root (flat ones
    last), ambiguous when a rival fits nearly as well; without a valid root, the smallest
    residual."""
    distinct: list[_Root] = []
    for r in sorted(valid, key=lambda r: (r.flat, r.entry_residual, r.residual)):
        if all(np.abs(r.label - d.label).sum() > 1e-3 for d in distinct):
            distinct.append(r)
    diag: dict[str, Any] = {
        "method": "root_search",
        "num_valid_roots": len(distinct),
        "valid": bool(distinct),
    }
    if not distinct:
        best = min(roots, key=lambda r: r.residual)
        return best, best.kind, {**diag, "ambiguous": False}
    best = distinct[0]
    limit = max(ambiguity_ratio * best.entry_residual, 10 * noise)
    rivals = [r for r in distinct[1:] if not r.flat and r.entry_residual <= limit]
    diag["identifiable"] = not best.flat
    diag["label_error_estimate"] = float(best.error_estimate)
    diag["entry_residual"] = best.entry_residual
    diag["ambiguous"] = bool(rivals) or bool(best.flat)
    if rivals:
        diag["rival_lams"] = tuple(float(r.lam) for r in rivals)
    return best, _classify(best.label, best.kind, hard_tol), diag


def _closed_form(
    g_w: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    g: np.ndarray,
    kind: str,
    diag: dict[str, Any],
    tol: float,
    atol: float,
    hard_tol: float,
) -> SoftLabel | Finding:
    """`h = G^T g / |g|^2`, `y = softmax(W h + b) - g` (bias gradient known)."""
    if g.shape != (w.shape[0],):
        raise ValueError(f"bias_grad must have shape ({w.shape[0]},), got {g.shape}")
    gn2 = float(g @ g)
    if gn2 == 0.0:
        return not_applicable("the bias gradient is zero: the label equals the prediction")
    h = g_w.T @ g / gn2
    y = _softmax(w @ h + b) - g
    alpha = np.sqrt(gn2)
    diag.update(
        method="closed_form",
        outer_residual=float(np.linalg.norm(g_w - np.outer(g, h)) / np.linalg.norm(g_w)),
    )
    kinds = ("smoothing", "mixup") if kind == "auto" else (kind,)
    roots = []
    for k in kinds:
        dev, _ = structure_residual(y, k)
        diag[f"residual_{k}"] = dev / alpha
        roots.append(_Root(1.0, k, dev / alpha, y))
    valid = [r for r in roots if _is_valid(r, tol, atol)]
    best = min(valid or roots, key=lambda r: r.residual)
    found = _classify(y, best.kind, hard_tol) if valid else best.kind
    diag.update(valid=bool(valid), ambiguous=False, num_valid_roots=int(bool(valid)))
    diag.update(_params(y, found))
    return SoftLabel(label=y, features=h, kind=found, diagnostics=diag)


def _params(y: np.ndarray, kind: str) -> dict[str, Any]:
    _, params = structure_residual(y, "hard" if kind == "hard" else kind)
    out: dict[str, Any] = {"top_class": int(params["classes"][0])}
    if kind == "smoothing":
        out["epsilon"] = float(params["epsilon"])
    if kind == "mixup":
        out["second_class"] = int(params["classes"][1])
        out["mixup_weight"] = float(params["weights"][0])
    return out
