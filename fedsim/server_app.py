"""The Flower ServerApp: FedAvg over the sampled clients, with the observer attacking every reply.

`build_server_app(cfg, run_dir)` builds it from a plain config dict (used by the simulation
backends); the module-level `app` composes the config from `context.run_config["overrides"]`
(Hydra overrides) for `flwr run` and the deployment engine, and writes to `output` (or
`outputs/deploy-<time>`).
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsim.factory import build_attacks, build_defense, build_task, resolve_device
from fedsim.logs import RoundLog
from fedsim.observed_grid import ObservedGrid
from fedsim.observer import Observer

__all__ = ["app", "build_server_app", "discover_partitions", "run_server"]

log = logging.getLogger("fedsim")


def discover_partitions(grid: Grid, num_nodes: int, timeout: float = 300.0) -> dict[int, int]:
    """Wait until `num_nodes` nodes are connected, then ask each for its partition id.

    Returns node id -> partition id. Raises `RuntimeError` on a time-out or a failed reply.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} of {num_nodes} clients connected within {timeout:g} s"
            )
        time.sleep(0.1)
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    errors = [r.error.reason for r in replies if r.has_error()]
    if errors or len(replies) != len(nodes):
        raise RuntimeError(
            f"partition discovery failed ({len(replies)}/{len(nodes)} replies): {errors[:1]}"
        )
    mapping = {r.metadata.src_node_id: int(r.content["meta"]["partition-id"]) for r in replies}
    if len(set(mapping.values())) != len(mapping):
        raise RuntimeError(f"two clients report the same partition id: {sorted(mapping.values())}")
    return mapping


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _attack_summary(rows: list[dict], round_: int) -> str:
    parts = []
    names = dict.fromkeys(r["attack"] for r in rows if r["round"] == round_)
    for name in names:
        scores = [
            r["f1"] for r in rows if r["round"] == round_ and r["attack"] == name and "f1" in r
        ]
        if scores:
            parts.append(f"{name} F1 {np.nanmean(scores):.2f}")
        else:
            statuses = {r["status"] for r in rows if r["round"] == round_ and r["attack"] == name}
            parts.append(f"{name} {'/'.join(sorted(statuses))}")
    return ", ".join(parts)


def run_server(grid: Grid, cfg: dict, run_dir: str | Path, audit: bool = True) -> None:
    """Run the whole federated training with attacks; tables go to `run_dir` every round."""
    fl, seed = cfg["fl"], int(cfg["seed"])
    _seed_everything(seed)
    task = build_task(cfg)
    spec = task.model_spec()
    attacks = build_attacks(cfg)
    defense = build_defense(cfg)
    device = resolve_device(cfg["device"])
    run_dir = Path(run_dir)
    context = {
        "task": spec.task, "model": spec.name, "defense": defense.name, "lr": float(fl["lr"]),
        "batch_size": int(fl["batch_size"]), "local_steps": int(fl["local_steps"]),
        "label_smoothing": float(fl["label_smoothing"]), "mixup_alpha": float(fl["mixup_alpha"]),
    }  # fmt: skip
    round_log = RoundLog(run_dir, context)
    observer = Observer(attacks, spec, round_log, cfg.get("attack_timeout"), seed)
    train_config = ConfigRecord(
        {
            "lr": float(fl["lr"]),
            "local_steps": int(fl["local_steps"]),
            "batch_size": int(fl["batch_size"]),
            "label_smoothing": float(fl["label_smoothing"]),
            "mixup_alpha": float(fl["mixup_alpha"]),
            "seed": seed,
            "keep_inputs": bool(fl["keep_inputs"]),
            "audit": bool(audit),
        }
    )
    observer.check(dict(train_config))
    clients, rounds = int(fl["clients"]), int(fl["rounds"])
    partition_of = discover_partitions(grid, clients, float(cfg.get("connect_timeout", 300)))
    sample = max(1, round(float(fl["fraction"]) * clients))
    strategy = FedAvg(
        fraction_train=sample / clients,
        fraction_evaluate=0.0,
        min_train_nodes=sample,
        min_available_nodes=clients,
    )
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    clock = {"start": time.perf_counter()}
    initial, done = spec.build().state_dict(), 0
    if cfg.get("resume"):
        saved = torch.load(checkpoints / "latest.pt", weights_only=False)
        initial, done = saved["model"], int(saved["round"])
        round_log.resume(done)
        log.info("resuming after round %d of %d from %s", done, rounds, checkpoints / "latest.pt")
        if done >= rounds:
            log.info("nothing to do: the run already has %d rounds (raise fl.rounds)", done)
            return

    def evaluate(round_: int, arrays: ArrayRecord) -> MetricRecord | None:
        if done and round_ == 0:
            return None  # the resumed model was evaluated when it was saved
        round_ += done
        model = spec.build()
        state = arrays.to_torch_state_dict()
        model.load_state_dict(state)
        metrics = task.evaluate(model, device)
        seconds = time.perf_counter() - clock["start"]
        stats = (
            observer.round_stats
            if round_
            else {"clients": 0, "ok": 0, "failures": 0, "non_finite": 0}
        )
        round_log.add("rounds", round=round_, **metrics, **stats, seconds=seconds)
        round_log.flush()
        torch.save({"round": round_, "model": state}, checkpoints / "latest.pt")
        if cfg.get("keep_checkpoints", False):
            torch.save({"round": round_, "model": state}, checkpoints / f"round_{round_:04d}.pt")
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if round_:
            summary = _attack_summary(round_log.rows["attacks"], round_)
            log.info(
                "round %d/%d | %s | clients %d ok, %d failed, %d non-finite | %s | %.1f s",
                round_, rounds, shown, stats["ok"], stats["failures"], stats["non_finite"],
                summary, seconds,
            )  # fmt: skip
        else:
            log.info("round 0 (initial model) | %s", shown)
        random.seed(
            hash((seed, round_ + 1))
        )  # the next round's client sample depends on (seed, round)
        clock["start"] = time.perf_counter()
        return MetricRecord(metrics)

    random.seed(hash((seed, done + 1)))
    strategy.start(
        grid=ObservedGrid(grid, observer, partition_of, round_offset=done),
        initial_arrays=ArrayRecord(initial),
        num_rounds=rounds - done,
        train_config=train_config,
        evaluate_fn=evaluate,
        timeout=cfg.get("round_timeout"),
    )


def build_server_app(
    cfg: dict, run_dir: str | Path, audit: bool = True, on_error=None
) -> ServerApp:
    """The ServerApp for the resolved config `cfg`, writing its tables to `run_dir`.

    `on_error`, when given, receives an exception raised by the run in its `error` attribute
    (Flower's simulation engine runs the ServerApp in a thread and only logs it).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_server(grid, cfg, run_dir, audit)
        except BaseException as exc:
            if on_error is None:
                raise
            on_error.error = exc

    return app


def _deployed_main(grid: Grid, context: Context) -> None:
    from fedsim.config import compose_config

    cfg = compose_config(str(context.run_config.get("overrides", "")).split())
    run_dir = cfg.get("output") or f"outputs/deploy-{datetime.now():%Y-%m-%d_%H-%M-%S}"
    audit = cfg.get("audit")
    run_server(grid, cfg, run_dir, audit=bool(audit) if audit is not None else False)


app = ServerApp()
app.main()(_deployed_main)
