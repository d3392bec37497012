"""GradDrop: zero the fraction `rate` of update entries with the smallest magnitude."""

from __future__ import annotations

import math

import torch
from torch import Tensor

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
        if scope not in ("tensor", "global"):
            raise ValueError(f"GradDrop scope must be 'tensor' or 'global', got {scope!r}")
        self.rate, self.scope = rate, scope

    def _mask(self, flat: Tensor) -> Tensor:
        drop = math.floor(self.rate * flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        if drop:
            keep[torch.argsort(flat.abs(), stable=True)[:drop]] = False
        return keep

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        if self.scope == "tensor":
            return {k: v * self._mask(v.flatten()).view_as(v) for k, v in update.items()}
        names = list(update)
        flat = torch.cat([update[k].flatten().to(torch.float64) for k in names])
        keep = self._mask(flat)
        out, pos = {}, 0
        for k in names:
            n = update[k].numel()
            out[k] = update[k] * keep[pos : pos + n].view_as(update[k])
            pos += n
        return out
