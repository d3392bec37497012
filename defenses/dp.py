"""Local differential privacy on the update: clip to norm C, add Gaussian noise sigma * C."""

from __future__ import annotations

import torch
from torch import Tensor

from defenses.privacy_budget import gaussian_epsilon

__all__ = ["GaussianDP", "clip_update"]


def clip_update(update: dict[str, Tensor], clip: float) -> tuple[dict[str, Tensor], float]:
    """Scale the whole update (all tensors as one vector) to L2 norm <= `clip`.

    Returns the clipped update and the norm before clipping.
    """
    norm = (
        float(
            torch.linalg.vector_norm(
                torch.stack(
                    [torch.linalg.vector_norm(v.to(torch.float64)) for v in update.values()]
                )
            )
        )
        if update
        else 0.0
    )
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in update.items()}, norm


class GaussianDP:
    """Clip the update (after − before, all tensors as one vector) to L2 norm `clip`, then add
    N(0, (noise * clip)^2) to every entry: a Gaussian mechanism on the client's whole
    contribution (client-level local DP, sensitivity `clip` for adding or removing the client).

    Args:
        clip: C, the L2 norm bound of the sent update before noise (in weight units).
        noise: sigma, the noise multiplier (std = sigma * C per entry); 0 clips only.
        delta: the delta at which epsilon is reported.
    Each call counts one release in `state["dp_releases"]`; `metrics(state)` reports the
    client's budget so far (`dp_epsilon`, RDP accountant, no sampling amplification), the
    update's norm before clipping (`dp_norm`) and whether it was clipped (`dp_clipped`); they
    become columns of `clients.parquet`.
    """

    name = "dp"

    def __init__(self, clip: float = 1.0, noise: float = 1.0, delta: float = 1e-5) -> None:
        if not clip > 0:
            raise ValueError(f"DP clip (the norm bound C) must be > 0, got {clip}")
        if not noise >= 0:
            raise ValueError(f"DP noise (the multiplier sigma) must be >= 0, got {noise}")
        if not 0 < delta < 1:
            raise ValueError(f"DP delta must be in (0, 1), got {delta}")
        self.clip, self.noise, self.delta = float(clip), float(noise), float(delta)

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        clipped, norm = clip_update(update, self.clip)
        std = self.noise * self.clip
        state["dp_releases"] = int(state.get("dp_releases", 0)) + 1
        state["dp_norm"], state["dp_clipped"] = norm, float(norm > self.clip)
        return {k: v + std * torch.randn_like(v) for k, v in clipped.items()}

    def metrics(self, state: dict) -> dict[str, float]:
        """The privacy spent by this client so far and this round's clipping."""
        releases = int(state.get("dp_releases", 0))
        return {
            "dp_epsilon": gaussian_epsilon(self.noise, releases, self.delta),
            "dp_releases": float(releases),
            "dp_norm": float(state.get("dp_norm", 0.0)),
            "dp_clipped": float(state.get("dp_clipped", 0.0)),
        }
