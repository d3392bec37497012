"""The clients' learning rate per round (the server sends it in each round's config)."""

from __future__ import annotations

import math

__all__ = ["FLOOR", "LR_SCHEDULES", "lr_at_round"]

LR_SCHEDULES = ("constant", "cosine")
FLOOR = 0.1  # the cosine schedule's last learning rate, as a fraction of the first


def lr_at_round(lr: float, schedule: str, round_: int, rounds: int) -> float:
    """The learning rate of round `round_` (1-based) of `rounds`.

    "constant": `lr` every round. "cosine": from `lr` in round 1 down to `FLOOR * lr` in the
    last, `lr * (FLOOR + (1 - FLOOR) * (1 + cos(pi * (round_ - 1) / (rounds - 1))) / 2)`. The
    floor keeps the last rounds' updates well above float32 noise, so attacks still see them (a
    resumed run with a larger `fl.rounds` stretches the rest of the curve).
    """
    if schedule == "constant":
        return float(lr)
    if schedule == "cosine":
        t = min(max(round_ - 1, 0), rounds - 1) / max(rounds - 1, 1)
        return float(lr) * (FLOOR + (1 - FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
