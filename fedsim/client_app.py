"""The Flower ClientApp: local SGD on the client's partition, then the configured defense (a mod).
Under secure aggregation (`defense=secagg`) the mods are Flower's SecAgg+ mod and the adapter of
`fedsim.secure_aggregation` instead: the client sends its masked update.

`build_client_app(cfg)` builds it from a plain config dict; the module-level `app` builds it from
`context.run_config["overrides"]` (Hydra overrides) for `flwr run` and the deployment engine.
In simulation the server asks for an audit record (`config["audit"]`): the client then attaches its
ground truth (labels per step, soft labels, inputs when asked) for scoring attacks.
"""

from __future__ import annotations

import shlex
import time
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.audit import encode_truth
from fedsim.defense_mod import make_defense_mod
from fedsim.factory import build_defense, build_task, config_key, resolve_device
from fedsim.secure_aggregation import client_mods, is_secure_aggregation
from fedsim.tasks.base import TrainConfig

__all__ = ["app", "build_client_app"]


def _partition(context: Context) -> tuple[int, int]:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            "this SuperNode has no partition: start it with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        )
    return int(node["partition-id"]), int(node["num-partitions"])


_MODS: dict[str, object] = {}


def _defense_mod(cfg: dict, state_dir: str | None = None):
    """The defense as a client mod, built in the process that runs it (Ray actors build their
    own, so nothing large is pickled with the app), once per process and config."""
    key = config_key([cfg, state_dir])

    def mod(msg: Message, context: Context, call_next):
        if key not in _MODS:
            spec = build_task(cfg).model_spec()
            trainable = frozenset(name for name, _ in spec.build().named_parameters())
            _MODS[key] = make_defense_mod(build_defense(cfg), trainable, state_dir)
        return _MODS[key](msg, context, call_next)

    return mod


def build_client_app(cfg: dict, state_dir: str | Path | None = None) -> ClientApp:
    """The ClientApp for the resolved config `cfg` (a plain, picklable dict). `state_dir`: where
    clients also save their defense state, for a resumed run (`fedsim.defense_mod`)."""
    build_task(cfg)  # fail fast here on a bad config
    secure = is_secure_aggregation(build_defense(cfg))
    # Secure aggregation: Flower's SecAgg+ mod masks the update (fedsim.secure_aggregation).
    state = str(state_dir) if state_dir is not None else None
    train_mods = client_mods(cfg) if secure else [_defense_mod(cfg, state)]
    threads = cfg.get("backend", {}).get("client_threads")
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid, nparts = _partition(context)
        record = ConfigRecord({"partition-id": pid, "num-partitions": nparts})
        return Message(RecordDict({"meta": record}), reply_to=msg)

    @app.train(mods=train_mods)
    def train(msg: Message, context: Context) -> Message:
        if threads:
            torch.set_num_threads(int(threads))
        start = time.perf_counter()
        task = build_task(cfg)
        spec = task.model_spec()
        pid, nparts = _partition(context)
        config = msg.content["config"]
        train_config = TrainConfig.from_record(config)
        model = spec.build()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        # Dropout and other torch randomness depend on (seed, round, client) only, not on which
        # Ray actor runs the client: runs reproduce on every backend.
        torch.manual_seed(hash((train_config.seed, train_config.round, pid)) % 2**63)
        result = task.local_train(model, pid, nparts, train_config, resolve_device(cfg["device"]))
        metrics = {"num-examples": result.num_examples, **result.metrics}
        metrics["train_seconds"] = time.perf_counter() - start
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.cpu().state_dict()),
                "metrics": MetricRecord(metrics),
                "meta": ConfigRecord({"partition-id": pid}),
            }
        )
        if config.get("audit", False):
            content["audit"] = ConfigRecord({"truth": encode_truth(result.truth)})
        return Message(content, reply_to=msg)

    return app


@lru_cache(maxsize=4)
def _app_for(overrides: str) -> ClientApp:
    """The deployed ClientApp for a run's overrides. `backend.*` describes simulation only: a
    deployed client trains with its SuperNode's torch threads (`fedsim-deploy supernode
    --threads`, default all of the machine's cores), not Ray's `client_threads`."""
    from fedsim.config import compose_config

    cfg = compose_config(shlex.split(overrides))
    cfg["backend"] = {**(cfg.get("backend") or {}), "client_threads": None}
    return build_client_app(cfg)


def _deployed(msg: Message, context: Context) -> Message:
    """Deployment: the model may come packed as one Array (`fedsim.deploy_packing`); the reply
    is packed the same way when it did."""
    from fedsim.deploy_packing import pack_message, unpack_message

    packed = unpack_message(msg)
    reply = _app_for(str(context.run_config.get("overrides", "")))(msg, context)
    if packed:
        pack_message(reply)
    return reply


class _LazyClientApp(ClientApp):
    """Builds the real ClientApp on first use, from the run config's Hydra overrides."""

    def __call__(self, message: Message, context: Context) -> Message:
        return _deployed(message, context)


app = _LazyClientApp()
