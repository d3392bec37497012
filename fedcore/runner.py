"""Runs a list of attacks on one `ServerView`: in order, each isolated and timed, then scored.

Flower-free: the simulation's observer turns Flower replies into views and writes the rows this
returns; notebooks and other frameworks can call it directly. An attack that raises or times out
becomes an `error` row, never a crashed run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fedcore.findings import ERROR, NOT_APPLICABLE, Finding, Score
from fedcore.spec import ModelSpec
from fedcore.views import ServerView, Truth

__all__ = ["AttackRunner", "AttackTimeout", "check_dependencies", "run_with_timeout"]

log = logging.getLogger("fedsim")


class AttackTimeout(TimeoutError):
    """An attack call ran past its time limit."""


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


def check_dependencies(attacks: Sequence[Any]) -> None:
    """Raise `ValueError` when an attack's `requires` names an attack that is not listed before
    it, or when two attacks share a name."""
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    for index, attack in enumerate(attacks):
        for needed in getattr(attack, "requires", ()):
            if needed not in names:
                raise ValueError(
                    f"attack {attack.name!r} needs attack {needed!r}: list it before, "
                    f"e.g. attack=[{','.join([needed, *names])}]"
                )
            if names.index(needed) > index:
                order = [n for n in names if n != needed]
                order.insert(order.index(attack.name), needed)
                raise ValueError(
                    f"attack {attack.name!r} needs {needed!r} to run first: "
                    f"attack=[{','.join(order)}]"
                )


def _client_key(view: ServerView) -> int:
    """An int for seeding: the partition id, or a fixed hash of a string id such as "aggregate"
    (Python's `hash` of a str changes per process, which would make runs irreproducible)."""
    if isinstance(view.client_id, int):
        return view.client_id
    return zlib.crc32(str(view.client_id).encode())


class AttackRunner:
    """Runs `attacks` on each view and returns one row per attack.

    Args:
        attacks: plugins in the order to run (see `fedcore.plugins.Attack`); each attack's
            `requires` must name attacks listed before it.
        spec: the architecture the server distributes.
        timeout: seconds allowed per attack call (None: no limit).
        seed: torch is seeded per (seed, round, client, attack index) before each call.
    """

    def __init__(
        self,
        attacks: Sequence[Any],
        spec: ModelSpec,
        timeout: float | None = 120.0,
        seed: int = 0,
    ) -> None:
        check_dependencies(attacks)
        self.attacks, self.spec = list(attacks), spec
        self.timeout, self.seed = timeout, seed
        self.reasons: dict[str, str] = {}
        self.scores: dict[str, tuple[Score, ...]] = {}  # attack name -> its findings' scores

    def check(self, train_config: Mapping[str, Any]) -> dict[str, str]:
        """Ask each attack whether it applies to this run; returns {name: reason} for those that
        do not (they get a not_applicable row every round without being called)."""
        self.reasons = {}
        for attack in self.attacks:
            check = getattr(attack, "check", None)
            reason = check(self.spec, dict(train_config)) if check else None
            if reason:
                self.reasons[attack.name] = reason
        return dict(self.reasons)

    def run(self, view: ServerView, truth: Truth | None) -> list[dict[str, Any]]:
        """Rows `{round, client, attack, status, message, seconds, <scores>, diagnostics}`."""
        findings: dict[str, Finding] = {}
        rows = []
        for index, attack in enumerate(self.attacks):
            row: dict[str, Any] = {"round": view.round, "client": view.client_id}
            row["attack"] = attack.name
            if attack.name in self.reasons:
                message = self.reasons[attack.name]
                rows.append({**row, "status": NOT_APPLICABLE, "message": message, "seconds": 0.0})
                continue
            torch.manual_seed(hash((self.seed, view.round, _client_key(view), index)) % 2**31)
            start = time.perf_counter()
            try:
                finding = run_with_timeout(lambda a=attack: a(view, findings), self.timeout)
                if not isinstance(finding, Finding):
                    raise TypeError(f"returned {type(finding).__name__}, expected a Finding")
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, AttackTimeout):
                    log.debug("attack %s failed:\n%s", attack.name, traceback.format_exc())
                log.warning(
                    "round %d client %s: attack %s failed: %s",
                    view.round, view.client_id, attack.name, message,
                )  # fmt: skip
                seconds = time.perf_counter() - start
                rows.append({**row, "status": ERROR, "message": message, "seconds": seconds})
                continue
            seconds = time.perf_counter() - start
            findings[attack.name] = finding
            rows.append({**row, **self._scored(attack.name, finding, truth), "seconds": seconds})
        return rows

    def _scored(self, name: str, finding: Finding, truth: Truth | None) -> dict[str, Any]:
        status, message, scores = finding.status, finding.message, {}
        if finding.SCORES:
            self.scores.setdefault(name, tuple(finding.SCORES))
        if truth is not None and finding.ok:
            try:
                scores = {k: float(v) for k, v in finding.score(truth).items()}
            except Exception as exc:
                status, message = ERROR, f"scoring failed: {type(exc).__name__}: {exc}"
        diagnostics = (
            json.dumps(dict(finding.diagnostics), default=str) if finding.diagnostics else ""
        )
        return {"status": status, "message": message, **scores, "diagnostics": diagnostics}
