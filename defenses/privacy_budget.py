"""The (epsilon, delta) budget of repeated Gaussian releases, from Google's dp-accounting (RDP)."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["gaussian_epsilon"]


@lru_cache(maxsize=4096)
def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon at `delta` after `releases` Gaussian mechanisms of std `noise_multiplier` times
    the L2 sensitivity, composed (Renyi-DP accountant, converted to (epsilon, delta)-DP).

    No amplification by sampling is claimed: a client knows when it was picked. `inf` when the
    noise multiplier is 0; 0 when nothing was released.
    """
    if releases <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    from dp_accounting import GaussianDpEvent, SelfComposedDpEvent
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(SelfComposedDpEvent(GaussianDpEvent(noise_multiplier), releases))
    return float(accountant.get_epsilon(delta))
