"""No defense: the update is sent as trained."""

from __future__ import annotations

from torch import Tensor

__all__ = ["Identity"]


class Identity:
    """The identity defense (`defense=none`)."""

    name = "none"

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        return update
