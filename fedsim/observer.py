"""The honest-but-curious server's eyes: turns each round's Flower train replies into
`ServerView`s, has the `fedcore.AttackRunner` attack them, and writes the rows.

This is the thin adapter between Flower and the Flower-free runner. For each reply it builds a
`ServerView` (what the server really has) and, from the audit record, a `Truth` that only the
scorer sees; the audit record is stripped from every reply, so the strategy never sees it either.
Replies with an error, a model that does not fit the global one (other tensor names or shapes)
or an unusable weight (`num-examples` missing, zero, negative or non-finite): an `error` row; a
non-finite update: a `non_finite` row; all are logged and kept out of aggregation; clients that did
not answer in time get a `timeout` row.

Under secure aggregation (`defense=secagg`, `fedsim.secure_aggregation`) the server has no reply
of its own to look at: `observe_aggregate` attacks the round's aggregate instead (one view per
round, `client = "aggregate"`), scored against the union of the clients' truths.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, Message

from fedcore import AttackRunner, ServerView, Truth, frozen_tensors
from fedsim.audit import decode_truth
from fedsim.errors import plain_error
from fedsim.logs import RoundLog

__all__ = ["Observer", "RoundStats", "update_problem"]

log = logging.getLogger("fedsim")

# How a client under secure aggregation reports a non-finite update (it drops out of the round).
NON_FINITE_MARK = "non-finite update"


@dataclass(frozen=True)
class RoundStats:
    """How the round's sampled clients fared: sent a usable update (ok), failed (an error reply),
    timed out (no reply), or sent a non-finite update."""

    clients: int = 0
    ok: int = 0
    failures: int = 0
    timeouts: int = 0
    non_finite: int = 0

    def as_row(self) -> dict[str, int]:
        return asdict(self)


def update_problem(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]
) -> str | None:
    """Why the reply's model `after` cannot be averaged into the global model `before` (other
    tensor names, other shapes), as one line starting with the exception type; None when it
    fits."""
    missing, extra = sorted(set(before) - set(after)), sorted(set(after) - set(before))
    if missing or extra:
        return (
            f"ValueError: the reply's model has other tensors than the global model (missing "
            f"{missing[:3]}, unexpected {extra[:3]}); not aggregated"
        )
    wrong = [k for k in before if tuple(after[k].shape) != tuple(before[k].shape)]
    if wrong:
        k = wrong[0]
        return (
            f"ValueError: wrong shapes in {len(wrong)} tensors (e.g. {k}: expected "
            f"{tuple(before[k].shape)}, got {tuple(after[k].shape)}); not aggregated"
        )
    return None


def _model_of(
    reply: Message, before: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The reply's model as tensors and why it cannot be aggregated (None: it can)."""
    if "arrays" not in reply.content:
        return {}, "ValueError: the reply carries no model (no 'arrays' record); not aggregated"
    try:
        after = reply.content["arrays"].to_torch_state_dict()
    except Exception as exc:  # a reply whose arrays cannot be read
        return {}, f"ValueError: the reply's model cannot be read ({type(exc).__name__}: {exc})"
    return after, update_problem(before, after)


def _metrics_of(reply: Message) -> dict[str, Any]:
    records = list(reply.content.metric_records.values())
    return dict(records[0]) if records else {}


def _weight_problem(metrics: Mapping[str, Any]) -> str | None:
    """Why the reply's "num-examples" (its weight in FedAvg's average) is unusable, or None: a
    missing, zero, negative or non-finite weight would break or poison the average."""
    weight = metrics.get("num-examples")
    if isinstance(weight, int | float) and math.isfinite(weight) and weight > 0:
        return None
    return (
        f"ValueError: num-examples (the update's weight in the average) must be a positive "
        f"count, got {weight!r}; not aggregated"
    )


class Observer:
    """Attacks every train reply of a round and writes the attack and client rows to `log`.

    Args:
        runner: the attacks, run in order on each view (`fedcore.AttackRunner`).
        log: the run's `RoundLog`.
    """

    def __init__(self, runner: AttackRunner, log: RoundLog) -> None:
        self.runner, self.log = runner, log
        self.stats: dict[int, RoundStats] = {}  # round -> how its clients fared

    def check(self, train_config: Mapping[str, Any]) -> dict[str, str]:
        """Which attacks cannot apply to this run, and why (warned once here, then a
        not_applicable row every round)."""
        reasons = self.runner.check(train_config)
        for name, reason in reasons.items():
            log.warning("attack %s does not apply to this run: %s", name, reason)
        self.log.declare_scores(self.runner.scores)
        return reasons

    def observe(
        self,
        round_: int,
        sent: Mapping[int, tuple[ArrayRecord, Mapping[str, Any]]],
        replies: Sequence[Message],
        partition_of: Mapping[int, int],
    ) -> list[Message]:
        """Attack every reply; return the replies that may be aggregated (audit removed).

        Args:
            round_: the run's round (resumed runs count on from the saved round).
            sent: node id -> (the global model sent, the train config sent), for every sampled
                node; nodes without a reply timed out.
            partition_of: node id -> partition id.
        """
        keep: list[Message] = []
        before_of: dict[int, dict[str, torch.Tensor]] = {}  # one conversion per record sent
        counts = {"ok": 0, "failures": 0, "non_finite": 0}
        answered = {r.metadata.src_node_id for r in replies}
        for reply in sorted(replies, key=lambda r: partition_of.get(r.metadata.src_node_id, -1)):
            node = reply.metadata.src_node_id
            client = partition_of.get(node, -1)
            if reply.has_error():
                counts["failures"] += 1
                self._error_row(round_, client, "error", reply.error.reason, "failed")
                continue
            truth = None
            if "audit" in reply.content:
                truth = decode_truth(reply.content["audit"]["truth"])
                del reply.content["audit"]
            arrays, config = sent[node]
            if id(arrays) not in before_of:
                before_of[id(arrays)] = arrays.to_torch_state_dict()
            before = before_of[id(arrays)]
            after, problem = _model_of(reply, before)
            metrics = _metrics_of(reply)
            problem = problem or _weight_problem(metrics)
            if problem:
                counts["failures"] += 1
                self._error_row(round_, client, "error", problem, "sent an unusable update")
                continue
            update = {k: after[k] - before[k] for k in before}
            bad = [k for k, v in update.items() if v.is_floating_point() and not v.isfinite().all()]
            if bad:
                counts["non_finite"] += 1
                message = f"non-finite update in {len(bad)} tensors (e.g. {bad[0]}); not aggregated"
                self._client_row(round_, client, "non_finite", message, metrics)
                log.warning("round %d: client %d sent a %s", round_, client, message)
                continue
            counts["ok"] += 1
            keep.append(reply)
            self._client_row(round_, client, "ok", "", metrics)
            view = ServerView(
                round=round_,
                client_id=client,
                global_model=frozen_tensors(before),
                update=frozen_tensors(update),
                train_config=dict(config),
                num_examples=int(metrics.get("num-examples", 0)),
                model=self.runner.spec,
            )
            self._attack(view, truth)
        late = sorted(partition_of.get(n, -1) for n in sent if n not in answered)
        for client in late:
            self._timeout_row(round_, client)
        self.stats[round_] = RoundStats(clients=len(sent), timeouts=len(late), **counts)
        return keep

    def observe_aggregate(
        self,
        round_: int,
        sampled: Sequence[int],
        replies: Mapping[int, Mapping[str, Any]],
        errors: Mapping[int, str],
        before: Mapping[str, torch.Tensor],
        after: Mapping[str, torch.Tensor] | None,
        train_config: Mapping[str, Any],
        truths: Sequence[Truth],
    ) -> None:
        """Secure aggregation: write the round's client rows, then attack its aggregate.

        Args:
            round_: the run's round.
            sampled: the partition ids sampled this round.
            replies: partition id -> metrics ("num-examples", train metrics) of every client
                whose masked vector entered the sum.
            errors: partition id -> why a sampled client has no update in the sum; sampled
                clients in neither mapping timed out.
            before, after: the global model before and after the round (`after` None: nothing
                was aggregated, nothing is attacked).
            train_config: the config sent to the clients.
            truths: the clients' truths (for scoring only; empty without audit).
        """
        counts = {"ok": 0, "failures": 0, "non_finite": 0}
        timeouts = 0
        for client in sorted(sampled):
            if client in replies:
                counts["ok"] += 1
                self._client_row(round_, client, "ok", "", replies[client])
            elif client in errors:
                reason = errors[client]
                status = "non_finite" if NON_FINITE_MARK in reason else "error"
                counts["non_finite" if status == "non_finite" else "failures"] += 1
                self._error_row(round_, client, status, reason, "has no update in the sum")
            else:
                timeouts += 1
                self._timeout_row(round_, client)
        self.stats[round_] = RoundStats(clients=len(sampled), timeouts=timeouts, **counts)
        if after is None or not replies:
            return
        view = ServerView.of_aggregate(
            round=round_,
            old_global=before,
            new_global=after,
            train_config=train_config,
            num_examples=sum(int(m.get("num-examples", 0)) for m in replies.values()),
            num_clients=len(replies),
            model=self.runner.spec,
        )
        truth = Truth.concatenate(truths) if truths and len(truths) == len(replies) else None
        self._attack(view, truth)

    def _attack(self, view: ServerView, truth: Truth | None) -> None:
        for row in self.runner.run(view, truth):
            self.log.add("attacks", **row)
        self.log.declare_scores(self.runner.scores)

    def _error_row(self, round_: int, client: int, status: str, reason: str, what: str) -> None:
        """A client's error row (plain text, exception first, kept to 4,000 characters from the
        start so the headline survives) and one warning line naming the exception."""
        text = plain_error(reason)
        self._client_row(round_, client, status, text[:4000])
        log.warning("round %d: client %d %s: %s", round_, client, what, text.split("\n")[0])

    def _timeout_row(self, round_: int, client: int) -> None:
        self._client_row(
            round_,
            client,
            "timeout",
            "no reply: the round's timeout passed, or the node was lost (a SuperNode that stopped)",
        )
        log.warning("round %d: client %d did not reply in time", round_, client)

    def _client_row(
        self, round_: int, client: int, status: str, message: str, metrics=None
    ) -> None:
        metrics = dict(metrics or {})
        self.log.add(
            "clients",
            round=round_,
            client=client,
            status=status,
            message=message,
            num_examples=int(metrics.pop("num-examples", 0)),
            **{k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        )
