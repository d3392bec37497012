"""Plugin `reconstruct`: rebuild the client's input from a single-sample update, using the
`soft_label` finding (recovered soft label and last-layer input).

- A plain fully connected model: analytic inversion layer by layer (`invert_fcn`).
- Otherwise: gradient matching with the recovered label fixed; the trailing fully connected
  head (e.g. LeNet's fc1-fc2-fc3) is inverted analytically and the input of its first layer
  becomes a feature-matching term.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from attacks.image_metrics import psnr, ssim
from attacks.reconstruction import (
    MODULE_ACTIVATIONS,
    fcn_layers,
    gradient_matching,
    invert_fcn,
)
from fedcore import Finding, Score, not_applicable, single_sample_reason

if TYPE_CHECKING:
    from fedcore import ModelSpec, ServerView, Truth

__all__ = ["ReconstructAttack", "Reconstruction", "linear_head"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Reconstruction(Finding):
    """A reconstructed input `x` shaped like one sample (e.g. `(1, 28, 28)`), and the method
    ("analytic" or "gradient_matching")."""

    SCORES = (Score("psnr", headline=True), Score("ssim"))

    x: np.ndarray | None = None
    method: str = ""

    def score(self, truth: Truth) -> dict[str, float]:
        """psnr (dB) and ssim against `truth.inputs[0, 0]`, data range = its max - min."""
        if not self.ok or self.x is None or truth.inputs is None:
            return {}
        ref = np.asarray(truth.inputs, dtype=np.float64)[0, 0]
        x = np.asarray(self.x, dtype=np.float64).reshape(ref.shape)
        return {"psnr": psnr(x, ref), "ssim": ssim(x, ref)}


def linear_head(module: nn.Module) -> tuple[list[str], str] | None:
    """Weight names of the trailing run of `nn.Linear` layers (registration order, assumed to be
    forward order, with one element-wise activation type between them) and that activation."""
    leaves = [(n, m) for n, m in module.named_modules() if not list(m.children())]
    names: list[str] = []
    for name, sub in reversed(leaves):
        if isinstance(sub, nn.Linear):
            names.insert(0, f"{name}.weight")
        elif type(sub) in MODULE_ACTIVATIONS or isinstance(sub, nn.Flatten | nn.Dropout):
            continue
        elif any(True for _ in sub.parameters()) or names:
            break
    acts = {MODULE_ACTIVATIONS.get(type(m)) for _, m in leaves} - {None, "identity"}
    if not names or (len(names) > 1 and len(acts) != 1):
        return None
    return names, (acts.pop() if acts else "identity")


class ReconstructAttack:
    """Input reconstruction from a batch-1, one-step update (needs `soft_label` before it).

    Args:
        iterations: Adam steps of gradient matching (CNNs only).
        lr: Adam step size.
        tv: total-variation weight.
        feature_weight: weight of the feature-matching term.
        bounds: input box `[lo, hi]` (None: unbounded).
    """

    name = "reconstruct"
    requires = ("soft_label",)

    def __init__(
        self,
        iterations: int = 200,
        lr: float = 0.1,
        tv: float = 1e-3,
        feature_weight: float = 1.0,
        bounds: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        self.iterations, self.lr, self.tv = int(iterations), float(lr), float(tv)
        self.feature_weight = float(feature_weight)
        self.bounds = tuple(bounds) if bounds is not None else None

    def check(self, model_spec: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        reason = single_sample_reason("reconstruction", train_config)
        if reason:
            return reason
        if model_spec.input_shape is None:
            return "reconstruction needs a fixed input shape"
        return None

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        reason = self.check(view.model, view.train_config)
        if reason:
            return not_applicable(reason)
        soft = findings.get("soft_label")
        if soft is None or not soft.ok or getattr(soft, "label", None) is None:
            return not_applicable("needs a successful `soft_label` finding (run it first)")
        model = view.global_module()
        params = dict(model.named_parameters())
        grads = {n: view.pseudo_gradient(n).to(p.dtype) for n, p in params.items()}
        spec = view.model
        w = params[spec.last_weight].detach().double()
        b = params[spec.last_bias].detach().double() if spec.last_bias else 0.0
        h = torch.as_tensor(soft.features, dtype=torch.float64)
        delta = (w @ h + b).softmax(0) - torch.as_tensor(soft.label, dtype=torch.float64)
        shape = tuple(spec.input_shape)
        fcn = fcn_layers(model)
        if fcn is not None:
            names, act = fcn
            try:
                ins = invert_fcn([params[n] for n in names], [grads[n] for n in names], delta, act)
            except ValueError as err:
                return not_applicable(f"analytic inversion failed: {err}")
            x = ins[0]
            return Reconstruction(x=x.reshape(shape).numpy(), method="analytic")
        head = linear_head(model)
        features, layer = h, model.get_submodule(spec.last_weight.rsplit(".", 1)[0])
        diag: dict[str, Any] = {"head_layers": 1}
        if head is not None and len(head[0]) > 1:
            names, act = head
            try:
                ins = invert_fcn([params[n] for n in names], [grads[n] for n in names], delta, act)
                features, layer = ins[0], model.get_submodule(names[0].rsplit(".", 1)[0])
                diag["head_layers"] = len(names)
            except ValueError as err:
                diag["head_error"] = str(err)
        result = gradient_matching(
            model,
            grads,
            shape,
            torch.as_tensor(soft.label, dtype=torch.float32),
            features=features.float(),
            feature_layer=layer,
            iterations=self.iterations,
            lr=self.lr,
            tv=self.tv,
            feature_weight=self.feature_weight,
            bounds=self.bounds,
        )
        diag.update(grad_loss=result.grad_loss, feature_loss=result.feature_loss)
        return Reconstruction(x=result.x.numpy(), method="gradient_matching", diagnostics=diag)
