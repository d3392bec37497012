"""Top-k sparsification: send only the k largest-magnitude entries of the update."""

from __future__ import annotations

import math

from torch import Tensor

from defenses.sparsify import check_scope, keep_largest

__all__ = ["TopK"]


class TopK:
    """Keep the `k` largest-|x| entries of the update (after − before), zero the rest.

    Args:
        k: a fraction in (0, 1) of entries to keep (0.01: the top 1 %, at least one entry per
            ranked group), or an integer count >= 1 (per tensor or in all, capped at the size).
        scope: "tensor" keeps the top k of each parameter tensor; "global" the top k of all
            entries of all tensors together.
    Unlike GradDrop (named by what it drops), top-k is named by what it keeps; with a fraction
    both send the same entries.
    """

    name = "topk"

    def __init__(self, k: float = 0.1, scope: str = "global") -> None:
        if isinstance(k, bool) or not (0 < k < 1 or (k >= 1 and float(k).is_integer())):
            raise ValueError(
                f"top-k k must be a fraction in (0, 1) or a whole count >= 1, got {k!r}"
            )
        check_scope(scope, "top-k")
        self.k, self.scope = k, scope

    def _count(self, n: int) -> int:
        if self.k < 1:
            return max(1, math.ceil(self.k * n))
        return min(n, int(self.k))

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        return keep_largest(update, self._count, self.scope)
