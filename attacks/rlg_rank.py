"""Row space and rank of a last-layer update, for RLG (pure numpy).

For softmax cross-entropy the last layer's summed gradient is `W = G^T H` (layout (C, d)) where
row i of `G` (n, C) sums to zero. So every column of `W` lies in the span of the S = n vectors
`g_i`, and `1^T W = 0`. `row_space` returns an orthonormal basis `Q` (C, r) of that span (in the
paper's (d, C) layout it is the row space, hence the name) and the rank r.

Rank rule (when S is not given): project out the all-ones direction, take the singular values
`s_1 >= s_2 >= ...` (of W itself when it is small, else of a Gaussian sketch `W @ Omega` whose
size doubles until it holds at least `2 r + oversample` columns), and set

    r = the last i with s_i / s_{i+1} > ratio (default 4) and s_i > floor * eps(dtype) * s_1,

counting only i below the structural rank `min(C - 1, d')` (d' = nonzero feature columns) and,
with `after`, above `after` (the caller's retry when the first gap gave no valid label set).
It fails when the samples' gradients are nearly dependent below that floor (then the smallest
true singular values are lost), when the update carries noise above the floor with no clear gap
(e.g. float32 `after - before` at a tiny learning rate; several local steps with a large
weight norm), or when S >= min(C - 1, d) (reported by the caller as not applicable). The known S
(`num_labels`) avoids the rule; it is capped at the numerical rank (values above the floor).
Orthonormalisation is in float64; float32 inputs are multiplied in float32 (harmless here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RowSpace", "gap_rank", "row_space"]


@dataclass(frozen=True)
class RowSpace:
    """Basis of the span of the samples' logit gradients.

    Attributes:
        basis: (C, r) float64, orthonormal columns, each orthogonal to the all-ones vector.
        singular_values: float64 singular values used for the rank decision (of W or a sketch).
        rank: r, the number of basis columns.
        structural_rank: min(C - 1, nonzero feature columns): the largest rank W can have.
        method: "svd" (full) or "sketch".
        sketch_size: columns of the sketch (0 for "svd").
        point_noise: estimated RMS norm of the noise in a row of `basis` (0 when not
            estimated): the update's energy outside the rank-r approximation, as an i.i.d.
            per-entry noise (std `sigma`), mapped into basis coordinates,
            `sigma * ||R^-1||_F` with `W_centred @ V_r = basis @ R`. Rows much shorter than
            this carry no reliable direction (classes the model is confident about).
    """

    basis: np.ndarray
    singular_values: np.ndarray
    rank: int
    structural_rank: int
    method: str
    sketch_size: int
    point_noise: float = 0.0


def gap_rank(
    sv: np.ndarray,
    limit: int,
    eps: float,
    ratio: float = 4.0,
    floor: float = 10.0,
    after: int = 0,
) -> int | None:
    """The last i (1-based, after < i < limit) with sv[i-1]/sv[i] > ratio and
    sv[i-1] > floor*eps*sv[0].

    Returns None when no such i exists (no gap: the spectrum is all signal or all noise).
    """
    n = min(limit, len(sv))
    if n == 0 or sv[0] <= 0:
        return None
    head, tail = sv[: n - 1], sv[1:n]
    big = head > floor * eps * sv[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.where(tail > 0, head / np.where(tail > 0, tail, 1.0), np.inf) > ratio
    hits = np.flatnonzero(big & gaps)
    hits = hits[hits >= after]
    return int(hits[-1]) + 1 if hits.size else None


def _numerical_rank(sv: np.ndarray, eps: float, floor: float) -> int:
    return int(np.sum(sv > floor * eps * sv[0])) if sv.size and sv[0] > 0 else 0


def row_space(
    matrix: np.ndarray,
    num_labels: int | None = None,
    *,
    ratio: float = 4.0,
    floor: float = 10.0,
    oversample: int = 10,
    first_sketch: int = 64,
    full_svd_below: int = 384,
    refine: bool = True,
    seed: int = 0,
    after: int = 0,
) -> RowSpace:
    """Orthonormal basis of the column span of `matrix` (C, d) (float32 or float64 numpy).

    Args:
        matrix: the last layer's update or gradient, any sign or scale.
        num_labels: S when known; None estimates it with the rule in the module docstring.
        ratio, floor: the rank rule's gap ratio and noise floor (in units of eps(dtype) * s_1).
        oversample: extra sketch columns beyond S (and the `2 r + oversample` acceptance margin).
        first_sketch: sketch size of the first try when S is unknown.
        full_svd_below: use a full float64 SVD when min(C, d) is below this.
        refine: after the sketch, one subspace iteration on the rank-r basis (two more
            products with the update; recovers labels whose margin is below the sketch error).
        seed: seed of the Gaussian sketch.
        after: only gaps beyond this rank count (S unknown; 0: all).
    """
    num_classes, dim = matrix.shape
    eps = float(np.finfo(matrix.dtype).eps)
    small = min(num_classes, dim) < full_svd_below
    if small:
        live = np.any(matrix != 0, axis=0)
        dense = np.asarray(matrix[:, live], dtype=np.float64)
        limit = min(num_classes - 1, int(live.sum()))
        dense = dense - dense.mean(axis=0, keepdims=True)
        u, sv, _ = np.linalg.svd(dense, full_matrices=False)
        r = _pick_rank(sv, limit, eps, num_labels, ratio, floor, after)
        dof = (num_classes - 1 - r) * (int(live.sum()) - r)
        noise = 0.0
        if r > 0 and dof > 0:
            sigma = float(np.sqrt(np.sum(sv[r:] ** 2) / dof))
            noise = sigma * float(np.sqrt(np.sum(1.0 / sv[:r] ** 2)))
        return RowSpace(u[:, :r].copy(), sv, r, limit, "svd", 0, noise)

    limit = min(num_classes - 1, dim)
    rng = np.random.default_rng(seed)
    want = (
        max(first_sketch, 2 * after + oversample)
        if num_labels is None
        else int(num_labels) + oversample
    )
    k = min(limit, want)
    blocks: list[np.ndarray] = []
    have = 0
    # Gram-based singular values carry ~sqrt(eps64) absolute noise: never trust values below it.
    eps_eff = max(eps, GRAM_EPS / floor)
    while True:
        omega = rng.standard_normal((dim, k - have)).astype(matrix.dtype)
        blocks.append(np.asarray(matrix @ omega, dtype=np.float64))
        have = k
        y = np.hstack(blocks) if len(blocks) > 1 else blocks[0]
        y = y - y.mean(axis=0, keepdims=True)
        evals, vecs = np.linalg.eigh(y.T @ y)
        evals, vecs = evals[::-1], vecs[:, ::-1]
        sv = np.sqrt(np.maximum(evals, 0.0))
        if num_labels is not None:
            r = _pick_rank(sv, limit, eps_eff, num_labels, ratio, floor)
            break
        r = gap_rank(sv, k, eps_eff, ratio, floor, after)
        if r is not None and 2 * r + oversample <= k:
            break
        if k >= limit:
            r = limit if r is None else r
            break
        k = min(limit, max(2 * k, 2 * (r or 0) + oversample))
    basis = _orthonormal(y @ (vecs[:, :r] / sv[:r]))
    noise = 0.0
    if refine and r > 0:
        # One subspace iteration on the r-dim basis: the sketch's noise amplification
        # (about sqrt(k) / (sqrt(k) - sqrt(r))) drops to that of an exact SVD.
        z, _ = np.linalg.qr(np.asarray(matrix.T @ basis.astype(matrix.dtype), dtype=np.float64))
        y1 = np.asarray(matrix @ z.astype(matrix.dtype), dtype=np.float64)
        y1 -= y1.mean(axis=0, keepdims=True)
        basis = _orthonormal(_orthonormal(y1))
        noise = _point_noise(matrix, z, y1, basis, rng)
    return RowSpace(basis, sv, r, limit, "sketch+refine" if refine else "sketch", k, noise)


def _point_noise(
    matrix: np.ndarray, z: np.ndarray, y1: np.ndarray, basis: np.ndarray, rng: np.random.Generator
) -> float:
    """`RowSpace.point_noise` after the refinement: z (d, r) orthonormal spans W's top
    right-singular subspace and y1 = W_c z = basis @ R. The per-entry noise std comes from the
    float64 residual `w_c - (w_c z) z^T` of up to 512 random rows (a float32 product would
    drown it in its own rounding)."""
    num_classes, dim = matrix.shape
    r = z.shape[1]
    if dim <= r:
        return 0.0
    rows = np.asarray(matrix[np.sort(rng.choice(num_classes, min(512, num_classes), False))],
                      dtype=np.float64)  # fmt: skip
    resid = rows - (rows @ z) @ z.T
    sigma = float(np.sqrt(np.mean(resid * resid) * dim / (dim - r)))
    try:
        inv = np.linalg.inv(basis.T @ y1)
    except np.linalg.LinAlgError:
        return 0.0
    return sigma * float(np.linalg.norm(inv))


GRAM_EPS = 1e-7


def _orthonormal(q: np.ndarray) -> np.ndarray:
    """One Cholesky-QR pass: q with orthonormal columns (q is already nearly orthonormal)."""
    if q.shape[1] == 0:
        return q
    chol = np.linalg.cholesky(q.T @ q)
    return np.linalg.solve(chol, q.T).T


def _pick_rank(
    sv: np.ndarray,
    limit: int,
    eps: float,
    num_labels: int | None,
    ratio: float,
    floor: float,
    after: int = 0,
) -> int:
    if num_labels is not None:
        return min(int(num_labels), limit, _numerical_rank(sv, eps, floor))
    r = gap_rank(sv, limit, eps, ratio, floor, after)
    return limit if r is None else r
