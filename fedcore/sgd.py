"""The one plain SGD step every client (and every offline view builder) takes."""

from __future__ import annotations

import torch

__all__ = ["sgd_step"]


def sgd_step(model: torch.nn.Module, loss: torch.Tensor, lr: float) -> None:
    """One plain SGD step in place: `p <- p - lr * grad` (no momentum, no weight decay)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.sub_(lr * g)
