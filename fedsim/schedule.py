"""The clients' learning rate per round (the server sends it in each round's config)."""

from __future__ import annotations

import math

__all__ = ["LR_SCHEDULES", "lr_at_round"]

LR_SCHEDULES = ("constant", "cosine")


def lr_at_round(lr: float, schedule: str, round_: int, rounds: int) -> float:
    """The learning rate of round `round_` (1-based) of `rounds`.

    "constant": `lr` every round. "cosine": `lr * (1 + cos(pi * (round_ - 1) / rounds)) / 2`,
    from `lr` in round 1 down towards 0 after the last round (a resumed run with a larger
    `fl.rounds` stretches the rest of the curve).
    """
    if schedule == "constant":
        return float(lr)
    if schedule == "cosine":
        t = min(max(round_ - 1, 0), rounds) / max(rounds, 1)
        return float(lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
