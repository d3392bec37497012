"""FedAvg with an explicit, seeded client sample (reproducible on every backend)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

__all__ = ["SampledFedAvg", "seeded_sample"]


def seeded_sample(node_ids: list[int], sample_size: int, seed: int, run_round: int) -> list[int]:
    """`sample_size` of `node_ids` (in their order), drawn by a generator seeded with
    (seed, run_round); all of them when `sample_size` covers the list."""
    if sample_size >= len(node_ids):
        return list(node_ids)
    rng = np.random.default_rng([seed, run_round])
    picks = np.sort(rng.choice(len(node_ids), sample_size, replace=False))
    return [node_ids[i] for i in picks]


class SampledFedAvg(FedAvg):
    """FedAvg whose train sample is drawn from the grid's node list (fedsim's grid lists nodes in
    partition order) by a generator seeded with (seed, the run's round): the same clients on
    every run and backend, and a resumed run draws what the uninterrupted one drew.

    Args:
        sample_size: clients per round.
        seed: the run's seed.
        round_offset: rounds a resumed run had already done (Flower counts from 1 again).
        lr_at: the run's round -> the learning rate sent that round (`config["lr"]`); None
            keeps the config's.
        kwargs: FedAvg's own arguments.
    """

    def __init__(
        self,
        sample_size: int,
        seed: int,
        round_offset: int = 0,
        lr_at: Callable[[int], float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(min_train_nodes=sample_size, **kwargs)
        self.sample_size, self.seed, self.round_offset = sample_size, seed, round_offset
        self.lr_at = lr_at

    def sample(self, node_ids: list[int], run_round: int) -> list[int]:
        """`sample_size` of `node_ids` (in their order), drawn by (seed, run_round)."""
        return seeded_sample(node_ids, self.sample_size, self.seed, run_round)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.sample(list(grid.get_node_ids()), server_round + self.round_offset)
        config["server-round"] = server_round
        if self.lr_at is not None:
            config["lr"] = float(self.lr_at(server_round + self.round_offset))
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)
