"""The plugin protocols (`Attack`, `Defense`) and the checks plugins share.

An attack is any callable object with a `name` that maps `(view, findings)` to a `Finding`:

    class MyAttack:
        name = "my_attack"
        requires = ("rlg",)     # optional: attacks whose findings this one reads
        def check(self, model, train_config): ...   # optional: a reason it cannot apply, or None
        def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding: ...

`findings` holds what earlier attacks of the same reply found, keyed by their names. An attack
that reads another's finding names it in `requires`: a missing or later one is a config error.
`check(model, train_config) -> str | None` says once, at start-up, why the attack cannot apply to
this run; it is then logged as `not_applicable` every round without being called.

A defense is a callable object with a `name` that maps a client's update to the update it sends:

    class MyDefense:
        name = "my_defense"
        def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]: ...

`update[name] = after - before` for every trainable parameter. The client sends
`before + defense(update, state)`, so any server strategy works unchanged. `state` is a dict that
persists across the rounds of one client; it also holds the read-only keys "partition_id",
"round", "lr", "local_steps" and "batch_size". An optional `metrics(state) -> dict[str, float]`
reports numbers per client and round (DP's epsilon spent so far), logged in `clients.parquet`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

    from fedcore.findings import Finding
    from fedcore.views import ServerView

__all__ = ["Attack", "Defense", "single_sample_reason"]


@runtime_checkable
class Attack(Protocol):
    """A server-side attack plugin (see the module docstring)."""

    name: str

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding: ...


@runtime_checkable
class Defense(Protocol):
    """A client-side defense plugin (see the module docstring)."""

    name: str

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]: ...


def single_sample_reason(what: str, train_config: Mapping[str, Any]) -> str | None:
    """Why an attack that needs one sample in one SGD step cannot apply, or None.

    `what` names the attack in the message, e.g. "soft-label inversion". Missing keys count as
    not given (a reason), never as 1.
    """
    n, k = train_config.get("batch_size"), train_config.get("local_steps")
    if n is None or int(n) != 1:
        return f"{what} needs batch_size 1 (one sample per update), got {n}"
    if k is None or int(k) != 1:
        return f"{what} needs local_steps 1 (one SGD step per update), got {k}"
    return None
