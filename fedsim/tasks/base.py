"""The task interface: data, model, local training and evaluation for one kind of problem.

A task is built once per process from the config (`fedsim.factory.build_task(cfg)`); the client app
calls `local_train` on its partition, the server calls `evaluate` on the global model. Tasks know
nothing of Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedcore import ModelSpec, Truth

__all__ = ["Task", "TrainConfig", "TrainResult"]


@dataclass(frozen=True)
class TrainConfig:
    """The train config the server sends each round (all plain scalars, as Flower sends them).

    Attributes:
        round: server round (1-based); seeds the client's batch sampling with `seed`.
        lr: SGD learning rate (no momentum, no weight decay).
        local_steps: K, the number of SGD steps per round.
        batch_size: N, the samples (or utterances) per step.
        label_smoothing: epsilon in [0, 1); 0 means one-hot targets.
        mixup_alpha: Beta(alpha, alpha) for mixup weights; 0 disables mixup.
        seed: the run's seed.
        keep_inputs: attach the raw inputs (and last-layer features) to the audit record, for
            scoring reconstructions.
    """

    round: int
    lr: float
    local_steps: int
    batch_size: int
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    seed: int = 0
    keep_inputs: bool = False

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainConfig:
        """From the config record the server sent (its round: `round_of(record)`)."""
        names = cls.__dataclass_fields__.keys()
        values = {k: record[k] for k in names if k in record and k != "round"}
        return cls(**values, round=cls.round_of(record))

    @staticmethod
    def round_of(record: Mapping[str, Any]) -> int:
        """The run's round of a server config record: Flower's "server-round" (1-based, per
        `strategy.start`) plus "round-offset" (the rounds a resumed run had already done)."""
        return int(record.get("server-round", 0)) + int(record.get("round-offset", 0))


@dataclass(frozen=True)
class TrainResult:
    """What local training produced.

    Attributes:
        num_examples: samples used (N * K).
        metrics: scalar training metrics (e.g. "train_loss", mean over the K steps).
        truth: the audit record (ground truth for scoring attacks; simulation only).
    """

    num_examples: int
    metrics: dict[str, float]
    truth: Truth


class Task(Protocol):
    """One kind of federated problem (image classification, speech recognition)."""

    name: str

    def model_spec(self) -> ModelSpec:
        """The architecture the server distributes (also builds fresh models)."""
        ...

    def local_train(
        self,
        model: torch.nn.Module,
        partition_id: int,
        num_partitions: int,
        config: TrainConfig,
        device: torch.device,
    ) -> TrainResult:
        """Train `model` in place for `config.local_steps` SGD steps of `config.batch_size`
        samples drawn from this client's partition (deterministic in seed, round and partition).
        """
        ...

    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Metrics of the global model on the test split: at least "loss", plus "accuracy"
        (image) or "wer" (speech)."""
        ...
