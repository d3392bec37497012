"""Sign-SGD: send `lr * sign(update)` instead of the update."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SignSGD"]


class SignSGD:
    """Replace every entry of the update (after − before) by `scale * sign(entry)`.

    Args:
        scale: step size of the signed update; None (default) uses the round's learning rate
            (`state["lr"]`), so one signed step moves each weight by lr.
    """

    name = "signsgd"

    def __init__(self, scale: float | None = None) -> None:
        if scale is not None and not scale > 0:
            raise ValueError(
                f"Sign-SGD scale must be > 0 (or null for the learning rate), got {scale}"
            )
        self.scale = scale

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        scale = self.scale if self.scale is not None else float(state["lr"])
        return {k: scale * torch.sign(v) for k, v in update.items()}
