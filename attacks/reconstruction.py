"""Input reconstruction from one sample's gradients, helped by the recovered soft label.

- `invert_fcn`: analytic, layer by layer, for a fully connected network
  `x = a_0 -> z_l = W_l a_{l-1} + b_l -> a_l = act(z_l) -> ... -> z_L`. The weight gradient of
  layer l is `delta_l a_{l-1}^T`, so `a_{l-1} = dW_l^T delta_l / |delta_l|^2`, and
  `delta_{l-1} = (W_l^T delta_l) * act'(z_{l-1})` where `act'` is read off the recovered
  `a_{l-1}` (ReLU: `a > 0`; sigmoid: `a (1 - a)`; tanh: `1 - a^2`). It starts from the last
  layer's `delta_L = softmax(z_L) - y`, which soft-label inversion gives without any bias
  gradient; biases, when present, are not needed.
- `gradient_matching`: optimisation for any network (CNNs): find `x` whose gradient matches
  the observed one (cosine distance, as in Geiping et al.'s inverting gradients, or L2 as in
  DLG), with total variation, the recovered soft label fixed, and optionally the recovered
  last-layer input as an extra feature-matching term. `dlg` optimises the label jointly.

Gradients are gradients of the loss (for one SGD step: `-(after - before) / lr`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATION_SLOPES",
    "MatchResult",
    "dlg",
    "fcn_layers",
    "gradient_matching",
    "invert_fcn",
    "sample_gradients",
]

ACTIVATION_SLOPES = {
    "relu": lambda a: (a > 0).to(a.dtype),
    "sigmoid": lambda a: a * (1 - a),
    "tanh": lambda a: 1 - a * a,
    "identity": torch.ones_like,
}
_MODULE_ACTS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "identity"}


def sample_gradients(
    module: nn.Module, x: torch.Tensor, target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Gradients of one sample's soft-target cross entropy, by parameter name.

    `x` is one input without the batch dimension, `target` a (C,) probability vector.
    """
    params = dict(module.named_parameters())
    loss = F.cross_entropy(module(x[None]), target[None])
    grads = torch.autograd.grad(loss, list(params.values()))
    return {name: g.detach() for name, g in zip(params, grads, strict=True)}


def fcn_layers(module: nn.Module) -> tuple[list[str], str] | None:
    """Parameter names of the weights of a plain fully connected network, input first, and its
    activation; None when `module` is anything else (convolutions, norms, mixed activations)."""
    linears, acts = [], set()
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            linears.append(f"{name}.weight")
        elif type(sub) in _MODULE_ACTS:
            acts.add(_MODULE_ACTS[type(sub)])
        elif len(list(sub.children())) == 0 and not isinstance(sub, nn.Flatten | nn.Dropout):
            return None
    acts.discard("identity")
    if not linears or len(acts) > 1:
        return None
    return linears, (acts.pop() if acts else "identity")


def invert_fcn(
    weights: Sequence[torch.Tensor],
    weight_grads: Sequence[torch.Tensor],
    last_delta: torch.Tensor,
    activation: str = "relu",
) -> list[torch.Tensor]:
    """Every layer's input of one sample, from its weight gradients.

    Args:
        weights: `W_l` `(d_l, d_{l-1})`, input layer first.
        weight_grads: the loss gradients `dW_l` of the same shapes.
        last_delta: `(C,)` `dL/dz_L = softmax(z_L) - y` of the output layer (from
            `recover_soft_label`: `softmax(W h + b) - label`).
        activation: the hidden layers' activation ("relu", "sigmoid", "tanh", "identity").

    Returns:
        `[a_0, a_1, ..., a_{L-1}]` float64: `a_0` is the flattened input `(d_0,)`.
    """
    if len(weights) != len(weight_grads) or not weights:
        raise ValueError("pass one weight gradient per weight (input layer first)")
    if activation not in ACTIVATION_SLOPES:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_SLOPES)}")
    slope = ACTIVATION_SLOPES[activation]
    delta = torch.as_tensor(last_delta).detach().to(torch.float64).reshape(-1)
    inputs: list[torch.Tensor] = []
    for w, gw in zip(reversed(weights), reversed(weight_grads), strict=True):
        w, gw = w.detach().double(), gw.detach().double()
        if gw.shape != w.shape or w.shape[0] != delta.numel():
            raise ValueError(
                f"layer shapes do not chain: W {tuple(w.shape)}, delta {delta.numel()}"
            )
        dd = float(delta @ delta)
        if dd == 0.0:
            raise ValueError("a layer's delta vanished (all units inactive): cannot invert further")
        a = gw.T @ delta / dd
        inputs.append(a)
        delta = (w.T @ delta) * slope(a)
    return inputs[::-1]


@dataclass(frozen=True)
class MatchResult:
    """A gradient-matching reconstruction: `x` shaped like one input, the final loss terms,
    the label used (fixed or optimised) `(C,)`, and iterations run."""

    x: torch.Tensor
    grad_loss: float
    feature_loss: float
    label: torch.Tensor
    iterations: int


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def gradient_matching(
    model: nn.Module,
    target_grads: Mapping[str, torch.Tensor],
    input_shape: Sequence[int],
    label: torch.Tensor | None = None,
    *,
    features: torch.Tensor | None = None,
    feature_layer: nn.Module | None = None,
    iterations: int = 300,
    lr: float = 0.1,
    tv: float = 1e-2,
    feature_weight: float = 1.0,
    distance: str = "cosine",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    seed: int = 0,
    train_mode: bool = True,
    optimizer: str = "adam",
) -> MatchResult:
    """Reconstruct one input whose loss gradient matches `target_grads`.

    Args:
        model: the global model (its parameters are not changed).
        target_grads: parameter name -> observed loss gradient (e.g. `-update / lr`).
        input_shape: shape of one input, e.g. `(1, 28, 28)`.
        label: `(C,)` soft label to use (fixed); None -> optimise it jointly (DLG).
        features: `(d,)` recovered input of `feature_layer` (the last linear layer); adds
            `feature_weight * |h(x) - features|^2 / |features|^2` to the loss.
        distance: "cosine" (1 - cosine over all gradients) or "l2" (squared distance, DLG).
        bounds: clamp `x` to this box after every step (None: no clamp).
        optimizer: "adam" (step-decayed, `x` clamped to `bounds` each step) or "lbfgs"
            (strong Wolfe line search, `iterations` evaluations, clamped at the end only).
        train_mode: run the model in train mode (as the client trained: batch-norm statistics
            of the one sample).
    """
    if distance not in ("cosine", "l2"):
        raise ValueError("distance must be 'cosine' or 'l2'")
    gen = torch.Generator().manual_seed(seed)
    model = model.train(train_mode)
    names = [n for n, p in model.named_parameters() if n in target_grads]
    params = [dict(model.named_parameters())[n] for n in names]
    if not names:
        raise ValueError("target_grads names no parameter of the model")
    targets = [target_grads[n].detach().to(params[0].dtype) for n in names]
    lo, hi = bounds if bounds is not None else (0.0, 1.0)
    x = (lo + (hi - lo) * torch.rand((1, *input_shape), generator=gen)).requires_grad_(True)
    num_classes = targets[-1].shape[0]
    label_logits = torch.zeros(num_classes).normal_(generator=gen).requires_grad_(label is None)
    opt_params = [x] + ([label_logits] if label is None else [])
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError("optimizer must be 'adam' or 'lbfgs'")
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            opt_params,
            lr=lr,
            max_iter=iterations,
            history_size=50,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            line_search_fn="strong_wolfe",
        )
    else:
        opt = torch.optim.Adam(opt_params, lr=lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(iterations * f) for f in (0.375, 0.625, 0.875)], gamma=0.1
        )
    box: dict[str, torch.Tensor] = {}
    hook = None
    if features is not None and feature_layer is not None:
        hook = feature_layer.register_forward_hook(lambda m, i, o: box.__setitem__("h", i[0]))
        feats = features.detach().to(x.dtype).reshape(1, -1)
    state = {"g": torch.tensor(0.0), "f": torch.tensor(0.0)}

    def objective() -> torch.Tensor:
        opt.zero_grad()
        logits = model(x)
        y = label.to(logits.dtype)[None] if label is not None else label_logits.softmax(0)[None]
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params, create_graph=True)
        if distance == "cosine":
            dot = sum((g * t).sum() for g, t in zip(grads, targets, strict=True))
            gn = torch.sqrt(sum((g * g).sum() for g in grads))
            tn = torch.sqrt(sum((t * t).sum() for t in targets))
            g_loss = 1 - dot / (gn * tn + 1e-30)
        else:
            g_loss = sum(((g - t) ** 2).sum() for g, t in zip(grads, targets, strict=True))
        total = g_loss + tv * _total_variation(x)
        if hook is not None:
            state["f"] = ((box["h"] - feats) ** 2).sum() / (feats**2).sum()
            total = total + feature_weight * state["f"]
        state["g"] = g_loss
        total.backward()
        return total

    try:
        if optimizer == "lbfgs":
            opt.step(objective)
        else:
            for _ in range(iterations):
                opt.step(objective)
                sched.step()
                if bounds is not None:
                    with torch.no_grad():
                        x.clamp_(lo, hi)
    finally:
        if hook is not None:
            hook.remove()
        model.zero_grad(set_to_none=True)
    if bounds is not None:
        with torch.no_grad():
            x.clamp_(lo, hi)
    g_loss, f_loss = state["g"].detach(), state["f"].detach()
    used = label if label is not None else label_logits.detach().softmax(0)
    return MatchResult(x.detach()[0], float(g_loss), float(f_loss), used.detach(), iterations)


def dlg(
    model: nn.Module,
    target_grads: Mapping[str, torch.Tensor],
    input_shape: Sequence[int],
    **options,
) -> MatchResult:
    """Deep Leakage from Gradients (Zhu et al. 2019): L2 gradient matching with the label
    optimised jointly (no soft-label recovery, no feature term)."""
    options.setdefault("distance", "l2")
    options.setdefault("tv", 0.0)
    return gradient_matching(model, target_grads, input_shape, None, **options)
