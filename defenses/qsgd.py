"""QSGD: unbiased stochastic quantisation of the update to `levels` magnitude levels per tensor."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["QSGD", "quantise"]


def quantise(v: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """QSGD of one tensor (Alistarh et al., 2017): `||v||_2 * sign(v_i) * xi_i / levels`.

    With `r = |v_i| / ||v|| * levels` and `l = floor(r)`, `xi_i = l + 1` with probability `r - l`
    and `l` otherwise, so `E[Q(v)] = v` (unbiased). Every output entry is `±||v|| * j / levels`
    for an integer `0 <= j <= levels`: a sign, a level index and one float per tensor to send.
    A zero tensor stays zero. Computed in float64, returned in `v`'s dtype.
    """
    x = v.detach().to(torch.float64)
    norm = torch.linalg.vector_norm(x)
    if norm == 0:
        return torch.zeros_like(v)
    r = x.abs() / norm * levels
    low = torch.floor(r)
    u = torch.rand(r.shape, generator=generator, dtype=torch.float64, device=r.device)
    xi = low + (u < r - low).to(torch.float64)
    return (norm * torch.sign(x) * xi / levels).to(v.dtype)


class QSGD:
    """Send each tensor of the update (after − before) stochastically quantised (see `quantise`).

    Args:
        levels: s >= 1 magnitude levels per sign (s = 1 sends sign and norm only; larger s is
            finer: the variance bound is min(n / s^2, sqrt(n) / s) * ||v||^2 for n entries).
    Randomness comes from torch's global generator, which the client seeds per (seed, round,
    client), so runs reproduce.
    """

    name = "qsgd"

    def __init__(self, levels: int = 4) -> None:
        if isinstance(levels, bool) or int(levels) != levels or levels < 1:
            raise ValueError(f"QSGD levels must be a whole number >= 1, got {levels!r}")
        self.levels = int(levels)

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        return {k: quantise(v, self.levels) for k, v in update.items()}
