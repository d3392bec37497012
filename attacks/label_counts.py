"""Shared pieces of the label-count baselines LLG, iLRG and LLBG (`attacks.llg`, `attacks.ilrg`,
`attacks.llbg`): rounding a real-valued estimate to a histogram, the finding they return, and the
global model's statistics on dummy inputs (LLG*, LLG+ and LLBG's `prior="dummy"`).

Notation shared by the three modules, for softmax cross-entropy averaged over a batch of N:
the last layer's gradient is `gW = (1/N) sum_i (p_i - y_i) h_i^T` (C, d) and `gb = (1/N) sum_i
(p_i - y_i)` (C,), with `p_i` the softmax output, `y_i` the (one-hot) target and `h_i` the layer
input of sample i. The server reads them as the pseudo-gradient `-update / lr`; over K local steps
that is the sum of the K steps' mean gradients, which the baselines read as one batch of
`total = N * K` samples at the global model (`divisor = N`: each sample is divided by its own
step's N). For a secure aggregate of M clients `divisor = N * M` and `total = N * K * M`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attacks.labelset import LabelSet
from fedcore.tensors import to_numpy

__all__ = [
    "DummyStats",
    "count_finding",
    "counts_from_target_mass",
    "dummy_statistics",
    "round_counts",
]


def round_counts(raw: Any, total: int) -> np.ndarray:
    """Non-negative integers summing to `total`, closest to `raw` (C,) in L1.

    Negative entries are clipped to 0 and the rest rounded; then, while the sum is off, one count
    is added where `raw - counts` is largest (or removed where `counts - raw` is largest among
    positive counts). Ties go to the smaller class id.
    """
    x = np.clip(np.asarray(raw, dtype=np.float64).ravel(), 0.0, None)
    if int(total) < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if not np.all(np.isfinite(x)):
        raise ValueError("raw counts contain NaN or Inf")
    counts = np.rint(x).astype(np.int64)
    diff = int(total) - int(counts.sum())
    while diff > 0:
        c = int(np.argmax(x - counts))
        counts[c] += 1
        diff -= 1
    while diff < 0:
        excess = np.where(counts > 0, counts - x, -np.inf)
        c = int(np.argmax(excess))
        counts[c] -= 1
        diff += 1
    return counts


def counts_from_target_mass(
    mass: np.ndarray, total: int, num_classes: int, smoothing: float = 0.0
) -> np.ndarray:
    """Raw counts from the summed targets `t_c = sum_i y_ic`: with label smoothing eps the target
    is `(1 - eps) onehot + eps / C`, so `n_c = (t_c - eps * total / C) / (1 - eps)`."""
    eps = float(smoothing)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return (np.asarray(mass, np.float64) - eps * total / num_classes) / (1.0 - eps)


def count_finding(raw: np.ndarray, total: int, **diagnostics: Any) -> LabelSet:
    """The `LabelSet` of a count estimate: `raw` rounded by `round_counts`, labels = the classes
    with a positive count, `num_labels = total`; diagnostics get the raw estimate's largest
    distance to the returned integers (`rounding_gap`)."""
    counts = round_counts(raw, total)
    raw = np.asarray(raw, np.float64)
    labels = tuple(int(c) for c in np.flatnonzero(counts))
    diagnostics["rounding_gap"] = float(np.max(np.abs(raw - counts))) if raw.size else 0.0
    return LabelSet(
        labels=labels,
        num_labels=int(total),
        counts={c: int(counts[c]) for c in labels},
        diagnostics=diagnostics,
    )


@dataclass(frozen=True)
class DummyStats:
    """The global model's last-layer statistics on dummy inputs (per sample, averaged).

    Attributes:
        feature_sum: `E[sum_j h_j]`, the mean sum of a sample's layer input.
        offset: `E[p_c * sum_j h_j]` (C,), a sample's mean positive contribution to the row sum
            of class c in `sum_i (p_i - y_i) h_i^T`.
        mean_prob: `E[p]` (C,), the mean softmax output.
        samples: how many dummy inputs were drawn.
    """

    feature_sum: float
    offset: np.ndarray
    mean_prob: np.ndarray
    samples: int


def dummy_statistics(
    module: torch.nn.Module,
    layer: str,
    input_shape: tuple[int, ...],
    samples: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    train_mode: bool = True,
) -> DummyStats:
    """Run `module` on standard-normal dummy inputs of `input_shape` and average the last
    layer's statistics (`DummyStats`). `layer` is the module name of the last `nn.Linear`
    (e.g. "fc"); its input is captured with a forward hook.

    `train_mode` (default) runs the module as the client trained it (BatchNorm on batch
    statistics, dropout on), in batches of `batch_size` (at least 2, for BatchNorm); the module is
    changed (running statistics), so pass a copy. No gradient is computed.
    """
    gen = torch.Generator().manual_seed(int(seed))
    linear = module.get_submodule(layer)
    captured: list[torch.Tensor] = []
    hook = linear.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    feats, probs = [], []
    module.train(train_mode)
    param = next(module.parameters())
    try:
        with torch.no_grad():
            done, step = 0, max(2, int(batch_size))
            while done < samples:
                n = min(step, samples - done) if samples - done >= 2 else 2
                x = torch.randn((n, *input_shape), generator=gen).to(param.device, param.dtype)
                captured.clear()
                logits = module(x)
                feats.append(captured[-1].reshape(n, -1).double().cpu())
                probs.append(torch.softmax(logits.double(), dim=1).cpu())
                done += n
    finally:
        hook.remove()
    h, p = torch.cat(feats), torch.cat(probs)
    s = h.sum(dim=1)
    return DummyStats(
        feature_sum=float(s.mean()),
        offset=(p * s[:, None]).mean(dim=0).numpy(),
        mean_prob=p.mean(dim=0).numpy(),
        samples=int(h.shape[0]),
    )


def last_layer_module(weight_name: str) -> str:
    """The module name of a parameter name ("fc3.weight" -> "fc3")."""
    return weight_name.rsplit(".", 1)[0] if "." in weight_name else ""


def as_vector(x: Any, size: int, name: str) -> np.ndarray:
    """A float64 (size,) vector; ValueError on a wrong size or a non-finite entry."""
    v = to_numpy(x, np.float64, finite=True, name=name).ravel()
    if v.shape[0] != size:
        raise ValueError(f"{name} has {v.shape[0]} entries, expected {size}")
    return v


def config_float(config: Mapping[str, Any], key: str) -> float:
    """A float train-config entry, 0 when absent or None."""
    return float(config.get(key) or 0.0)
