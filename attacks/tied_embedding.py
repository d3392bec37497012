"""The tokens a decoder READ, from the update of its tied input/output embedding (pure numpy).

A decoder whose output projection is its input token embedding `E` (V, d) (Whisper, GPT-2) gets,
from one SGD step with teacher forcing, the update `dE = -lr * (G_out + G_in)`:

- `G_out[v] = sum_t (p_tv - [y_t = v]) h_t / T` for EVERY row v: a combination of the T final
  states h_t, so all these parts lie in `S_out = span{h_t}` (dimension <= T);
- `G_in[v] = sum_(t: x_t = v) dL/de_t` only for the rows of the tokens the decoder read (the
  prompt and, teacher-forced, every transcript token but the last target, eot): the gradient at
  the input, which has no reason to lie in `S_out`.

So a row is a read token iff it has a component outside `S_out`, and (for T + U < d, U the
distinct read tokens) the other rows span `S_out` exactly. `read_tokens` estimates `S_out` from
the rows it does not flag, flags the rows with the largest residual outside it, and repeats; the
subspace's rank r and the number k of flagged rows are the pair with the widest gap between the
k-th and (k+1)-th largest residual (every other row's residual is rounding noise). No softmax,
no cone test, no model: one Gram eigendecomposition (d x d) per round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["ReadTokens", "read_tokens"]


@dataclass(frozen=True)
class ReadTokens:
    """Rows of the embedding update with a component outside the output-gradient span.

    Attributes:
        tokens: the flagged row ids (sorted).
        rank: r, the dimension used for `S_out` (about the number of scored positions T).
        gap: residual of the k-th flagged row / residual of the largest unflagged row (the
            margin of the decision; rounding noise makes it 1e2-1e5 on clean updates).
        residuals: each flagged row's norm outside `S_out`, relative to its row norm.
    """

    tokens: tuple[int, ...]
    rank: int
    gap: float
    residuals: tuple[float, ...]


def _scan(
    rows: np.ndarray, basis: np.ndarray, min_k: int, dim: int, min_gap: float
) -> tuple[int, int, float]:
    """(r, k, gap) of the split between read rows and the rest, over ranks r (leading `basis`
    columns) and counts k >= min_k with r + k < dim, gap = k-th largest residual / (k+1)-th.

    Read rows' residuals span orders of magnitude (a sentence the model predicts confidently
    gives its tokens small input gradients), so the LAST gap of at least `min_gap` (above
    `min_gap` times the median candidate's residual, which is noise) is the split; of all ranks,
    the one with the largest such k (a rank near d absorbs read rows: a smaller k). When no rank
    has such a gap (a rough first estimate of `S_out`), the widest gap per rank; of the ranks
    whose widest gap reaches the square root of the widest of all, the largest k."""
    proj = rows @ basis  # (K, d)
    total = np.einsum("ij,ij->i", rows, rows)
    left = np.maximum(total[:, None] - np.cumsum(proj**2, axis=1), 0.0)  # residual^2 after r
    last, widest = [], []
    for r in range(1, dim - min_k - 1):
        res = np.sort(np.sqrt(left[:, r - 1]))[::-1]
        floor = min_gap * np.median(res)
        res = res[: dim - r]
        with np.errstate(divide="ignore", invalid="ignore"):
            gaps = res[:-1] / np.maximum(res[1:], np.finfo(float).tiny)
        gaps[: max(min_k - 1, 0)] = 0.0
        if not gaps.size:
            continue
        k = int(np.argmax(gaps)) + 1
        widest.append((r, k, float(gaps[k - 1])))
        hits = np.flatnonzero((gaps >= min_gap) & (res[:-1] > floor))
        if hits.size:
            k = int(hits[-1]) + 1
            last.append((r, k, float(gaps[k - 1])))
    if last:
        return max(last, key=lambda s: (s[1], s[2]))
    if not widest:
        return 0, 0, 0.0
    clean = np.sqrt(max(g for _, _, g in widest))
    return max((s for s in widest if s[2] >= clean), key=lambda s: (s[1], s[2]))


def read_tokens(
    update: np.ndarray,
    *,
    known: tuple[int, ...] = (),
    unread: tuple[int, ...] = (),
    candidates: int = 4096,
    rounds: int = 3,
    min_gap: float = 10.0,
    min_relative: float = 1e-3,
) -> ReadTokens:
    """The rows of the tied embedding's update `update` (V, d) (any sign or scale: update or
    gradient) that received an input gradient: the tokens the decoder read (module docstring).

    Args:
        known: rows known to be read (the prompt: Whisper's sot, notimestamps); they seed the
            first round's exclusion and must be flagged (k >= len(known)).
        candidates: only the rows with the largest norms can be flagged (a read row is large:
            it carries a whole input gradient); the rest still defines `S_out` through them.
        unread: rows known to carry no input gradient (a protocol's end token, read only as
            padding): always used for `S_out`, never flagged. Whisper's eot row is the one row
            that carries the last position's state when the model predicts "." there with
            near certainty; without it the "." row looks read.
        rounds: estimate/flag rounds (the first excludes the top d/2 rows by norm).
        min_gap: the residual gap that counts as a split between read rows and noise.
        min_relative: a flagged row whose residual is below this share of its norm is dropped:
            a large row (a token the model predicts with high probability where the target is
            another: "locked" for "logged", "," or "!" where the transcript has none) whose
            direction the estimate of `S_out` misses by a hair. A heuristic cut: on Whisper
            tiny.en updates such rows were seen from 1.5e-5 to 1.8e-3, read rows from 1e-4 up
            (rows of a sentence the model predicts confidently are the small ones).
    """
    w = np.asarray(update)
    if w.ndim != 2 or w.shape[0] <= w.shape[1]:
        raise ValueError(f"update must be (V, d) with V > d (an embedding), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("update contains NaN or Inf")
    with threadpool_limits(limits=1, user_api="blas"):  # more threads thrash a loaded CPU
        return _read(w, known, unread, candidates, rounds, min_gap, min_relative)


def _read(
    w: np.ndarray,
    known: tuple[int, ...],
    unread: tuple[int, ...],
    candidates: int,
    rounds: int,
    min_gap: float,
    min_relative: float,
) -> ReadTokens:
    dim = w.shape[1]
    norms = np.sqrt(np.einsum("ij,ij->i", w, w, dtype=np.float64))
    top = np.argsort(-norms)[: min(candidates, w.shape[0])]
    top = top[~np.isin(top, np.asarray(unread, dtype=np.int64))]
    rows = w[top].astype(np.float64)
    always = w[np.asarray(unread, dtype=np.int64)].astype(np.float64).reshape(-1, w.shape[1])
    position = {int(v): i for i, v in enumerate(top)}
    flagged = np.zeros(len(top), dtype=bool)
    flagged[: dim // 2] = True
    flagged[[position[v] for v in known if v in position]] = True
    r, k, gap = 0, 0, 0.0
    for _ in range(max(1, rounds)):
        kept = np.concatenate([rows[~flagged], always])
        _, vecs = np.linalg.eigh(kept.T @ kept)
        basis = vecs[:, ::-1]
        r, k, gap = _scan(rows, basis, len(known), dim, min_gap)
        res = np.linalg.norm(rows - (rows @ basis[:, :r]) @ basis[:, :r].T, axis=1)
        order = np.argsort(-res)
        new = np.zeros_like(flagged)
        new[order[:k]] = True
        if np.array_equal(new, flagged):
            break
        flagged = new
    chosen = order[:k]
    rel = res[chosen] / np.maximum(norms[top[chosen]], np.finfo(float).tiny)
    keep = (rel >= min_relative) | np.isin(top[chosen], np.asarray(known, dtype=np.int64))
    chosen, rel = chosen[keep], rel[keep]
    idx = np.argsort(top[chosen])
    return ReadTokens(
        tokens=tuple(int(top[chosen][i]) for i in idx),
        rank=r,
        gap=gap,
        residuals=tuple(float(rel[i]) for i in idx),
    )
