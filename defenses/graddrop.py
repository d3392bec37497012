"""GradDrop: zero the fraction `rate` of update entries with the smallest magnitude."""

from __future__ import annotations

import math

from torch import Tensor

from defenses.sparsify import check_scope, keep_largest

__all__ = ["GradDrop"]


class GradDrop:
    """Keep only the largest-|x| entries of the update (after − before), zero the rest.

    Args:
        rate: fraction in [0, 1) of entries to zero (0.9 keeps the top 10 %).
        scope: "tensor" ranks the entries of each parameter tensor separately (every layer keeps
            the same fraction, the last layer included); "global" ranks all entries of all tensors
            together (layers with small updates may be dropped entirely).
    Ties at the threshold are broken by position, so exactly `floor(rate * n)` entries are zeroed.
    """

    name = "graddrop"

    def __init__(self, rate: float = 0.9, scope: str = "tensor") -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"GradDrop rate must be in [0, 1), got {rate}")
        check_scope(scope, "GradDrop")
        self.rate, self.scope = rate, scope

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        return keep_largest(update, lambda n: n - math.floor(self.rate * n), self.scope)
