"""Adapts a `defenses` plugin into a Flower client mod that rewrites the outgoing weights.

The defense sees `update = after - before` of every trainable parameter and the client sends
`before + defense(update, state)`; buffers (e.g. BatchNorm statistics) are sent unchanged.
The defense's `state` dict persists across rounds in `context.state` (Flower keeps one Context per
node for the whole run). So that a resumed run equals an uninterrupted one, the simulation also
gives the mod a `state_dir` (`<run_dir>/client_state`): after each round the client writes its state
to `partition_<p>/round_<r>.pt` there, and a client of a resumed run whose context has no state yet
reads the newest file of a round <= the round the run resumed from (`round-offset`). The state
stays with the client: it never travels to the server, which only ever sees the sent update.
Files are per round because a client may write round r before the server's checkpoint of round r
exists (a run stopped in between resumes from r - 1); older files are pruned. A defense with a
`metrics(state) -> dict[str, float]` method (e.g. DP's epsilon) adds those numbers to the reply's
metrics, so they become columns of `clients.parquet`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

from fedcore import Defense
from fedsim.tasks.base import TrainConfig

__all__ = ["CLIENT_STATE", "make_defense_mod"]

_STATE_KEY = "defense-state"
CLIENT_STATE = "client_state"  # the folder of the clients' saved defense state in a run directory
_ROUND_FILE = re.compile(r"round_(\d+)\.pt")
# The keys the mod writes into the state itself each round (read-only for the defense).
READ_ONLY_KEYS = frozenset({"partition_id", "round", "lr", "local_steps", "batch_size"})


def _saved_rounds(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _ROUND_FILE.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def _load_state(context: Context, folder: Path | None, resumed_from: int) -> dict:
    record = context.state.get(_STATE_KEY) if _STATE_KEY in context.state else None
    if record is not None:
        return torch.load(io.BytesIO(record["blob"]), weights_only=False)
    if folder is None or resumed_from <= 0:
        return {}
    saved = {r: p for r, p in _saved_rounds(folder).items() if r <= resumed_from}
    return torch.load(saved[max(saved)], weights_only=False) if saved else {}


def _save_state(context: Context, state: dict, folder: Path | None, round_: int) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    context.state[_STATE_KEY] = ConfigRecord({"blob": buffer.getvalue()})
    if folder is None or set(state) <= READ_ONLY_KEYS:
        return  # a stateless defense (only the keys the mod sets) needs no file to resume
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"round_{round_:06d}.tmp"
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, folder / f"round_{round_:06d}.pt")
    # The server has checkpointed round_ - 1 at least: keep the newest file up to it and this one.
    older = [r for r in _saved_rounds(folder) if r < round_]
    for r in older:
        if r != max(older):
            (folder / f"round_{r:06d}.pt").unlink(missing_ok=True)


def make_defense_mod(
    defense: Defense, parameter_names: frozenset[str], state_dir: str | Path | None = None
) -> Callable:
    """A client mod applying `defense` to the update of the parameters in `parameter_names`;
    with `state_dir`, the defense's state is also saved there per partition and round."""

    def defense_mod(msg: Message, context: Context, call_next: Callable) -> Message:
        before = msg.content["arrays"].to_torch_state_dict()
        reply = call_next(msg, context)
        if reply.has_error() or defense.name == "none":
            return reply
        after = reply.content["arrays"].to_torch_state_dict()
        update = {k: after[k] - before[k] for k in after if k in parameter_names}
        config = msg.content["config"]
        partition, round_ = (
            int(context.node_config.get("partition-id", -1)),
            TrainConfig.round_of(config),
        )
        folder = Path(state_dir) / f"partition_{partition:04d}" if state_dir else None
        state = _load_state(context, folder, int(config.get("round-offset", 0)))
        state.update(
            partition_id=partition,
            round=round_,
            lr=float(config["lr"]),
            local_steps=int(config["local_steps"]),
            batch_size=int(config["batch_size"]),
        )
        sent = defense(update, state)
        if set(sent) != set(update) or any(sent[k].shape != update[k].shape for k in update):
            raise ValueError(f"defense {defense.name!r} must return the same keys and shapes")
        _save_state(context, state, folder, round_)
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
