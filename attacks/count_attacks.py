"""Label-count plugins: RLG's counts ("rlg_counts") and the baselines LLG ("llg"), iLRG ("ilrg")
and LLBG ("llbg").

Each returns a `LabelSet` with `counts` (class -> count, summing to `total_samples = N * K`, the
server's number from the train config, never estimated), so `count_l1` and `exact` are scored.
They read the last layer's update `w, b = view.last_layer_update()` (after - before) as the
pseudo-gradient `-update / lr`; over K local steps that is the sum of the steps' gradients, read
as N * K samples at the global model (the model's change between steps is ignored), and a
secure aggregate of M clients as N * K * M samples whose gradients are divided by N * M. None
applies to speech (the number of target tokens is unknown) or mixup (two labels per sample).
The math is in `attacks.rlg_counts`, `attacks.llg`, `attacks.ilrg` and `attacks.llbg`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attacks.ilrg import ilrg_counts
from attacks.label_counts import DummyStats, config_float, dummy_statistics, last_layer_module
from attacks.labelset import LabelSet
from attacks.llbg import llbg_counts
from attacks.llg import llg_counts
from attacks.rlg_counts import softmax_counts
from fedcore import Finding, not_applicable

if TYPE_CHECKING:
    from fedcore import ModelSpec, ServerView

__all__ = ["ILRGAttack", "LLBGAttack", "LLGAttack", "RLGCountsAttack", "count_reason"]

LLG_VARIANTS = ("llg", "llg_star", "llg_plus")
LLBG_PRIORS = ("uniform", "dummy")


def count_reason(
    what: str,
    model: ModelSpec,
    train_config: Mapping[str, Any],
    *,
    needs_bias: bool = False,
    needs_input: bool = False,
) -> str | None:
    """Why a label-count baseline cannot apply to this run, or None."""
    if model.task == "asr":
        return f"{what} needs the number of labels N * K; speech targets have unknown lengths"
    if model.last_weight is None:
        return f"{what} needs a last linear layer (ModelSpec.last_weight is None)"
    if needs_bias and model.last_bias is None:
        return f"{what} needs a bias in the last layer (ModelSpec.last_bias is None)"
    if needs_input and model.input_shape is None:
        return f"{what} runs the model on dummy inputs and needs ModelSpec.input_shape"
    if config_float(train_config, "mixup_alpha") > 0:
        return f"{what} assumes one label per sample; mixup mixes two"
    for key in ("lr", "batch_size", "local_steps"):
        if train_config.get(key) is None or float(train_config[key]) <= 0:
            return f"{what} needs a positive {key} in the train config, got {train_config.get(key)}"
    return None


_CACHE: OrderedDict[tuple, DummyStats] = OrderedDict()
_CACHE_SIZE = 8


def _dummy_stats(view: ServerView, samples: int, seed: int) -> DummyStats:
    """The global model's statistics on dummy inputs, computed once per global model (the
    clients of a round share it; the key fingerprints the last layer's weights)."""
    spec = view.model
    weight = view.global_model[spec.last_weight].detach().cpu().contiguous()
    fingerprint = hashlib.sha1(weight.numpy().tobytes()).hexdigest()
    key = (spec.name, view.round, view.batch_size, samples, seed, fingerprint)
    if key not in _CACHE:
        _CACHE[key] = dummy_statistics(
            view.global_module(),
            last_layer_module(spec.last_weight),
            tuple(spec.input_shape),
            samples=samples,
            batch_size=view.batch_size,
            seed=seed,
        )
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return _CACHE[key]


def _divisor(view: ServerView) -> int:
    """The batch size each step's mean gradient divides by (N, or N * M for an aggregate)."""
    return view.batch_size * view.num_clients


class LLGAttack:
    """LLG (Wainakh et al. 2022): counts from the weight gradient's row sums (`attacks.llg`).

    Args:
        variant: "llg" (impact from the gradient alone; needs no lr), "llg_star" (impact from
            the global model on dummy inputs) or "llg_plus" (impact and per-class offsets from
            the global model on dummy inputs).
        dummy_samples: standard-normal dummy inputs for llg_star / llg_plus.
        seed: seed of the dummy inputs.
    """

    name = "llg"

    def __init__(self, variant: str = "llg", dummy_samples: int = 256, seed: int = 0) -> None:
        if variant not in LLG_VARIANTS:
            raise ValueError(f"unknown LLG variant {variant!r}; choose one of {LLG_VARIANTS}")
        self.variant, self.dummy_samples, self.seed = variant, int(dummy_samples), int(seed)

    def check(self, model: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        return count_reason("LLG", model, train_config, needs_input=self.variant != "llg")

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        reason = self.check(view.model, view.train_config)
        if reason:
            return not_applicable(reason)
        w, _ = view.last_layer_update()
        impact = offset = None
        if self.variant != "llg":
            stats = _dummy_stats(view, self.dummy_samples, self.seed)
            if self.variant == "llg_plus":
                impact = -stats.feature_sum / _divisor(view)
                offset = view.local_steps * stats.offset
            else:  # a sample's net effect on its own label's row: s * (p_y - 1) / N
                impact = -(stats.feature_sum - float(stats.offset.mean())) / _divisor(view)
        return llg_counts(
            -w / view.lr, view.total_samples, impact=impact, offset=offset, variant=self.variant
        )


class ILRGAttack:
    """iLRG (Ma et al. 2023), core: class-wise embeddings and probabilities, then a least-squares
    solve for the counts (`attacks.ilrg`). Needs a bias in the last layer.

    Args:
        bias_floor: relative bias-gradient size below which a class's embedding is not trusted.
    """

    name = "ilrg"

    def __init__(self, bias_floor: float = 0.05) -> None:
        self.bias_floor = float(bias_floor)

    def check(self, model: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        return count_reason("iLRG", model, train_config, needs_bias=True)

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        reason = self.check(view.model, view.train_config)
        if reason:
            return not_applicable(reason)
        w, b = view.last_layer_update()
        spec = view.model
        return ilrg_counts(
            -w / view.lr,
            -b / view.lr,
            view.global_model[spec.last_weight],
            view.global_model[spec.last_bias],
            view.total_samples,
            _divisor(view),
            smoothing=config_float(view.train_config, "label_smoothing"),
            bias_floor=self.bias_floor,
        )


class LLBGAttack:
    """LLBG: counts from the bias gradient alone, `n = N * (pbar - gb)` (`attacks.llbg`).

    Args:
        prior: the estimate of the batch's mean softmax `pbar`: "uniform" (1/C) or "dummy" (the
            global model's mean softmax on standard-normal dummy inputs).
        dummy_samples, seed: the dummy inputs of `prior="dummy"`.
    """

    name = "llbg"

    def __init__(self, prior: str = "uniform", dummy_samples: int = 256, seed: int = 0) -> None:
        if prior not in LLBG_PRIORS:
            raise ValueError(f"unknown LLBG prior {prior!r}; choose one of {LLBG_PRIORS}")
        self.prior, self.dummy_samples, self.seed = prior, int(dummy_samples), int(seed)

    def check(self, model: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        return count_reason(
            "LLBG", model, train_config, needs_bias=True, needs_input=self.prior == "dummy"
        )

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        reason = self.check(view.model, view.train_config)
        if reason:
            return not_applicable(reason)
        _, b = view.last_layer_update()
        pbar = None
        if self.prior == "dummy":
            pbar = _dummy_stats(view, self.dummy_samples, self.seed).mean_prob
        return llbg_counts(
            -b / view.lr,
            view.total_samples,
            _divisor(view),
            pbar,
            smoothing=config_float(view.train_config, "label_smoothing"),
            prior=self.prior,
        )


class RLGCountsAttack:
    """RLG's label counts for any batch: RLG's label set (the finding of "rlg"), then the counts
    that explain the bias update under the global model's softmax on the class means estimated
    from the weight update (`attacks.rlg_counts.softmax_counts`). A count that the update does
    not pin down is not guessed: the finding then has `counts=None` and names the reason, with
    the pinned counts and each count's margin in its diagnostics.

    Args:
        margin: how many times worse the bias must fit when a count moves by one for the count
            to be given.
        use_labels: restrict the counts to RLG's label set when RLG found one (else, and when
            RLG did not apply, every class is searched with counts >= 0).
        max_seconds: time for the search; a search cut short gives no counts.
    """

    name = "rlg_counts"
    requires = ("rlg",)

    def __init__(
        self, margin: float = 4.0, use_labels: bool = True, max_seconds: float = 20.0
    ) -> None:
        self.margin, self.use_labels = float(margin), bool(use_labels)
        self.max_seconds = float(max_seconds)

    def check(self, model: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        if config_float(train_config, "label_smoothing") > 0:
            return "RLG counts model one-hot targets; label smoothing is on"
        return count_reason("RLG counts", model, train_config, needs_bias=True)

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        reason = self.check(view.model, view.train_config)
        if reason:
            return not_applicable(reason)
        w, b = view.last_layer_update()
        spec, scale = view.model, -_divisor(view) / view.lr
        rlg = findings.get("rlg")
        labels = None
        usable = isinstance(rlg, LabelSet) and rlg.ok and rlg.labels
        if self.use_labels and usable and len(rlg.labels) <= view.total_samples:
            labels = list(rlg.labels)
        est = softmax_counts(
            scale * w,
            scale * b,
            view.global_model[spec.last_weight],
            view.global_model[spec.last_bias],
            view.total_samples,
            labels,
            margin=self.margin,
            max_seconds=self.max_seconds,
        )
        found = sorted(est.estimate) if labels is None else labels
        return LabelSet(
            labels=tuple(int(c) for c in found),
            num_labels=view.total_samples,
            counts=est.counts,
            diagnostics={"label_source": "rlg" if labels else "all classes", **est.diagnostics()},
        )
