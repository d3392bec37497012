"""Label-recovery attack plugins for the observer: RLG ("rlg"), Yin et al. ("yin"), iDLG ("idlg").

Each reads the last linear layer's update `w, b = view.last_layer_update()` (after - before,
shapes (C, d) and (C,)). The baselines need the summed gradient `-w / lr` (their rules depend on
its sign); RLG works on the update directly (any sign or scale). No exception is caught here: the
observer isolates failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attacks.baselines import idlg_label, yin_labels
from attacks.rlg import add_known_labels, reveal_labels
from fedcore import Finding, not_applicable, single_sample_reason

if TYPE_CHECKING:
    from fedcore import ModelSpec, ServerView

__all__ = ["IDLGAttack", "RLGAttack", "YinAttack"]


class RLGAttack:
    """RLG (Dang et al. 2021): the label set from the row space of the last layer's update.

    Args:
        known_count: False (default) estimates S, the number of label occurrences, from the
            spectrum (no oracle); True passes the server's S = batch_size * local_steps.
        use_bias: pass the bias update (when the layer has one) to estimate label counts.
        protocol_labels: add the labels the task's protocol puts in every sample
            (`ModelSpec.protocol_labels`: eos for speech; none for images), which a trained
            model can hide from the cone test (`attacks.rlg.add_known_labels`).
        options: further keyword options of `attacks.rlg.reveal_labels`. Unless `max_labels`
            is given, S is bounded by N * K * `ModelSpec.max_labels_per_sample` when the spec
            has one (speech: the longest target), and by d / 2 (d: the layer's input size): a
            larger estimate (Sign-SGD, or a trained model's spectrum without a gap, where the
            rank rule lands near d) is reported as not applicable at once instead of after a
            cone test in ~d dimensions that takes minutes.
    """

    name = "rlg"

    def __init__(
        self,
        known_count: bool = False,
        use_bias: bool = True,
        protocol_labels: bool = True,
        **options: Any,
    ) -> None:
        self.known_count, self.use_bias, self.options = bool(known_count), bool(use_bias), options
        self.protocol_labels = bool(protocol_labels)

    def check(self, model: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        if model.last_weight is None:
            return "RLG needs a last linear layer (ModelSpec.last_weight is None)"
        if self.known_count and model.task == "asr":
            return (
                "known_count=true uses S = batch_size * local_steps, but for speech S is the "
                "number of target tokens, unknown to the server: use known_count=false"
            )
        return None

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        w, b = view.last_layer_update()
        num = view.total_samples if self.known_count else None
        bias = b if self.use_bias else None
        options = dict(self.options)
        per_sample = view.model.max_labels_per_sample
        if per_sample and "max_labels" not in options:
            options["max_labels"] = min(view.total_samples * int(per_sample), w.shape[1] // 2)
        found = reveal_labels(w, num_labels=num, bias_update=bias, **options)
        if self.protocol_labels:
            found = add_known_labels(found, view.model.protocol_labels)
        return found


class YinAttack:
    """Yin et al. (2021) Eq. (5) on the summed gradient `-w / lr` of the last layer.

    Args:
        known_count: False (default) uses the threshold rule (class present iff its gradient row
            has a negative entry), as the RLG paper compared it; True keeps the
            `batch_size * local_steps` classes with the most negative row minima.
    """

    name = "yin"

    def __init__(self, known_count: bool = False) -> None:
        self.known_count = bool(known_count)

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        w, _ = view.last_layer_update()
        num = view.total_samples if self.known_count else None
        num = None if num is None else min(num, w.shape[0])
        return yin_labels(-w / view.lr, num_labels=num)


class IDLGAttack:
    """iDLG (Zhao et al. 2020): the label of a single sample (batch_size * local_steps == 1).

    Uses the bias gradient when the layer has a bias (exact for any activation), otherwise the
    sign of the weight-gradient row sums (exact for non-negative features).
    """

    name = "idlg"

    def check(self, model: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        return single_sample_reason("iDLG", train_config)

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        reason = self.check(view.model, view.train_config)
        if reason:
            return not_applicable(reason)
        w, b = view.last_layer_update()
        return idlg_label(-w / view.lr, None if b is None else -b / view.lr)
