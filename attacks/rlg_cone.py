"""Which points are separable from all the others by a hyperplane through the origin (pure math).

Point c of `points` (C, r) is *separable* when some u has `u . q_c < 0` and `u . q_j >= 0` for
every j != c. By Farkas' lemma that holds iff `q_c` is not in the cone spanned by the other
points. RLG's labels are exactly the separable rows of a basis of the logit gradients' span.

Two exact deciders:
- `separable_lp`: one HiGHS LP per point against all other points (the reference).
- `separable_fast`: (1) grow a set T of points that positively spans R^r (then every point
  outside T lies in cone(T), a certificate that it is not separable: the provably safe
  screen); (2) for each c in T, a non-negative least-squares fit of q_c on the other points of a
  working set either reaches zero residual (c is not separable) or its residual gives a
  hyperplane; one matrix product checks every hyperplane against all C points, violators join
  that working set and the fit repeats. A point whose loop does not settle falls back to the LP.
Rows are scaled to unit norm. The fast decider accepts c when its hyperplane u (scaled so
`u . q_c = -1`) has `u . q_j >= -feas_tol` for all j != c, and rejects it when the NNLS residual
is at most `res_tol`; the LP solves the membership problem with HiGHS' primal feasibility
tolerance (1e-7). The two agree except on points within about that of the cone's boundary.

Noise (`noise_tol` = t > 0, in the points' own units): the points of a float32 update carry
rounding noise, and the cone test is scale-free, so a short point (a class the model gives ~0
probability) has a random direction and can hide a label. With noise the test asks for a
hyperplane u (`u . q_c/|q_c| = -1`) with `u . q_j >= -t` for the raw points q_j, so a point
shorter than t constrains nothing. By Farkas this fails iff `q_c/|q_c| = sum_j l_j q_j` with
`l >= 0` and `t * sum_j l_j < 1`: c is rejected only by a combination of bounded weight. t = 0
is the exact test above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog, nnls

__all__ = ["ConeDecision", "positive_spanning_set", "separable_fast", "separable_lp"]


LP_TOL = 1e-7  # HiGHS' default primal feasibility tolerance


@dataclass(frozen=True)
class ConeDecision:
    """Result of `separable_fast`.

    Attributes:
        separable: sorted int array of the separable point indices.
        spans: False when the points do not positively span R^r (no safe screen exists).
        candidates: |T|, the points left after the screen.
        nnls_calls, lp_calls, rounds: work done.
        min_margin: smallest `u . q_j` (j != c, normalised so `u . q_c = -1`) over accepted
            points: the certificates' worst slack (>= -feas_tol).
        max_residual: largest NNLS residual over rejected candidates (their certificates).
    """

    separable: np.ndarray
    spans: bool
    candidates: int
    nnls_calls: int
    lp_calls: int
    rounds: int
    min_margin: float
    max_residual: float


def _unit_rows(points: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit norm; rows at most 1e-12 of the longest become zero."""
    norms = _row_norms(points) if norms is None else norms
    tiny = norms <= 1e-12 * (norms.max() if norms.size else 0.0)
    return points * np.where(tiny, 0.0, 1.0 / np.where(tiny, 1.0, norms))[:, None]


def _row_norms(points: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", points, points))


def _nnls(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min ||a x - b||, x >= 0; returns (x, b - a x)."""
    x, _ = nnls(a, b, maxiter=50 * max(a.shape[1], 1))
    return x, b - a @ x


def positive_spanning_set(
    unit: np.ndarray, start: np.ndarray, res_tol: float = 1e-9, max_rounds: int = 200
) -> tuple[np.ndarray | None, int, int]:
    """Grow `start` (indices) until its points positively span R^r.

    Test: T positively spans R^r iff rank(T) = r and `-sum(T)` is in cone(T) (then some
    strictly positive combination is zero). Returns (T or None if all points fail, nnls calls,
    rounds).
    """
    dim = unit.shape[1]
    members = np.zeros(unit.shape[0], dtype=bool)
    members[start] = True
    calls = 0
    for rounds in range(1, max_rounds + 1):
        t = np.flatnonzero(members)
        a = unit[t].T
        left, sv, _ = np.linalg.svd(a, full_matrices=True)
        rank = int(np.sum(sv > 1e-10 * sv[0])) if sv.size else 0
        if rank < dim:
            u = left[:, rank]  # orthogonal to every point of T
            score = np.abs(unit @ u)
        else:
            b = -a.sum(axis=1)
            _, rho = _nnls(a, b)
            calls += 1
            if np.linalg.norm(rho) <= res_tol * max(np.linalg.norm(b), 1.0):
                return t, calls, rounds
            score = unit @ (rho / np.linalg.norm(rho))  # T lies in {x: u.x <= 0}
        score[members] = -np.inf
        out = np.flatnonzero(score > 1e-12)
        if out.size == 0:
            return None, calls, rounds
        grow = max(dim // 2, 8)
        members[out[np.argsort(-score[out])[:grow]]] = True
    return None, calls, max_rounds


def separable_lp(
    points: np.ndarray,
    classes: np.ndarray | None = None,
    lp_tol: float = LP_TOL,
    noise_tol: float = 0.0,
) -> np.ndarray:
    """Reference: for each c in `classes` (default all), is q_c separable from all others?

    One HiGHS LP per point against all other points (rows scaled to unit norm): q_c is
    separable iff `q_c = sum_j lambda_j q_j, lambda >= 0` is infeasible (with `noise_tol`:
    infeasible with `noise_tol * sum_j lambda_j |q_j|^-1 < 1`, module doc). Returns a bool
    array aligned with `classes`.
    """
    points = np.asarray(points, dtype=np.float64)
    norms = _row_norms(points)
    unit = _unit_rows(points, norms)
    classes = np.arange(unit.shape[0]) if classes is None else np.asarray(classes)
    out = np.zeros(len(classes), dtype=bool)
    for i, c in enumerate(classes):
        out[i] = _lp_one(unit, int(c), lp_tol, norms, noise_tol)
    return out


def _lp_one(
    unit: np.ndarray, c: int, lp_tol: float, norms: np.ndarray | None = None, noise_tol: float = 0.0
) -> bool:
    """Is q_c outside cone{q_j, j != c}? HiGHS LP: lambda >= 0 with sum_j lambda_j q_j = q_c.

    With `noise_tol` the LP minimises the weight `sum_j lambda_j / |q_j|` and q_c counts as
    separable unless `noise_tol` times that weight is below 1.
    (This membership form has only r equality rows; the separating-hyperplane form with C
    inequality rows is equivalent by Farkas but stalls HiGHS' simplex on these degenerate LPs.)
    """
    if not np.any(unit[c]):
        return False
    keep = np.any(unit != 0, axis=1)
    keep[c] = False
    others = unit[keep]
    cost = np.zeros(len(others))
    if noise_tol > 0 and norms is not None:
        cost = 1.0 / norms[keep]
    tries = (("highs", True), ("highs-ipm", True), ("highs-ds", False))
    for method, presolve in tries:  # HiGHS occasionally ends "Unknown" on degenerate inputs
        res = linprog(
            cost,
            A_eq=others.T,
            b_eq=unit[c],
            bounds=(0, None),
            method=method,
            options={"primal_feasibility_tolerance": lp_tol, "presolve": presolve},
        )
        if res.status == 2:
            return True
        if res.status == 0:
            return bool(noise_tol > 0 and noise_tol * res.fun >= 1.0)
    raise RuntimeError(f"HiGHS could not decide point {c}: {res.message}")


def _longest(norms: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest positive `norms`, largest first (a partial sort: which of
    several equal norms at the cut is kept is unspecified; the screen set is only a start)."""
    live = np.flatnonzero(norms > 0)
    if live.size > count:
        live = live[np.argpartition(-norms[live], count - 1)[:count]]
        live.sort()
    return live[np.argsort(-norms[live], kind="stable")]


def separable_fast(
    points: np.ndarray,
    *,
    feas_tol: float = 1e-9,
    res_tol: float = 1e-9,
    noise_tol: float = 0.0,
    extra: int | None = None,
    max_rounds: int = 30,
) -> ConeDecision:
    """Exact separability of every row of `points` (C, r), with a safe screen (module doc).

    Args:
        points: rows q_c (any scale; zero rows are never separable).
        feas_tol: allowed slack of `u . q_j >= 0` when `u . q_c = -1` (as in the LP).
        res_tol: an NNLS residual (unit rows) at or below this proves c is in the others' cone.
        noise_tol: absolute noise of the points (module doc); 0 for the exact test.
        extra: size of the first screen set beyond r (default max(8, r // 4)), largest norms first.
        max_rounds: hyperplane/violator rounds before a point falls back to the LP.
    """
    points = np.asarray(points, dtype=np.float64)
    dim = points.shape[1]
    norms = _row_norms(points)
    unit = _unit_rows(points, norms)
    live = unit.any(axis=1)
    with np.errstate(divide="ignore"):
        slack = feas_tol + noise_tol / np.where(live, norms, 0.0)  # per unit row
    first = _longest(
        np.where(live, norms, 0.0), dim + (max(8, dim // 4) if extra is None else extra)
    )
    t, calls, rounds = positive_spanning_set(unit, first, res_tol)
    if t is None:
        return ConeDecision(np.array([], dtype=int), False, 0, calls, 0, rounds, np.nan, np.nan)

    work = {int(c): [int(j) for j in t if j != c] for c in t}
    accepted: list[int] = []
    min_margin, max_residual, lp_calls = np.inf, 0.0, 0
    pending = sorted(work)
    unsettled: list[int] = []
    round_ = 0
    while round_ < max_rounds:
        round_ += 1
        hyper, owners = [], []
        for c in pending:
            a = unit[work[c]].T
            lam, rho = _nnls(a, unit[c])
            calls += 1
            size = float(np.linalg.norm(rho))
            if size <= res_tol:
                if noise_tol > 0 and noise_tol * float(lam @ (1.0 / norms[work[c]])) >= 1.0:
                    unsettled.append(c)  # in the cone only with a heavy weight: ask the LP
                    continue
                max_residual = max(max_residual, size)
                continue
            u = -rho / float(unit[c] @ rho)  # u . q_c = -1 (q_c . rho = |rho|^2 > 0)
            hyper.append(u)
            owners.append(c)
        if not owners:
            pending = []
            break
        margins = np.stack(hyper) @ unit.T  # (candidates, C): rows contiguous
        margins[np.arange(len(owners)), owners] = np.inf
        violated = (margins < -slack).any(axis=1)
        pending = []
        for row, c in enumerate(owners):
            m = margins[row]
            if not violated[row]:
                accepted.append(c)
                min_margin = min(min_margin, float(m.min()))
            else:
                bad = np.flatnonzero(m < -slack)
                worst = bad[np.argsort(m[bad])[: max(dim, 8)]]
                work[c].extend(int(j) for j in worst)
                pending.append(c)
        if not pending:
            break
    rounds += round_
    for c in pending + unsettled:  # did not settle: decide with the reference LP on all points
        lp_calls += 1
        if _lp_one(unit, c, LP_TOL, norms, noise_tol):
            accepted.append(c)
    return ConeDecision(
        np.array(sorted(accepted), dtype=int),
        True,
        len(t),
        calls,
        lp_calls,
        rounds,
        float(min_margin) if accepted else np.nan,
        float(max_residual),
    )
