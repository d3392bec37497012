"""Local training primitives shared by tasks: soft targets (smoothing, mixup) and SGD steps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["capture_last_layer_input", "soft_cross_entropy", "soft_targets"]


def soft_targets(
    labels: torch.Tensor,
    num_classes: int,
    smoothing: float = 0.0,
    partner_labels: torch.Tensor | None = None,
    mix_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Training targets `(N, C)` that sum to one per row.

    Mixup (when `partner_labels` and `mix_weight` (N,) are given): `w * onehot(labels) +
    (1 - w) * onehot(partner)`. Label smoothing with epsilon: `(1 - eps) * target + eps / C`.
    """
    target = F.one_hot(labels, num_classes).to(torch.float32)
    if partner_labels is not None and mix_weight is not None:
        w = mix_weight.to(torch.float32)[:, None]
        target = w * target + (1 - w) * F.one_hot(partner_labels, num_classes).to(torch.float32)
    if smoothing:
        target = (1 - smoothing) * target + smoothing / num_classes
    return target


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of `-sum_c target_c log softmax(logits)_c`; logits and target (N, C)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


class capture_last_layer_input:
    """Context manager recording the input `(N, d)` of `layer` on every forward call."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer, self.inputs = layer, []

    def __enter__(self) -> capture_last_layer_input:
        self._handle = self.layer.register_forward_hook(
            lambda _m, args, _out: self.inputs.append(args[0].detach().cpu().numpy())
        )
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def stacked(self) -> np.ndarray:
        return np.stack(self.inputs)
