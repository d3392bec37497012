"""Adapts a `defenses` plugin into a Flower client mod that rewrites the outgoing weights.

The defense sees `update = after - before` of every trainable parameter and the client sends
`before + defense(update, state)`; buffers (e.g. BatchNorm statistics) are sent unchanged.
The defense's `state` dict persists across rounds in `context.state`. A defense with a
`metrics(state) -> dict[str, float]` method (e.g. DP's epsilon) adds those numbers to the reply's
metrics, so they become columns of `clients.parquet`.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

from fedcore import Defense
from fedsim.tasks.base import TrainConfig

__all__ = ["make_defense_mod"]

_STATE_KEY = "defense-state"


def _load_state(context: Context) -> dict:
    record = context.state.get(_STATE_KEY) if _STATE_KEY in context.state else None
    if record is None:
        return {}
    return torch.load(io.BytesIO(record["blob"]), weights_only=False)


def _save_state(context: Context, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    context.state[_STATE_KEY] = ConfigRecord({"blob": buffer.getvalue()})


def make_defense_mod(defense: Defense, parameter_names: frozenset[str]) -> Callable:
    """A client mod applying `defense` to the update of the parameters in `parameter_names`."""

    def defense_mod(msg: Message, context: Context, call_next: Callable) -> Message:
        before = msg.content["arrays"].to_torch_state_dict()
        reply = call_next(msg, context)
        if reply.has_error() or defense.name == "none":
            return reply
        after = reply.content["arrays"].to_torch_state_dict()
        update = {k: after[k] - before[k] for k in after if k in parameter_names}
        config = msg.content["config"]
        state = _load_state(context)
        state.update(
            partition_id=int(context.node_config.get("partition-id", -1)),
            round=TrainConfig.round_of(config),
            lr=float(config["lr"]),
            local_steps=int(config["local_steps"]),
            batch_size=int(config["batch_size"]),
        )
        sent = defense(update, state)
        if set(sent) != set(update) or any(sent[k].shape != update[k].shape for k in update):
            raise ValueError(f"defense {defense.name!r} must return the same keys and shapes")
        _save_state(context, state)
        if callable(getattr(defense, "metrics", None)):
            metrics = reply.content.metric_records
            record = next(iter(metrics.values())) if metrics else MetricRecord()
            record.update({k: float(v) for k, v in defense.metrics(state).items()})
            if not metrics:
                reply.content["metrics"] = record
        new = {
            k: (before[k] + sent[k].to(before[k].dtype)) if k in sent else v
            for k, v in after.items()
        }
        reply.content["arrays"] = ArrayRecord(new)
        return reply

    return defense_mod
