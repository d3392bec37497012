"""The Flower ServerApp: seeded FedAvg over the sampled clients, with the observer attacking
every reply before aggregation and the global model evaluated after it. Under secure aggregation
(`defense=secagg`) `run_server` hands over to `fedsim.secure_aggregation` (Flower's SecAgg+), where
the observer attacks each round's aggregate instead.

`build_server_app(cfg, run_dir)` builds it from a plain config dict (used by the simulation
backends); the module-level `app` composes the config from `context.run_config["overrides"]`
(Hydra overrides) for `flwr run` and the deployment engine (`fedsim-deploy run`), and writes to
`output` (or `$FEDSIM_OUTPUTS/deploy-<time>-<run id>`), printing the run directory.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedcore import AttackRunner, ModelSpec
from fedsim.checkpoints import Checkpoints
from fedsim.discovery import discover_partitions
from fedsim.factory import build_attacks, build_defense, build_task, resolve_device
from fedsim.logs import RoundLog
from fedsim.observed_grid import ObservedGrid
from fedsim.observer import Observer, RoundStats
from fedsim.schedule import lr_at_round
from fedsim.secure_aggregation import is_secure_aggregation, run_secure_aggregation
from fedsim.strategy import SampledFedAvg
from fedsim.summary import headline_scores
from fedsim.tasks.base import Task

__all__ = ["app", "build_server_app", "run_server"]

log = logging.getLogger("fedsim")


def _seed_everything(seed: int) -> None:
    """Seeds the initial model's weights (and any library drawing from the global generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _train_config(fl: dict, seed: int, audit: bool, round_offset: int) -> ConfigRecord:
    """The config sent to every client each round (Flower adds "server-round")."""
    return ConfigRecord(
        {
            "lr": float(fl["lr"]),
            "local_steps": int(fl["local_steps"]),
            "batch_size": int(fl["batch_size"]),
            "label_smoothing": float(fl["label_smoothing"]),
            "mixup_alpha": float(fl["mixup_alpha"]),
            "seed": seed,
            "keep_inputs": bool(fl["keep_inputs"]),
            "audit": bool(audit),
            "round-offset": round_offset,
        }
    )


class DivergenceWatch:
    """Warns once when the global loss becomes non-finite or grows `factor`x over the first
    evaluated round's, naming the likely cause (`hint`, e.g. "fl.lr=0.5, defense=signsgd")."""

    def __init__(self, hint: str, factor: float = 100.0) -> None:
        self.hint, self.factor = hint, factor
        self.first: float | None = None
        self.warned = False

    def __call__(self, round_: int, loss: float | None) -> None:
        if loss is None or self.warned:
            return
        loss = float(loss)
        if self.first is None:
            self.first = loss
            return
        if not np.isfinite(loss) or loss > self.factor * max(self.first, 1e-12):
            self.warned = True
            log.warning(
                "round %d: global loss %.3g vs %.3g at the start: training diverged; lower the"
                " learning rate or change the defense (%s)", round_, loss, self.first, self.hint,
            )  # fmt: skip


class GlobalEvaluation:
    """Flower's `evaluate_fn`: after each round, evaluates the global model, writes its row and
    checkpoint, and prints the round's line (metrics, clients, each attack's headline score).

    Args:
        done: rounds a resumed run had already done (its model was evaluated when saved).
        rounds: the run's total rounds.
    """

    def __init__(
        self,
        task: Task,
        spec: ModelSpec,
        device: torch.device,
        round_log: RoundLog,
        observer: Observer,
        checkpoints: Checkpoints,
        rounds: int,
        done: int = 0,
        divergence: DivergenceWatch | None = None,
    ) -> None:
        self.task, self.spec, self.device = task, spec, device
        self.round_log, self.observer, self.checkpoints = round_log, observer, checkpoints
        self.rounds, self.done = rounds, done
        self.divergence = divergence
        self.start = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if self.done and server_round == 0:
            return None
        round_ = server_round + self.done
        state = arrays.to_torch_state_dict()
        model = self.spec.build()
        model.load_state_dict(state)
        metrics = self.task.evaluate(model, self.device)
        seconds = time.perf_counter() - self.start
        stats = self.observer.stats.get(round_, RoundStats())
        self.round_log.add("rounds", round=round_, **metrics, **stats.as_row(), seconds=seconds)
        self.round_log.flush()
        self.checkpoints.save(round_, state)
        self._print(round_, metrics, stats, seconds)
        if self.divergence is not None:
            self.divergence(round_, metrics.get("loss"))
        self.start = time.perf_counter()
        return MetricRecord(metrics)

    def _print(self, round_: int, metrics: dict, stats: RoundStats, seconds: float) -> None:
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if not round_:
            log.info("round 0 (initial model) | %s", shown)
            return
        attacks = headline_scores(self.round_log.rows["attacks"], self.round_log.scores, round_)
        log.info(
            "round %d/%d | %s | clients %d ok, %d failed, %d timed out, %d non-finite | %s"
            " | %.1f s",
            round_, self.rounds, shown, stats.ok, stats.failures, stats.timeouts,
            stats.non_finite, attacks, seconds,
        )  # fmt: skip


def run_server(grid: Grid, cfg: dict, run_dir: str | Path, audit: bool = True) -> None:
    """Run the whole federated training with attacks; tables go to `run_dir` every round."""
    fl, seed = cfg["fl"], int(cfg["seed"])
    _seed_everything(seed)
    task = build_task(cfg)
    spec = task.model_spec()
    defense = build_defense(cfg)
    context = {
        "task": spec.task, "model": spec.name, "defense": defense.name, "lr": float(fl["lr"]),
        "batch_size": int(fl["batch_size"]), "local_steps": int(fl["local_steps"]),
        "label_smoothing": float(fl["label_smoothing"]), "mixup_alpha": float(fl["mixup_alpha"]),
    }  # fmt: skip
    round_log = RoundLog(run_dir, context)
    runner = AttackRunner(build_attacks(cfg), spec, cfg.get("attack_timeout"), seed)
    observer = Observer(runner, round_log)
    checkpoints = Checkpoints(run_dir, keep_all=bool(cfg.get("keep_checkpoints", False)))
    rounds, initial, done = int(fl["rounds"]), spec.build().state_dict(), 0
    if cfg.get("resume"):
        done, initial = checkpoints.load_latest()
        round_log.resume(done)
        log.info("resuming after round %d of %d from %s", done, rounds, checkpoints.latest)
        if done >= rounds:
            log.info("nothing to do: the run already has %d rounds (raise fl.rounds)", done)
            return
    train_config = _train_config(fl, seed, audit, round_offset=done)
    observer.check(dict(train_config))
    clients = int(fl["clients"])
    sample_size = max(1, round(float(fl["fraction"]) * clients))
    partition_of = discover_partitions(grid, clients, float(cfg.get("connect_timeout", 300)))
    hint = f"fl.lr={float(fl['lr']):g}, defense={defense.name}"
    evaluation = GlobalEvaluation(
        task, spec, resolve_device(cfg["device"]), round_log, observer, checkpoints, rounds, done,
        DivergenceWatch(hint),
    )  # fmt: skip
    if is_secure_aggregation(defense):  # the server sees only each round's aggregate
        run_secure_aggregation(
            grid,
            defense,
            initial=initial,
            sample_size=sample_size,
            seed=seed,
            round_offset=done,
            num_rounds=rounds - done,
            train_config=dict(train_config),
            partition_of=partition_of,
            observer=observer,
            evaluation=evaluation,
            timeout=cfg.get("round_timeout"),
            lr_schedule=str(fl.get("lr_schedule", "constant")),
        )
        return
    strategy = SampledFedAvg(
        sample_size=sample_size,
        seed=seed,
        round_offset=done,
        lr_at=partial(
            lr_at_round, float(fl["lr"]), fl.get("lr_schedule", "constant"), rounds=rounds
        ),
        fraction_train=float(fl["fraction"]),
        fraction_evaluate=0.0,
        min_available_nodes=clients,
    )
    strategy.start(
        grid=ObservedGrid(grid, observer, partition_of),
        initial_arrays=ArrayRecord(initial),
        num_rounds=rounds - done,
        train_config=train_config,
        evaluate_fn=evaluation,
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


def _without_config_traceback(record: logging.LogRecord) -> bool:
    """Flower logs a failed ServerApp with its traceback; a fedsim config error has been said in
    one line already, so its record keeps the message and loses the traceback."""
    from fedsim.config import ConfigError

    if record.exc_info and isinstance(record.exc_info[1], ConfigError):
        record.exc_info, record.exc_text = None, None
    return True


def deployed_config(overrides: list[str], run_id: int) -> tuple[dict, Path]:
    """The config and run directory of a deployed run: the composed overrides, or for `resume=`
    the saved config with this command's `fl.rounds` (and device) as `fedsim` resumes. Without
    `output=` the run goes to `$FEDSIM_OUTPUTS` (the SuperLink's `--outputs`, else `outputs/`
    here) under `deploy-<time>-<run id>`, as an absolute path. Raises `ConfigError`."""
    from fedsim.config import compose_config
    from fedsim.simulation import check_resume, resumed_config

    cfg = compose_config(overrides)
    if cfg.get("resume"):
        cfg, run_dir = resumed_config(cfg, check_resume(cfg, overrides))
        return cfg, Path(run_dir).resolve()
    if cfg.get("output"):
        return cfg, Path(cfg["output"]).resolve()
    outputs = Path(os.environ.get("FEDSIM_OUTPUTS") or "outputs")
    return cfg, (outputs / f"deploy-{datetime.now():%Y-%m-%d_%H-%M-%S}-{run_id}").resolve()


def _deployed_main(grid: Grid, context: Context) -> None:
    """The ServerApp of `flwr run` / `fedsim-deploy run`: config errors are one line and fail the
    run (nothing written); the run directory, with its `config.yaml`, is printed first and last."""
    from fedsim.config import ConfigError
    from fedsim.data.fashion_mnist import MissingDataError
    from fedsim.deploy_packing import PackedGrid
    from fedsim.flower_waits import shorten
    from fedsim.inline_grid import InlineGrid
    from fedsim.logging_setup import fedsim_lines_to
    from fedsim.progress import device_line
    from fedsim.simulation import check_buildable, saved_round, write_config

    fedsim_lines_to(sys.stdout)  # Flower forwards it to `flwr run --stream` and `flwr log`
    shorten()
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    try:
        cfg, run_dir = deployed_config(overrides, context.run_id)
        device = check_buildable(cfg)
    except (ConfigError, MissingDataError) as exc:
        log.error("config error: %s", exc)
        logging.getLogger("flwr").addFilter(_without_config_traceback)
        raise ConfigError(f"config error: {exc}") from None
    audit = cfg.get("audit")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.get("resume") or saved_round(run_dir) < int(cfg["fl"]["rounds"]):
        write_config(run_dir, cfg)
    log.info("run directory: %s (on this SuperLink's machine)", run_dir)
    log.info("%s", device_line(device))
    if not isinstance(grid, InlineGrid):  # Flower's engine: one Array per model on the wire
        grid = PackedGrid(grid)
    run_server(grid, cfg, run_dir, audit=bool(audit) if audit is not None else False)
    log.info(
        "run directory: %s; continue it with: fedsim resume=%s fl.rounds=<total>", run_dir, run_dir
    )


app = ServerApp()
app.main()(_deployed_main)
