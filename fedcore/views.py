"""The data an attack sees (`ServerView`) and the data only the scorer sees (`Truth`).

Sign convention: `ServerView.update[name] = after - before` for every parameter (the weights the
client sent minus the weights the server sent). For plain SGD with learning rate `lr`, the
pseudo-gradient `-update / lr` is the sum of the K local steps' gradients.

Under secure aggregation the server never holds one client's update, only the round's aggregate:
`ServerView.of_aggregate` builds the view of it (`client_id = AGGREGATE`, `update = new global -
old global`, the FedAvg mean of the round's updates), and `Truth.concatenate` joins the clients'
truths for scoring (the union of their labels, their counts summed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from fedcore.sgd import sgd_step
from fedcore.spec import ModelSpec

__all__ = ["AGGREGATE", "ServerView", "Truth", "frozen_tensors"]

# `ServerView.client_id` of a secure aggregate (the `client` column of its attack rows).
AGGREGATE = "aggregate"


def frozen_tensors(tensors: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """A read-only mapping of detached copies (attacks cannot alter what later attacks see)."""
    return MappingProxyType({k: v.detach().clone() for k, v in tensors.items()})


@dataclass(frozen=True)
class ServerView:
    """Everything an honest-but-curious server has about one client's reply (or, under secure
    aggregation, about the round's aggregate: see `of_aggregate`). No ground truth.

    Attributes:
        round: server round, starting at 1.
        client_id: the client's partition id (stable across runs, unlike Flower node ids), or
            `AGGREGATE` for a secure aggregate.
        global_model: the state dict the server sent (read-only copies).
        update: `after - before` for every parameter, same keys and shapes as `global_model`.
        train_config: the train config the server sent (lr, local_steps K, batch_size N, ...).
        num_examples: the number of examples the client reported (an aggregate: their sum).
        model: the architecture (`ModelSpec`).
        num_clients: how many clients' updates `update` combines: 1 for one client's reply; for
            a secure aggregate the clients whose updates entered the sum.
    """

    round: int
    client_id: int | str
    global_model: Mapping[str, torch.Tensor]
    update: Mapping[str, torch.Tensor]
    train_config: Mapping[str, Any]
    num_examples: int
    model: ModelSpec
    num_clients: int = 1

    @property
    def lr(self) -> float:
        return float(self.train_config["lr"])

    @property
    def local_steps(self) -> int:
        return int(self.train_config["local_steps"])

    @property
    def batch_size(self) -> int:
        return int(self.train_config["batch_size"])

    @property
    def is_aggregate(self) -> bool:
        """True for the view of a secure aggregate (`of_aggregate`)."""
        return self.client_id == AGGREGATE

    @property
    def total_samples(self) -> int:
        """N * K, the samples behind the update (for speech: utterances, not tokens); for an
        aggregate N * K * num_clients, the samples of all its clients."""
        return self.batch_size * self.local_steps * self.num_clients

    def last_layer_update(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last linear layer's `(weight, bias)` update (after - before), shapes (C, d), (C,)."""
        spec = self.model
        bias = self.update[spec.last_bias] if spec.last_bias else None
        return self.update[spec.last_weight], bias

    def pseudo_gradient(self, name: str) -> torch.Tensor:
        """`(before - after) / lr` for parameter `name`: the sum of the local steps' gradients."""
        return -self.update[name] / self.lr

    @classmethod
    def from_local_steps(
        cls,
        model: torch.nn.Module,
        step_losses: Sequence[Callable[[torch.nn.Module], torch.Tensor]],
        spec: ModelSpec,
        lr: float,
        batch_size: int,
        round: int = 1,
        client_id: int = 0,
    ) -> ServerView:
        """The view of a client that ran plain SGD (`p <- p - lr * grad`) on `model` in place,
        one step per loss function (each maps the model to the step's scalar loss).

        Builds attack inputs outside a simulation (notebooks, tests, other frameworks).
        """
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for loss_of in step_losses:
            sgd_step(model, loss_of(model), lr)
        after = model.state_dict()
        return cls(
            round=round,
            client_id=client_id,
            global_model=frozen_tensors(before),
            update=frozen_tensors({k: after[k] - before[k] for k in before}),
            train_config={"lr": lr, "local_steps": len(step_losses), "batch_size": batch_size},
            num_examples=batch_size * len(step_losses),
            model=spec,
        )

    @classmethod
    def of_aggregate(
        cls,
        round: int,
        old_global: Mapping[str, torch.Tensor],
        new_global: Mapping[str, torch.Tensor],
        train_config: Mapping[str, Any],
        num_examples: int,
        num_clients: int,
        model: ModelSpec,
    ) -> ServerView:
        """The view of a round's secure aggregate: all a server running secure aggregation has.

        `update = new_global - old_global` (after - before, as for one client): with FedAvg the
        mean of the round's client updates weighted by their example counts. Label attacks read
        it as one batch of `total_samples = N * K * num_clients` samples: with K = 1 the mean of
        the clients' batch-mean gradients is the gradient of their union batch.
        """
        return cls(
            round=round,
            client_id=AGGREGATE,
            global_model=frozen_tensors(old_global),
            update=frozen_tensors({k: new_global[k] - old_global[k] for k in old_global}),
            train_config=dict(train_config),
            num_examples=int(num_examples),
            model=model,
            num_clients=int(num_clients),
        )

    def global_module(self) -> torch.nn.Module:
        """A fresh module holding the global model that was sent (eval mode)."""
        module = self.model.build()
        module.load_state_dict(dict(self.global_model))
        return module.eval()


@dataclass(frozen=True)
class Truth:
    """A client's audit record, used only to score findings. Never passed to an attack.

    Attributes:
        labels: `(K, N)` int array, the hard label of every sample of every local step
            (for mixup: the label of the first image of each pair). For ASR: empty.
        soft_labels: `(K, N, C)` float array of the training targets (label smoothing, mixup);
            None when targets were one-hot.
        tokens: for ASR, per step, per utterance, the token ids of the target sequence
            (without padding); None for images.
        inputs: `(K, N, ...)` float array of the inputs, when the run asked to keep them for
            scoring reconstructions; None otherwise.
        features: `(K, N, d)` float array of the last layer's inputs when kept; None otherwise.
    """

    labels: np.ndarray
    soft_labels: np.ndarray | None = None
    tokens: tuple[tuple[tuple[int, ...], ...], ...] | None = None
    inputs: np.ndarray | None = None
    features: np.ndarray | None = None

    @classmethod
    def concatenate(cls, truths: Sequence[Truth]) -> Truth:
        """The truth of an aggregate: the clients' samples side by side, step by step (labels
        `(K, N * M)`, soft labels, inputs and features along the sample axis; speech tokens
        per step). Its `label_set` is the union of the clients' labels and its `label_counts`
        their sum. A field is kept only when every client has it; all clients ran the same K.
        """
        if not truths:
            raise ValueError("Truth.concatenate needs at least one truth")
        if len(truths) == 1:
            return truths[0]

        def joined(name: str) -> np.ndarray | None:
            values = [getattr(t, name) for t in truths]
            if any(v is None for v in values):
                return None
            arrays = [np.asarray(v) for v in values]
            return np.concatenate(arrays, axis=1 if arrays[0].ndim > 1 else 0)

        tokens = None
        if all(t.tokens is not None for t in truths):
            steps = zip(*(t.tokens for t in truths), strict=True)
            tokens = tuple(tuple(utt for part in step for utt in part) for step in steps)
        return cls(
            labels=joined("labels"),
            soft_labels=joined("soft_labels"),
            tokens=tokens,
            inputs=joined("inputs"),
            features=joined("features"),
        )

    def _flat_labels(self) -> list[int]:
        if self.tokens is not None:
            return [t for step in self.tokens for utt in step for t in utt]
        return np.asarray(self.labels).ravel().tolist()

    @property
    def label_set(self) -> tuple[int, ...]:
        """Sorted distinct labels over all steps (word-piece ids for ASR)."""
        return tuple(sorted(set(self._flat_labels())))

    @property
    def label_counts(self) -> dict[int, int]:
        """How many times each label occurs over all steps (tokens for ASR)."""
        values, counts = np.unique(np.asarray(self._flat_labels(), np.int64), return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}
