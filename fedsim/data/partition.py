"""Federated partitions of a labelled data set: IID and Dirichlet(alpha) label skew (seeded)."""

from __future__ import annotations

import numpy as np

__all__ = ["partition_indices"]


def partition_indices(
    labels: np.ndarray, num_partitions: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0
) -> list[np.ndarray]:
    """Split sample indices into `num_partitions` disjoint, non-empty parts.

    Args:
        labels: `(n,)` integer class labels.
        scheme: "iid" (shuffled equal split) or "dirichlet" (per class, proportions drawn from
            Dirichlet(alpha); smaller alpha means more skew).
        alpha: Dirichlet concentration (> 0), used by "dirichlet" only.
        seed: seeds the split; the same arguments always give the same partitions.
    Returns:
        One sorted int64 index array per partition.
    """
    n = len(labels)
    if num_partitions < 1 or num_partitions > n:
        raise ValueError(f"num_partitions must be in [1, {n}], got {num_partitions}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_partitions)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
        parts = _dirichlet(np.asarray(labels), num_partitions, alpha, rng)
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}; use 'iid' or 'dirichlet'")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list:
    parts: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(k, alpha))) * len(idx)).astype(int)[:-1]
        for p, chunk in enumerate(np.split(idx, cuts)):
            parts[p].extend(chunk.tolist())
    # No partition may be empty: move one sample from the largest part to each empty one.
    for p in range(k):
        if not parts[p]:
            donor = max(range(k), key=lambda q: len(parts[q]))
            parts[p].append(parts[donor].pop())
    return [np.asarray(p) for p in parts]
