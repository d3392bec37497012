"""Secure aggregation with Flower's own SecAgg+ (`defense=secagg`): both halves of the protocol.

Flower 1.41 has SecAgg+ only in its legacy API, so this module adapts fedsim to it:

- Client: `client_mods(cfg)` puts Flower's `secaggplus_mod` in front of `legacy_fit_mod`, which
  turns the legacy fit message (`fitins.parameters`, `fitins.config`) into the message fedsim's
  train function reads (`arrays`, `config`) and its reply into a `FitRes` whose parameters are
  the update `after - before` of the floating-point tensors (float64). SecAgg+ weighs, clips,
  quantises and masks that vector; the ground truth (simulation only) and the training metrics
  travel beside it in the FitRes metrics, never in the masked vector.
- Server: `run_secure_aggregation` runs Flower's `DefaultWorkflow(fit_workflow=
  SecAggPlusWorkflow(...))` with `SecAggFedAvg`, a legacy FedAvg that keeps fedsim's behaviour:
  the seeded client sample of `SampledFedAvg`, the same train config, the global evaluation, logs
  and checkpoints of `GlobalEvaluation`, and the observer, which attacks the only thing the
  server has, the round's aggregate (`Observer.observe_aggregate`, one row per attack and round,
  `client = "aggregate"`).

Clients send the update instead of the weights (Flower's example sends weights): the clipping
range then bounds an update, whatever the size of the weights (a BatchNorm running variance can
exceed any fixed range), and can be tightened to the scale of the updates for a finer quantisation
step; an update is also what the observer attacks. Integer buffers (BatchNorm's
`num_batches_tracked`) are not summed; they keep the global value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedcore import Truth
from fedsim.audit import decode_truth
from fedsim.config import ConfigError
from fedsim.factory import build_task, config_key
from fedsim.observer import NON_FINITE_MARK, Observer
from fedsim.schedule import lr_at_round
from fedsim.strategy import seeded_sample
from fedsim.tasks.base import TrainConfig

__all__ = [
    "SecAggFedAvg",
    "client_mods",
    "is_secure_aggregation",
    "legacy_fit_mod",
    "run_secure_aggregation",
]

log = logging.getLogger("fedsim")

AUDIT_KEY = "audit"  # FitRes metrics key of the client's encoded Truth (simulation only)


def is_secure_aggregation(defense: Any) -> bool:
    """Whether the defense asks for secure aggregation (`secure_aggregation = True`)."""
    return bool(getattr(defense, "secure_aggregation", False))


def _float_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The tensors SecAgg+ sums, in state-dict order: the floating-point ones."""
    return [k for k, v in state.items() if v.is_floating_point()]


# --- client -------------------------------------------------------------------------------------

_TEMPLATES: dict[str, dict[str, torch.Tensor]] = {}


def _template(cfg: dict) -> dict[str, torch.Tensor]:
    """The model's state dict (names, shapes, dtypes), built once per process and config."""
    key = config_key(cfg["task"])
    if key not in _TEMPLATES:
        _TEMPLATES[key] = build_task(cfg).model_spec().build().state_dict()
    return _TEMPLATES[key]


def legacy_fit_mod(cfg: dict) -> Callable:
    """A client mod between `secaggplus_mod` and fedsim's train function: legacy fit message in,
    `FitRes` with the float64 update `after - before` of the float tensors out."""

    def mod(msg: Message, context: Context, call_next: Callable) -> Message:
        template = _template(cfg)
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        arrays = parameters_to_ndarrays(fitins.parameters)
        if len(arrays) != len(template):
            raise ValueError(
                f"the server sent {len(arrays)} arrays, the model has {len(template)} tensors"
            )
        before = {
            name: torch.from_numpy(np.array(a, copy=True)).to(ref.dtype).reshape(ref.shape)
            for (name, ref), a in zip(template.items(), arrays, strict=True)
        }
        msg.content = RecordDict(
            {"arrays": ArrayRecord(before), "config": ConfigRecord(dict(fitins.config))}
        )
        reply = call_next(msg, context)
        content = reply.content
        after = content["arrays"].to_torch_state_dict()
        names = _float_names(before)
        update = {k: after[k] - before[k] for k in names}
        bad = [k for k, v in update.items() if not v.isfinite().all()]
        if bad:  # SecAgg+ cannot flag it once masked: the client drops out of the round instead
            raise ValueError(f"{NON_FINITE_MARK} in {len(bad)} tensors (e.g. {bad[0]}); not sent")
        metrics = dict(content["metrics"])
        num_examples = int(metrics.pop("num-examples"))
        if "audit" in content:
            metrics[AUDIT_KEY] = content["audit"]["truth"]
        _warn_if_clipped(update, num_examples, context)
        vector = [update[k].double().numpy() for k in names]
        # SecAgg+ rounds stochastically with NumPy's global generator: seed it per (seed, round,
        # client), as the train function seeds torch, so runs reproduce on every backend.
        config = fitins.config
        pid = int(context.node_config.get("partition-id", -1))
        np.random.seed(
            hash((int(config.get("seed", 0)), TrainConfig.round_of(config), pid)) % 2**32
        )
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vector), num_examples, metrics)
        reply.content = compat.fitres_to_recorddict(fitres, keep_input=False)
        return reply

    return mod


def _warn_if_clipped(update: Mapping[str, torch.Tensor], num_examples: int, context) -> None:
    """Log how many weighted entries exceed SecAgg+'s clipping range (they will be clipped)."""
    if RECORD_KEY_STATE not in context.state.config_records:
        return
    state = context.state.config_records[RECORD_KEY_STATE]
    clip, max_weight = float(state.get("clipping_range", 0)), float(state.get("max_weight", 0))
    if clip <= 0 or max_weight <= 0:
        return
    ratio = num_examples / max_weight
    clipped = sum(int((v.abs() * ratio > clip).sum()) for v in update.values())
    if clipped:
        log.warning(
            "SecAgg+: %d update entries exceed clipping_range %g and are clipped "
            "(raise defense.clipping_range)",
            clipped, clip,
        )  # fmt: skip


def client_mods(cfg: dict) -> list[Callable]:
    """The train mods of a ClientApp under secure aggregation (outermost first)."""
    return [secaggplus_mod, legacy_fit_mod(cfg)]


# --- server -------------------------------------------------------------------------------------


class _PartitionGrid(Grid):
    """The Grid SecAgg+ runs on: lists the known nodes in partition order, gives Flower's legacy
    client manager the `run` it reads (the in-process grid has none), and keeps each node's
    latest error reply so the round's client rows can say why a client dropped out."""

    def __init__(self, inner: Grid, partition_of: Mapping[int, int], run_id: int = 0) -> None:
        self._inner, self.partition_of = inner, dict(partition_of)
        self._run = inner.run if inner.run is not None else Run.create_empty(run_id)
        self.errors: dict[int, str] = {}

    def set_run(self, run) -> None:
        self._inner.set_run(run)
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages):
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._inner.pull_messages(message_ids)

    def get_node_ids(self) -> list[int]:
        nodes = [n for n in self._inner.get_node_ids() if n in self.partition_of]
        return sorted(nodes, key=self.partition_of.__getitem__)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                self.errors[reply.metadata.src_node_id] = reply.error.reason
        return replies


class SecAggFedAvg(FedAvg):
    """Flower's legacy FedAvg with fedsim's behaviour, for `SecAggPlusWorkflow`.

    The global model is kept here as a state dict (legacy `Parameters` carry no names).
    `configure_fit` draws the same seeded sample as `SampledFedAvg` and sends the model and the
    train config; `aggregate_fit` receives the dequantised SecAgg+ aggregate (the FedAvg mean of
    the clients' updates), adds it to the global model, removes the clients' audit records
    from their metrics and has the observer attack the aggregate; `evaluate` is fedsim's
    `GlobalEvaluation` (round row, checkpoint, round line).

    Args:
        initial: the initial (or resumed) global state dict.
        sample_size: clients per round (at least 2: SecAgg+ needs a sum).
        seed: the run's seed (sampling).
        round_offset: rounds a resumed run had already done.
        train_config: the train config sent every round (Flower's round is added).
        partition_of: node id -> partition id.
        grid: the `_PartitionGrid` (errors of the clients that dropped out).
        observer: attacks the aggregate and writes the client rows.
        evaluation: `GlobalEvaluation`, called after every round (and for round 0).
        lr_schedule: `fl.lr_schedule`; the round's lr is `lr_at_round(lr, lr_schedule, run
            round, total_rounds)` (`fedsim.schedule`).
        total_rounds: `fl.rounds`, the schedule's length.
    """

    def __init__(
        self,
        initial: Mapping[str, torch.Tensor],
        sample_size: int,
        seed: int,
        round_offset: int,
        train_config: Mapping[str, Any],
        partition_of: Mapping[int, int],
        grid: _PartitionGrid,
        observer: Observer,
        evaluation: Callable[[int, ArrayRecord], Any],
        lr_schedule: str = "constant",
        total_rounds: int = 1,
    ) -> None:
        clients = len(partition_of)
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=sample_size,
            min_evaluate_clients=0,
            min_available_clients=clients,
        )
        self.state = {k: v.detach().cpu().clone() for k, v in initial.items()}
        self.sample_size, self.seed, self.round_offset = sample_size, seed, round_offset
        self.train_config, self.partition_of = dict(train_config), dict(partition_of)
        self.grid, self.observer, self.evaluation = grid, observer, evaluation
        self.pending: dict[int, list[int]] = {}  # Flower round -> sampled partition ids
        self.lr_schedule, self.total_rounds = lr_schedule, total_rounds

    def _parameters(self) -> Parameters:
        return ndarrays_to_parameters([v.numpy() for v in self.state.values()])

    def _config(self, server_round: int) -> dict[str, Any]:
        config = {**self.train_config, "server-round": server_round}
        lr = float(self.train_config["lr"])
        run_round = self._run_round(server_round)
        config["lr"] = lr_at_round(lr, self.lr_schedule, run_round, self.total_rounds)
        return config

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters:
        return self._parameters()

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        proxies = {p.node_id: p for p in client_manager.all().values()}
        nodes = [n for n in self.grid.get_node_ids() if n in proxies]
        picks = seeded_sample(nodes, self.sample_size, self.seed, server_round + self.round_offset)
        self.pending[server_round] = [self.partition_of[n] for n in picks]
        self.grid.errors.clear()
        fitins = FitIns(self._parameters(), self._config(server_round))
        return [(proxies[n], fitins) for n in picks]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list,
    ) -> tuple[Parameters | None, dict]:
        sampled = self.pending.pop(server_round, [])
        replies: dict[int, dict] = {}
        truths: list[Truth] = []
        for proxy, fitres in results:
            metrics = dict(fitres.metrics)
            blob = metrics.pop(AUDIT_KEY, None)
            fitres.metrics = dict(metrics)  # nothing after this point sees the audit record
            if blob is not None:
                truths.append(decode_truth(blob))
            replies[self.partition_of[proxy.node_id]] = {
                "num-examples": fitres.num_examples,
                **metrics,
            }
        before, after = self.state, None
        if results:
            mean = parameters_to_ndarrays(results[0][1].parameters)  # every result holds the sum
            after = dict(before)
            for name, value in zip(_float_names(before), mean, strict=True):
                delta = torch.from_numpy(np.asarray(value)).reshape(before[name].shape)
                after[name] = before[name] + delta.to(before[name].dtype)
        self.observer.observe_aggregate(
            self._run_round(server_round), sampled, replies, self._errors(sampled), before,
            after, self._config(server_round), truths,
        )  # fmt: skip
        if after is None:
            return None, {}
        self.state = after
        return self._parameters(), {}

    def _run_round(self, server_round: int) -> int:
        return server_round + self.round_offset

    def _errors(self, sampled: list[int], default: str | None = None) -> dict[int, str]:
        by_partition = {self.partition_of[n]: r for n, r in self.grid.errors.items()}
        errors = {c: by_partition[c] for c in sampled if c in by_partition}
        if default:
            errors = {c: errors.get(c, default) for c in sampled}
        return errors

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters):
        sampled = self.pending.pop(server_round, None)
        if sampled is not None:  # SecAgg+ halted before aggregation: nothing was aggregated
            reason = "SecAgg+ halted this round (too few clients for its thresholds; see the log)"
            self.observer.observe_aggregate(
                self._run_round(server_round), sampled, {}, self._errors(sampled, reason),
                self.state, None, self._config(server_round), [],
            )  # fmt: skip
        metrics = self.evaluation(server_round, ArrayRecord(self.state))
        if metrics is None:
            return None
        metrics = {k: float(v) for k, v in dict(metrics).items()}
        return metrics.get("loss", float("nan")), metrics


def run_secure_aggregation(
    grid: Grid,
    defense: Any,
    *,
    initial: Mapping[str, torch.Tensor],
    sample_size: int,
    seed: int,
    round_offset: int,
    num_rounds: int,
    train_config: Mapping[str, Any],
    partition_of: Mapping[int, int],
    observer: Observer,
    evaluation: Callable[[int, ArrayRecord], Any],
    timeout: float | None = None,
    lr_schedule: str = "constant",
) -> None:
    """Run `num_rounds` rounds of FedAvg under Flower's SecAgg+ (parameters from `defense`,
    a `defenses.secagg.SecAggPlus`); the observer attacks each round's aggregate.

    The arguments are `run_server`'s: the round's lr follows `lr_schedule` (`fl.lr_schedule`)
    over `round_offset + num_rounds` rounds; `timeout` (`round_timeout`) bounds each of the
    protocol's four stages.
    """
    if sample_size < 2:
        raise ConfigError(
            f"defense=secagg needs at least 2 clients per round (a sum), got {sample_size}: "
            "raise fl.clients or fl.fraction"
        )
    max_weight = defense.max_weight
    if max_weight is None:  # every client reports N * K examples: weights of exactly 1
        max_weight = int(train_config["batch_size"]) * int(train_config["local_steps"])
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=defense.num_shares,
            reconstruction_threshold=defense.reconstruction_threshold,
            max_weight=float(max_weight),
            clipping_range=float(defense.clipping_range),
            quantization_range=int(defense.quantization_range),
            modulus_range=int(defense.modulus_range),
            timeout=timeout,
        )
    )
    run_id = int(getattr(grid.run, "run_id", 0) or getattr(grid, "run_id", 0) or 0)
    wrapped = _PartitionGrid(grid, partition_of, run_id)
    strategy = SecAggFedAvg(
        initial, sample_size, seed, round_offset, train_config, partition_of, wrapped, observer,
        evaluation, lr_schedule, round_offset + num_rounds,
    )  # fmt: skip
    context = LegacyContext(
        Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=num_rounds, round_timeout=timeout),
        strategy=strategy,
    )
    log.info(
        "secure aggregation (SecAgg+): %d clients per round, the observer sees only the aggregate",
        sample_size,
    )
    workflow(wrapped, context)
