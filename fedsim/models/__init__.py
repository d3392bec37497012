"""Models, picked by the `_target_` of `conf/model/<name>.yaml` and built by their task.

A model node is a `_target_` (a builder: a class or function returning an `nn.Module`), its
options as keyword arguments, and `task: <name>`, the task it is for. The task removes that
marker, checks it, and completes the builder with what only it knows (the number of classes; for
speech the vocabulary and feature sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["model_builder"]


def model_builder(model: Mapping[str, Any] | Callable[..., nn.Module], task: str):
    """`(name, builder)` of a task's model: `model` is a model node (see above) or already a
    builder. The name is the target's own, lower-cased (`fedsim.models.image.MLP` -> "mlp").
    Raises `ValueError` for a node without `_target_` or one meant for another task."""
    if isinstance(model, nn.Module):
        raise ValueError(
            f"the model arrived built ({type(model).__name__}); the task node needs "
            "`_recursive_: false` so that the task builds it"
        )
    if callable(model):
        target = getattr(model, "func", model)  # a functools.partial: its function
        return getattr(target, "__name__", type(target).__name__).lower(), model
    from hydra.utils import instantiate

    node = dict(model)
    fits = node.pop("task", task)
    target = node.get("_target_")
    if not target:
        raise ValueError(f"the model needs a `_target_` (its builder), got {dict(model)!r}")
    name = str(target).rsplit(".", 1)[-1].lower()
    if fits != task:
        raise ValueError(f"model {name} is for task={fits}, not task={task}")
    return name, instantiate({**node, "_partial_": True}, _convert_="all")
