"""The attack plugin interface and the base type of what an attack returns.

An attack is any callable object with a `name` that maps `(view, findings)` to a `Finding`:

    class MyAttack:
        name = "my_attack"
        def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding: ...

`findings` holds what earlier attacks of the same reply found, keyed by their names, so an attack
may build on another (e.g. transcript reconstruction on RLG's bag of words). An attack never sees
the ground truth: the observer scores the returned finding with `finding.score(truth)`.

An attack may also define `check(model, train_config) -> str | None`; a string is the reason it
cannot apply to this run (e.g. "needs batch_size 1"), reported once at start-up and as the message
of a `not_applicable` row every round, without calling the attack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from fedsim.update import ServerView, Truth

__all__ = ["ERROR", "NOT_APPLICABLE", "OK", "Attack", "Finding", "not_applicable"]

OK = "ok"
NOT_APPLICABLE = "not_applicable"
ERROR = "error"


@dataclass(frozen=True, kw_only=True)
class Finding:
    """Base of every attack result.

    Attributes:
        status: "ok", "not_applicable" (the attack's assumptions do not hold; `message` says
            which) or "error" (set by the observer when the attack raised or timed out).
        message: human-readable reason for a status other than "ok".
        diagnostics: numbers worth logging that are not scores (ranks, residuals, iterations).
    """

    status: str = OK
    message: str = ""
    diagnostics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def score(self, truth: Truth) -> dict[str, float]:
        """Scores of this finding against the ground truth; empty for a bare finding."""
        return {}


def not_applicable(reason: str, **diagnostics: Any) -> Finding:
    """A finding that says the attack does not apply here, and why."""
    return Finding(status=NOT_APPLICABLE, message=reason, diagnostics=diagnostics)


@runtime_checkable
class Attack(Protocol):
    """A server-side attack plugin (see the module docstring)."""

    name: str

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding: ...
