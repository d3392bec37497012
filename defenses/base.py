"""The defense plugin interface.

A defense is a callable object with a `name` that maps a client's update to the update it sends:

    class MyDefense:
        name = "my_defense"
        def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]: ...

`update[name] = after - before` for every parameter (the trained weights minus the global weights
received). The client sends `before + defense(update, state)`, so any server strategy works
unchanged. `state` is a plain dict that persists across the rounds of one client (stateful defenses
such as error feedback keep their residuals there); it also holds read-only facts under these keys:
"partition_id", "round", "lr", "local_steps", "batch_size".
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Defense", "Identity"]


@runtime_checkable
class Defense(Protocol):
    """A client-side defense plugin (see the module docstring)."""

    name: str

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]: ...


class Identity:
    """No defense: the update is sent as trained."""

    name = "none"

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        return update
