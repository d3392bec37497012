"""Row space and rank of a last-layer update, for RLG (pure numpy).

For softmax cross-entropy the last layer's summed gradient is `W = G^T H` (layout (C, d)) where
row i of `G` (n, C) sums to zero. So every column of `W` lies in the span of the S = n vectors
`g_i`, and `1^T W = 0`. `row_space` returns an orthonormal basis `Q` (C, r) of that span (in the
paper's (d, C) layout it is the row space, hence the name) and the rank r.

Rank rule (when S is not given): project out the all-ones direction, take the singular values
`s_1 >= s_2 >= ...` (of W itself when it is small, else of a random sketch whose size grows
until it holds at least `2 r + oversample` columns, or `r + oversample` with everything below r
under the floor), and set

    r = the last i with s_i / s_{i+1} > ratio (default 4) and s_i > floor * eps(dtype) * s_1,

counting only i below the structural rank `min(C - 1, d')` (d' = nonzero feature columns) and,
with `after`, above `after` (the caller's retry when the first gap gave no valid label set).
In a sketch the values below the gap must also look like noise (under the floor, or flat like
an i.i.d. noise block: `gap_rank`), else the sketch grows: a sketch narrower than the rank
sees only the top of the signal, where a dominant direction (ReLU features share a positive
mean) is a gap of its own (ResNet-50, N = 100: r = 1 on 11 % of batches before this test).
It fails when the samples' gradients are nearly dependent below that floor (then the smallest
true singular values are lost), when the update carries noise above the floor with no clear gap
(e.g. float32 `after - before` at a tiny learning rate; several local steps with a large
weight norm), or when S >= min(C - 1, d) (reported by the caller as not applicable). The known S
(`num_labels`) avoids the rule; it is capped at the numerical rank (values above the floor).

Sketch path (min(C, d) >= `full_svd_below`), built to cost little more than one pass over W:
1. right sketch X = W^T Psi (d, k), Psi (C, k) centred uniform (so X = W_c^T Psi), float32
   products for float32 W; its first block also multiplies the all-ones vector (the column
   sums, for the row-sum diagnostic) and shows dead features as zero rows (d'). Psi's blocks
   are seeded per block and cached per shape (a server sees one shape on every update).
2. rank from the float64 Gram of X (k x k); z (d, r) = the top-r right singular vectors.
3. one pass W z: `W_c z = basis @ R` (one float64 Cholesky-QR pass; a second only when the
   columns are ill-conditioned: the cone test is invariant to R, the noise estimate uses it).
   Its error is that of an exact SVD to first order (z's sketch error enters only times the
   noise), so no power iteration is needed; a left sketch W Omega would amplify the noise by
   ~sqrt(d / (k - r)).
4. noise: X's residual outside z is pure noise (no extra pass over W, `_point_noise`).
Small dense operations run on one BLAS thread (threads only add waiting there).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import solve_triangular
from threadpoolctl import ThreadpoolController

__all__ = [
    "RowSpace",
    "clear_sketch_cache",
    "gap_rank",
    "one_blas_thread",
    "row_space",
    "steep_gap",
]

_BLAS = ThreadpoolController()


def one_blas_thread():
    """Context: BLAS on one thread, for small dense work (more threads only add waiting)."""
    return _BLAS.limit(limits=1, user_api="blas")


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
        column_sums: (d,) float64 `1^T W` (the sketch path gets it from its first pass; None
            when the sketch failed); for the row-sum diagnostic and the all-zero check.
        norm: ||W||_F (on the sketch path estimated from the sketch: E||W_c^T psi||^2 =
            ||W_c||_F^2 for a centred unit Gaussian psi, to a few percent).
        seconds: wall seconds per stage ("sketch", "rank", "basis", "noise"; "svd").
    """

    basis: np.ndarray
    singular_values: np.ndarray
    rank: int
    structural_rank: int
    method: str
    sketch_size: int
    point_noise: float = 0.0
    column_sums: np.ndarray | None = None
    norm: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)


def gap_rank(
    sv: np.ndarray,
    limit: int,
    eps: float,
    ratio: float = 4.0,
    floor: float = 10.0,
    after: int = 0,
    noise_rows: int | None = None,
) -> int | None:
    """The last i (1-based, after < i < limit) with sv[i-1]/sv[i] > ratio and
    sv[i-1] > floor*eps*sv[0] (and, with `noise_rows`, a noise-like tail: below).

    `noise_rows` (sketches only): the rows m of the sketch's noise block. Then a gap at i also
    needs the values below it, sv[i:], to look like noise: either under the floor, or flat
    within `ratio` times the Marchenko-Pastur spread (sqrt(m - i) + sqrt(k - i)) /
    (sqrt(m - i) - sqrt(k - i)) of an i.i.d. (m - i, k - i) block (k = len(sv)). Why: a sketch
    with fewer columns than the rank shows only the top of the signal, and a large leading
    direction (ReLU/avgpool features share a positive mean, so W ~ (sum_i g_i) mean^T + ...;
    s_1/s_2 ~ 3.5-4.4 on ResNet-50) is then a gap of its own whose tail is more signal that
    decays by 10-30x, not noise. A full spectrum (None) has no such test: its tail is the
    whole noise block, whose spread is unbounded when C ~ d.

    Returns None when no such i exists (no gap: the spectrum is all signal or all noise).
    """
    n = min(limit, len(sv))
    if n == 0 or sv[0] <= 0:
        return None
    head, tail = sv[: n - 1], sv[1:n]
    level = floor * eps * sv[0]
    big = head > level
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.where(tail > 0, head / np.where(tail > 0, tail, 1.0), np.inf) > ratio
    hits = np.flatnonzero(big & gaps)
    hits = hits[hits >= after]
    if noise_rows is not None and hits.size:
        k = len(sv)
        rest = np.maximum(sv[hits + 1], level) / max(float(sv[k - 1]), level)
        rows, cols = np.sqrt(np.maximum(noise_rows - hits - 1, 1)), np.sqrt(k - hits - 1)
        with np.errstate(divide="ignore"):
            spread = np.where(rows > cols, (rows + cols) / (rows - cols), np.inf)
        hits = hits[rest <= ratio * spread]
    return int(hits[-1]) + 1 if hits.size else None


def steep_gap(
    space: RowSpace, eps: float, floor: float = 10.0, sure_ratio: float = 8.0
) -> int | None:
    """The last i below `space.rank` with s_i / s_{i+1} > `sure_ratio` and s_i above the floor
    (`gap_rank` on the spectrum `space` used, with the Gram's own noise level on a sketch), or
    None.

    The caller's fallback when the estimated rank gave no label set: a defense can leave a
    structured residue under the S label directions (GradDrop keeps the larger half of the
    entries: s_S / s_S+1 = 9-60 on LAS, ~250 on a synthetic head, and a residue that decays
    over the next ~100-200 values instead of lying flat), so the rule takes a later gap in the
    residue (S ~ 90-200) that is too large or not a label set. 8 is twice the rule's ratio and
    above the dominant direction of ReLU/avgpool features (s_1 / s_2 = 3.5-6.2 on ResNet-50,
    LAS, Whisper-LAS)."""
    if space.method == "sketch":
        eps = _sketch_eps(eps, floor)
    return gap_rank(space.singular_values, space.rank, eps, sure_ratio, floor)


def _sketch_eps(eps: float, floor: float) -> float:
    """The relative precision of singular values from a sketch's float64 Gram: ~sqrt(eps64)
    absolute noise, so a value below `floor` times this is never trusted."""
    return max(eps, GRAM_EPS / floor)


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
        seed: seed of the Gaussian sketch.
        after: only gaps beyond this rank count (S unknown; 0: all).
    """
    num_classes, dim = matrix.shape
    eps = float(np.finfo(matrix.dtype).eps)
    small = min(num_classes, dim) < full_svd_below
    if small:
        clock = _Clock()
        if not np.all(np.isfinite(matrix)):
            return _failed(matrix, "svd", clock.seconds)
        live = np.any(matrix != 0, axis=0)
        dense = np.asarray(matrix[:, live], dtype=np.float64)
        col_sums = np.zeros(dim)
        col_sums[live] = dense.sum(axis=0)
        limit = min(num_classes - 1, int(live.sum()))
        dense = dense - dense.mean(axis=0, keepdims=True)
        u, sv, _ = np.linalg.svd(dense, full_matrices=False)
        r = _pick_rank(sv, limit, eps, num_labels, ratio, floor, after)
        dof = (num_classes - 1 - r) * (int(live.sum()) - r)
        noise = 0.0
        if r > 0 and dof > 0:
            sigma = float(np.sqrt(np.sum(sv[r:] ** 2) / dof))
            noise = sigma * float(np.sqrt(np.sum(1.0 / sv[:r] ** 2)))
        clock.stop("svd")
        norm = float(np.sqrt(np.sum(sv**2) + col_sums @ col_sums / num_classes))
        return RowSpace(u[:, :r].copy(), sv, r, limit, "svd", 0, noise, col_sums, norm,
                        clock.seconds)  # fmt: skip

    clock = _Clock()
    want = (
        max(first_sketch, 2 * after + oversample)
        if num_labels is None
        else int(num_labels) + oversample
    )
    k = min(num_classes - 1, dim, want)
    blocks: list[np.ndarray] = []
    have, col_sums, live, limit = 0, None, dim, min(num_classes - 1, dim)
    norms2: list[np.ndarray] = []
    eps_eff = _sketch_eps(eps, floor)
    while True:
        # Right sketch X = W^T Psi with centred Psi (= W_c^T Psi). The first block also
        # carries the all-ones column: W^T 1, the column sums, for free.
        psi, psi_norms2 = _sketch_block(num_classes, have, k, matrix.dtype, seed, col_sums is None)
        norms2.append(psi_norms2)
        block = np.asarray(matrix.T @ psi, dtype=np.float64)  # (d, new columns)
        clock.stop("sketch")
        if col_sums is None:
            block, col_sums = block[:, :-1], block[:, -1].copy()
            if not np.all(np.isfinite(block)) or not np.all(np.isfinite(col_sums)):
                return _failed(matrix, "sketch", clock.seconds)
            # A dead feature (a zero column of W) gives an exactly zero row of X.
            live = int(np.count_nonzero(np.any(block != 0, axis=1)))
            limit = min(num_classes - 1, live)
            k = min(k, max(limit, 1))
            block = block[:, : k - have]
            norms2[0] = norms2[0][: k - have]
        blocks.append(block)
        have = k
        x = np.hstack(blocks) if len(blocks) > 1 else blocks[0]
        with _BLAS.limit(limits=1, user_api="blas"):  # small: threads only add waiting
            evals, vecs = np.linalg.eigh(x.T @ x)
        evals, vecs = evals[::-1], vecs[:, ::-1]
        sv = np.sqrt(np.maximum(evals, 0.0))
        clock.stop("rank")
        if live == 0 or sv[0] == 0:
            r = 0
            break
        if num_labels is not None:
            r = _pick_rank(sv, limit, eps_eff, num_labels, ratio, floor)
            break
        r = gap_rank(sv, k, eps_eff, ratio, floor, after, noise_rows=live)
        if r is not None and (
            2 * r + oversample <= k or _settled(sv, r, k, oversample, eps_eff * floor)
        ):
            break
        if k >= limit:  # the whole spectrum: no noise-like tail needed (as for a full SVD)
            r = gap_rank(sv, k, eps_eff, ratio, floor, after) if r is None else r
            r = limit if r is None else r
            break
        k = min(limit, 2 * r + oversample if r is not None else 2 * k)
    psi_norm2 = float(np.mean(np.concatenate(norms2)))
    # E|W_c^T psi|^2 = ||W_c||_F^2 |psi|^2 / (C - 1) for a centred i.i.d. psi.
    norm2 = float(np.sum(x * x)) * (num_classes - 1) / (k * psi_norm2)
    norm = float(np.sqrt(norm2 + col_sums @ col_sums / num_classes))
    # W_c at the rounding level of the products with W itself (e.g. equal rows; a float32 sum
    # of C terms errs by up to ~C * eps of their size): nothing to find. A CE update is
    # centred, so there s_1 >= ||W||_F * |psi| / sqrt(d), far above this.
    if sv[0] <= floor * eps * np.sqrt(num_classes) * norm * np.sqrt(psi_norm2):
        r = 0
    r = min(r, int(np.count_nonzero(sv > 0)))
    if r == 0:
        return RowSpace(np.zeros((num_classes, 0)), sv, 0, limit, "sketch", k, 0.0, col_sums,
                        norm, clock.seconds)  # fmt: skip
    with _BLAS.limit(limits=1, user_api="blas"):
        # (d, r): top right singular vectors (the divisor only conditions the columns; kept
        # above sv[0] * eps64 so a denormal value cannot overflow them to inf)
        z = _orthonormal(x @ (vecs[:, :r] / np.maximum(sv[:r], sv[0] * 2.2e-16)))
    clock.stop("rank")
    # One pass with the r directions: W_c z = basis @ R has the first-order accuracy of an
    # exact SVD (z's own sketch error enters only times the noise), unlike a left sketch.
    y1 = np.asarray(matrix @ z.astype(matrix.dtype), dtype=np.float64)
    clock.stop("basis")
    with _BLAS.limit(limits=1, user_api="blas"):
        y1 -= y1.mean(axis=0, keepdims=True)
        basis, tri = _cholesky_qr(y1)
        clock.stop("basis")
        noise = _point_noise(x, z, tri, live, psi_norm2)
    clock.stop("noise")
    return RowSpace(basis, sv, r, limit, "sketch", k, noise, col_sums, norm, clock.seconds)


def _settled(sv: np.ndarray, r: int, k: int, oversample: int, level: float) -> bool:
    """A gap at r is final before the sketch holds 2r + oversample columns when everything
    below it is under the floor (level * s_1) in at least `oversample` columns: a sketch column
    catches a share of every signal direction it does not yet resolve, so more signal above
    the floor would show there (and values under the floor never count in the rank)."""
    return r + oversample <= k and sv[r] <= level * sv[0]


class _Clock:
    """Seconds per stage (`seconds[name]` += time since the last stop or start)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def stop(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def _failed(matrix: np.ndarray, stage: str, seconds: dict[str, float]) -> RowSpace:
    """A non-finite sketch: the update has NaN/Inf (or overflows float32 products)."""
    finite = bool(np.all(np.isfinite(matrix)))
    why = "overflows in float32 products (pass it as float64)" if finite else "contains NaN or Inf"
    return RowSpace(np.zeros((matrix.shape[0], 0)), np.zeros(0), 0, 0, f"failed: {why}", 0,
                    0.0, None, 0.0, {**seconds, stage: seconds.get(stage, 0.0)})  # fmt: skip


def _point_noise(
    x: np.ndarray, z: np.ndarray, tri: np.ndarray, live: int, psi_norm2: float
) -> float:
    """`RowSpace.point_noise` from the right sketch X = W_c^T Psi (d, k): its part outside the
    top-r right singular subspace z is the noise E_c^T Psi, with (live - r) * (k - r) degrees of
    freedom and per-entry variance sigma^2 * |psi|^2 (`psi_norm2`: the mean squared column
    norm of Psi), so no extra pass over W is needed. The residual is formed explicitly in
    float64 (the Gram's eigenvalues are too coarse for float32 noise next to a dominant s_1).
    `tri` is R of `W_c z = basis @ R`: a row's noise in basis coordinates has RMS norm
    sigma * ||R^-1||_F."""
    r, k = z.shape[1], x.shape[1]
    dof = (live - r) * (k - r) * psi_norm2
    if dof <= 0:
        return 0.0
    resid = x - z @ (z.T @ x)
    sigma = float(np.sqrt(np.sum(resid * resid) / dof))
    try:
        inv = solve_triangular(tri, np.eye(r))
    except np.linalg.LinAlgError:
        return 0.0
    return sigma * float(np.linalg.norm(inv))


GRAM_EPS = 1e-7


def _orthonormal(q: np.ndarray) -> np.ndarray:
    """q with orthonormal columns spanning the same space (`_cholesky_qr`)."""
    return _cholesky_qr(q)[0]


MAX_CHOLESKY_COND = 1e4  # above: one Cholesky-QR pass leaves ~eps64 * cond^2 > 1e-8; a second


def _cholesky_qr(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, R) with q = Q R, Q orthonormal, R (r, r) upper triangular.

    Cholesky-QR on the column-scaled Gram (scaling folded into one (r, r) factor, so q is read
    twice: the Gram and one product); a second pass only when the Cholesky factor's diagonal
    spread says the first left Q off orthonormal by more than ~1e-8 (eps64 * cond^2).
    Householder QR where the Gram is numerically singular."""
    if q.shape[1] == 0:
        return q, np.zeros((0, 0))
    gram = q.T @ q
    scale = np.sqrt(np.maximum(np.diag(gram), 0.0))
    scale[scale == 0] = 1.0
    gram /= np.outer(scale, scale)
    try:
        chol = np.linalg.cholesky(gram)  # lower: q D^-1 = Q chol^T
    except np.linalg.LinAlgError:
        return _householder(q, scale)
    inv_t = solve_triangular(chol, np.eye(len(chol)), lower=True).T
    basis = q @ (inv_t / scale[:, None])
    if not np.isfinite(basis).all():  # chol nearly singular: R^-1 overflowed
        return _householder(q, scale)
    tri = chol.T * scale
    diag = np.abs(np.diag(chol))
    if diag.min() * MAX_CHOLESKY_COND < diag.max():
        basis, again = _cholesky_qr(basis)
        tri = again @ tri
    return basis, tri


def _householder(q: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    basis, tri = np.linalg.qr(q / scale)
    return basis, tri * scale


def clear_sketch_cache() -> None:
    """Forget the cached sketch matrices (`_sketch_block`): the next call draws them again."""
    _SKETCHES.clear()


_SKETCHES: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
SKETCH_CACHE_BYTES = 64 * 2**20


def _sketch_block(
    num_classes: int, have: int, k: int, dtype: np.dtype, seed: int, ones: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Columns `have:k` of the right sketch matrix Psi (C, k - have) of `row_space`: centred
    uniform, drawn from their own seeded stream (so a block depends only on its key), with the
    all-ones column appended when `ones`; and their squared norms (float64, without the ones).

    Cached (read-only, least recently used, up to `SKETCH_CACHE_BYTES`): a server runs RLG on
    every update of the same shape, and drawing the block costs ~10 % of a sketch pass."""
    key = (num_classes, have, k, np.dtype(dtype).str, seed, ones)
    hit = _SKETCHES.get(key)
    if hit is not None:
        _SKETCHES.move_to_end(key)
        return hit
    rng = np.random.default_rng([seed, have, k])
    psi = rng.random((num_classes, k - have + ones), dtype=dtype)  # 4x cheaper than normal
    block = psi[:, : k - have]
    block -= block.mean(axis=0, dtype=dtype)
    norms2 = np.einsum("ij,ij->j", block, block, dtype=np.float64)
    if ones:
        psi[:, -1] = 1
    psi.flags.writeable = False
    norms2.flags.writeable = False
    _SKETCHES[key] = (psi, norms2)
    while sum(p.nbytes for p, _ in _SKETCHES.values()) > SKETCH_CACHE_BYTES and len(_SKETCHES) > 1:
        _SKETCHES.popitem(last=False)
    return psi, norms2


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
