"""Plugin `soft_label`: soft-label and last-layer-input inversion of a single-sample update.

The server turns the last layer's update (`after - before`) into a gradient with `-update / lr`
(one local SGD step of batch size 1) and inverts it with `recover_soft_label`, using the global
model's last weight and bias. The bias update gives the closed form; without a bias (or with
`use_bias_grad=False`) the 1-D root search runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from attacks.soft_label import recover_soft_label
from fedcore import Finding, not_applicable, single_sample_reason

if TYPE_CHECKING:
    from fedcore import ModelSpec, ServerView

__all__ = ["SoftLabelAttack", "update_noise"]


def update_noise(weight: torch.Tensor, weight_update: torch.Tensor) -> float:
    """Relative rounding noise of an update differenced in the weight's dtype.

    `after = fl(before - lr g)` is rounded to half an ulp of the weight, so the update carries
    an absolute error of about `eps/2 |W|` per entry: returns `eps/2 |W|_F / |update|_F`.
    """
    eps = torch.finfo(weight.dtype).eps if weight.dtype.is_floating_point else 0.0
    num = 0.5 * eps * float(weight.double().norm())
    den = float(weight_update.double().norm())
    return num / den if den > 0 else float("inf")


class SoftLabelAttack:
    """Recover the soft label (smoothing / mixup / hard) and the last layer's input.

    Args:
        kind: "auto", "hard", "smoothing" or "mixup" (see `recover_soft_label`).
        use_bias_grad: use the bias update for the closed form when the layer has a bias.
        rank_tol: sigma_2/sigma_1 above which the update is not a single sample's; it is
            raised automatically to 30x the update's rounding noise.
        tol: structural residual (relative to |g|) of a valid root; raised to 100x the noise.
    """

    name = "soft_label"

    def __init__(
        self,
        kind: str = "auto",
        use_bias_grad: bool = True,
        rank_tol: float = 1e-3,
        tol: float = 1e-3,
    ) -> None:
        if kind not in ("auto", "hard", "smoothing", "mixup"):
            raise ValueError(f"kind must be auto, hard, smoothing or mixup, got {kind!r}")
        self.kind = kind
        self.use_bias_grad = use_bias_grad
        self.rank_tol = rank_tol
        self.tol = tol

    def check(self, model_spec: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        """A reason the attack cannot apply to this run, or None."""
        reason = single_sample_reason("soft-label inversion", train_config)
        if reason:
            return reason
        if float(train_config.get("lr", 0.0)) <= 0:
            return "soft-label inversion needs the learning rate (lr > 0) to undo the SGD step"
        return None

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        reason = self.check(view.model, view.train_config)
        if reason:
            return not_applicable(reason)
        d_w, d_b = view.last_layer_update()
        spec = view.model
        weight = view.global_model[spec.last_weight]
        bias = view.global_model[spec.last_bias] if spec.last_bias else None
        grad_w = -d_w.double() / view.lr
        grad_b = -d_b.double() / view.lr if (d_b is not None and self.use_bias_grad) else None
        noise = update_noise(weight, d_w)
        finding = recover_soft_label(
            grad_w,
            weight,
            bias=bias,
            bias_grad=grad_b,
            kind=self.kind,
            rank_tol=max(self.rank_tol, 30 * noise),
            tol=max(self.tol, 100 * noise),
            noise=max(1e-6, noise),
        )
        return replace(finding, diagnostics={**finding.diagnostics, "update_noise": noise})
