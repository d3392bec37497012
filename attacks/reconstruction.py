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
    "MODULE_ACTIVATIONS",
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
# module type -> its name in ACTIVATION_SLOPES
MODULE_ACTIVATIONS = {
    nn.ReLU: "relu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Identity: "identity",
}


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
        elif type(sub) in MODULE_ACTIVATIONS:
            acts.add(MODULE_ACTIVATIONS[type(sub)])
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
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError("optimizer must be 'adam' or 'lbfgs'")
    gen = torch.Generator().manual_seed(seed)
    model = model.train(train_mode)
    params, targets = _matched_parameters(model, target_grads)
    lo, hi = bounds if bounds is not None else (0.0, 1.0)
    x = (lo + (hi - lo) * torch.rand((1, *input_shape), generator=gen)).requires_grad_(True)
    logits = torch.zeros(targets[-1].shape[0]).normal_(generator=gen).requires_grad_(label is None)
    objective = _Objective(model, params, targets, x, label, logits, distance=distance, tv=tv)
    hook = None
    if features is not None and feature_layer is not None:
        hook = objective.match_features(feature_layer, features, feature_weight)
    try:
        _minimise(objective, optimizer, iterations, lr, bounds)
    finally:
        if hook is not None:
            hook.remove()
        model.zero_grad(set_to_none=True)
    if bounds is not None:
        with torch.no_grad():
            x.clamp_(lo, hi)
    used = label if label is not None else logits.detach().softmax(0)
    g_loss, f_loss = objective.grad_loss.detach(), objective.feature_loss.detach()
    return MatchResult(x.detach()[0], float(g_loss), float(f_loss), used.detach(), iterations)


def _matched_parameters(
    model: nn.Module, target_grads: Mapping[str, torch.Tensor]
) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
    """The model's parameters named in `target_grads` (model order) and their target gradients."""
    named = dict(model.named_parameters())
    names = [n for n in named if n in target_grads]
    if not names:
        raise ValueError("target_grads names no parameter of the model")
    params = [named[n] for n in names]
    return params, [target_grads[n].detach().to(params[0].dtype) for n in names]


class _Objective:
    """What gradient matching minimises: the distance of the input's loss gradient to the
    targets, total variation, and optionally a feature term; keeps the last of each term."""

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        targets: list[torch.Tensor],
        x: torch.Tensor,
        label: torch.Tensor | None,
        label_logits: torch.Tensor,
        *,
        distance: str,
        tv: float,
    ) -> None:
        self.model, self.params, self.targets, self.x = model, params, targets, x
        self.label, self.label_logits, self.distance, self.tv = label, label_logits, distance, tv
        self.free = [x] + ([label_logits] if label is None else [])  # what the optimiser moves
        self.grad_loss, self.feature_loss = torch.tensor(0.0), torch.tensor(0.0)
        self.features: tuple[torch.Tensor, float] | None = None
        self.seen: torch.Tensor | None = None  # the feature layer's last input

    def match_features(
        self, layer: nn.Module, features: torch.Tensor, weight: float
    ) -> torch.utils.hooks.RemovableHandle:
        """Add `weight * |h(x) - features|^2 / |features|^2`, h the input of `layer`; returns the
        forward hook to remove."""
        self.features = (features.detach().to(self.x.dtype).reshape(1, -1), weight)
        return layer.register_forward_hook(lambda m, i, o: setattr(self, "seen", i[0]))

    def __call__(self) -> torch.Tensor:
        for t in self.free:
            t.grad = None
        logits = self.model(self.x)
        if self.label is not None:
            y = self.label.to(logits.dtype)[None]
        else:
            y = self.label_logits.softmax(0)[None]
        grads = torch.autograd.grad(F.cross_entropy(logits, y), self.params, create_graph=True)
        self.grad_loss = _gradient_distance(grads, self.targets, self.distance)
        total = self.grad_loss + self.tv * _total_variation(self.x)
        if self.features is not None:
            feats, weight = self.features
            self.feature_loss = ((self.seen - feats) ** 2).sum() / (feats**2).sum()
            total = total + weight * self.feature_loss
        total.backward()
        return total


def _gradient_distance(
    grads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], distance: str
) -> torch.Tensor:
    """1 - cosine over all gradients together ("cosine"), or the squared distance ("l2")."""
    if distance == "cosine":
        dot = sum((g * t).sum() for g, t in zip(grads, targets, strict=True))
        gn = torch.sqrt(sum((g * g).sum() for g in grads))
        tn = torch.sqrt(sum((t * t).sum() for t in targets))
        return 1 - dot / (gn * tn + 1e-30)
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, targets, strict=True))


def _minimise(
    objective: _Objective,
    optimizer: str,
    iterations: int,
    lr: float,
    bounds: tuple[float, float] | None,
) -> None:
    """Adam with the step size cut tenfold at 3/8, 5/8 and 7/8 of the run, `x` clamped to
    `bounds` after each step; or one L-BFGS call of `iterations` evaluations."""
    if optimizer == "lbfgs":
        lbfgs = torch.optim.LBFGS(
            objective.free,
            lr=lr,
            max_iter=iterations,
            history_size=50,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            line_search_fn="strong_wolfe",
        )
        lbfgs.step(objective)
        return
    adam = torch.optim.Adam(objective.free, lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        adam, milestones=[int(iterations * f) for f in (0.375, 0.625, 0.875)], gamma=0.1
    )
    for _ in range(iterations):
        adam.step(objective)
        sched.step()
        if bounds is not None:
            with torch.no_grad():
                objective.x.clamp_(*bounds)


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
