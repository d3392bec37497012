"""The honest-but-curious server: runs the attacks on every client reply before aggregation.

For each train reply the observer builds a `ServerView` (what the server really has) and, from the
audit record, a `Truth` that only the scorer sees. Attacks run in their configured order, each
isolated: an exception or a time-out becomes an `error` row, never a crashed run. Replies whose
update is not finite are flagged and removed from aggregation. The audit record is stripped from
every reply, so the strategy never sees it either.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from fedcore import ERROR, NOT_APPLICABLE, Finding, ModelSpec, ServerView, Truth, frozen_tensors
from fedsim.audit import decode_truth
from fedsim.logs import RoundLog

__all__ = ["AttackTimeout", "Observer", "run_with_timeout"]

log = logging.getLogger(__name__)


class AttackTimeout(TimeoutError):
    pass


def run_with_timeout(fn: Callable[[], Any], timeout: float | None) -> Any:
    """Run `fn()` in a daemon thread; raise `AttackTimeout` after `timeout` seconds.

    Python cannot stop a thread: a timed-out attack keeps running in the background until it
    returns, but its result is discarded and the run goes on.
    """
    if not timeout:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="fedsim-attack")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AttackTimeout(f"timed out after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _to_tensors(record) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


class Observer:
    """Runs `attacks` on each round's train replies and writes the rows to `log`.

    Args:
        attacks: plugins in the order to run (see `attacks.base.Attack`).
        spec: the architecture the server distributes.
        log: the run's `RoundLog` (attack and client rows).
        timeout: seconds allowed per attack call (None: no limit).
        seed: seeds torch/numpy before each attack call (reproducible attacks).
    """

    def __init__(
        self,
        attacks: Sequence[Any],
        spec: ModelSpec,
        log: RoundLog,
        timeout: float | None = 120.0,
        seed: int = 0,
    ) -> None:
        self.attacks, self.spec, self.log = list(attacks), spec, log
        self.timeout, self.seed = timeout, seed
        self.reasons: dict[str, str] = {}
        self.round_stats: dict[str, int] = {}

    def check(self, train_config: Mapping[str, Any]) -> dict[str, str]:
        """Ask each attack whether it applies to this run; returns {name: reason} for those that
        do not (they are logged as not_applicable every round without being called)."""
        for attack in self.attacks:
            check = getattr(attack, "check", None)
            reason = check(self.spec, dict(train_config)) if check else None
            if reason:
                self.reasons[attack.name] = reason
                log.warning("attack %s does not apply to this run: %s", attack.name, reason)
        return dict(self.reasons)

    def observe(
        self,
        round_: int,
        sent: Mapping[int, tuple[Any, Mapping[str, Any]]],
        replies: Sequence[Message],
        partition_of: Mapping[int, int],
    ) -> list[Message]:
        """Attack every reply; return the replies that may be aggregated (audit removed).

        Args:
            sent: node id -> (ArrayRecord of the global model sent, the train config sent).
            partition_of: node id -> partition id.
        """
        keep: list[Message] = []
        sent_tensors: dict[int, dict[str, torch.Tensor]] = {}  # one conversion per record sent
        stats = {"clients": len(sent), "ok": 0, "failures": 0, "non_finite": 0}
        for reply in sorted(replies, key=lambda r: partition_of.get(r.metadata.src_node_id, -1)):
            node = reply.metadata.src_node_id
            client = partition_of.get(node, -1)
            if reply.has_error():
                stats["failures"] += 1
                self._client_row(round_, client, "error", reply.error.reason.strip()[-2000:])
                log.warning("round %d: client %d failed: %s", round_, client, reply.error.reason)
                continue
            truth = None
            if "audit" in reply.content:
                truth = decode_truth(reply.content["audit"]["truth"])
                del reply.content["audit"]
            arrays, config = sent[node]
            if id(arrays) not in sent_tensors:
                sent_tensors[id(arrays)] = _to_tensors(arrays)
            before = sent_tensors[id(arrays)]
            after = _to_tensors(reply.content["arrays"])
            update = {k: after[k] - before[k] for k in before}
            metrics = dict(next(iter(reply.content.metric_records.values())))
            bad = [
                k
                for k, v in update.items()
                if v.is_floating_point() and not torch.isfinite(v).all()
            ]
            if bad:
                stats["non_finite"] += 1
                message = f"non-finite update in {len(bad)} tensors (e.g. {bad[0]}); not aggregated"
                self._client_row(round_, client, "non_finite", message, metrics)
                log.warning("round %d: client %d sent a %s", round_, client, message)
                continue
            stats["ok"] += 1
            keep.append(reply)
            self._client_row(round_, client, "ok", "", metrics)
            view = ServerView(
                round=round_,
                client_id=client,
                global_model=frozen_tensors(before),
                update=frozen_tensors(update),
                train_config=dict(config),
                num_examples=int(metrics.get("num-examples", 0)),
                model=self.spec,
            )
            self._attack(view, truth)
        # Replies not in `keep` (errors, non-finite) never reach the strategy.
        self.round_stats = stats
        return keep

    def _attack(self, view: ServerView, truth: Truth | None) -> None:
        findings: dict[str, Finding] = {}
        for index, attack in enumerate(self.attacks):
            row: dict[str, Any] = {"round": view.round, "client": view.client_id}
            row["attack"] = attack.name
            if attack.name in self.reasons:
                self.log.add(
                    "attacks",
                    **row,
                    status=NOT_APPLICABLE,
                    message=self.reasons[attack.name],
                    seconds=0.0,
                )
                continue
            torch.manual_seed(hash((self.seed, view.round, view.client_id, index)) % 2**31)
            start = time.perf_counter()
            try:
                finding = run_with_timeout(lambda a=attack: a(view, findings), self.timeout)
                if not isinstance(finding, Finding):
                    raise TypeError(f"returned {type(finding).__name__}, expected a Finding")
            except Exception as exc:
                seconds = time.perf_counter() - start
                message = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, AttackTimeout):
                    log.debug("attack %s failed:\n%s", attack.name, traceback.format_exc())
                log.warning(
                    "round %d client %d: attack %s failed: %s",
                    view.round,
                    view.client_id,
                    attack.name,
                    message,
                )
                self.log.add("attacks", **row, status=ERROR, message=message, seconds=seconds)
                continue
            seconds = time.perf_counter() - start
            findings[attack.name] = finding
            scores: dict[str, float] = {}
            status, message = finding.status, finding.message
            if truth is not None and finding.ok:
                try:
                    scores = {k: float(v) for k, v in finding.score(truth).items()}
                except Exception as exc:
                    status, message = ERROR, f"scoring failed: {type(exc).__name__}: {exc}"
            diagnostics = (
                json.dumps(dict(finding.diagnostics), default=str) if finding.diagnostics else ""
            )
            self.log.add(
                "attacks",
                **row,
                status=status,
                message=message,
                seconds=seconds,
                **scores,
                diagnostics=diagnostics,
            )

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
