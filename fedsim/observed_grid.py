"""A Grid wrapper that shows every train reply to the `Observer` before the strategy aggregates.

It composes with any strategy (FedAvg, FedProx, Krum, ...): the strategy calls
`send_and_receive`; the wrapper records the global model and config sent to each node, lets the
observer attack the replies, and returns only the replies that may be aggregated. It changes
nothing it is given. Node ids are listed in partition order, so a seeded sampler draws the same
clients on every run.

It also waits for the replies itself (push, then pull until all replies are in or `timeout` has
passed: every `IN_PROCESS_POLL` seconds from Flower's in-process engine, where a pull costs ~0.1 ms;
for a grid whose replies cross the network and which says so with a `first_poll` attribute, such as
the deployed `PackedGrid`, first after `first_poll` seconds, doubling up to `POLL` and starting over
after each reply), so that a stop signal (`fedsim.run_control`) ends the wait at once, and logs
how many replies have arrived every 10 s of a long round (`fedsim.progress`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedsim.flower_waits import Backoff
from fedsim.inline_grid import InlineGrid
from fedsim.observer import Observer
from fedsim.progress import ReplyProgress
from fedsim.run_control import raise_if_stopping
from fedsim.tasks.base import TrainConfig
from fedsim.wrapped_grid import WrappedGrid

__all__ = ["ObservedGrid"]

IN_PROCESS_POLL = 0.02  # seconds between pulls from Flower's in-process engine (~0.1 ms a pull)
POLL = 0.1  # the longest wait between pulls over the network (each pull is an HTTP request)


class ObservedGrid(WrappedGrid):
    def __init__(self, inner: Grid, observer: Observer, partition_of: Mapping[int, int]) -> None:
        super().__init__(inner)
        self.observer, self.partition_of = observer, dict(partition_of)

    def get_node_ids(self) -> list[int]:
        """Known nodes, sorted by partition id (the order sampling draws from)."""
        nodes = [n for n in self._inner.get_node_ids() if n in self.partition_of]
        return sorted(nodes, key=self.partition_of.__getitem__)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        sent, round_ = {}, 0
        for m in messages:
            if m.metadata.message_type.split(".")[0] == MessageType.TRAIN:
                config = dict(m.content["config"])
                sent[m.metadata.dst_node_id] = (m.content["arrays"], config)
                round_ = TrainConfig.round_of(config)
        replies = self._send_and_wait(messages, timeout, round_)
        if not sent:
            return replies
        train = [r for r in replies if r.metadata.src_node_id in sent]
        others = [r for r in replies if r.metadata.src_node_id not in sent]
        return self.observer.observe(round_, sent, train, self.partition_of) + others

    def _send_and_wait(
        self, messages: list[Message], timeout: float | None, round_: int = 0
    ) -> list[Message]:
        raise_if_stopping()
        progress = ReplyProgress(round_, len(messages))
        if isinstance(self._inner, InlineGrid):  # runs the clients itself, within the timeout
            return list(self._inner.send_and_receive(messages, timeout=timeout, progress=progress))
        waiting = set(self._inner.push_messages(messages))
        end = None if timeout is None else time.monotonic() + float(timeout)
        replies: list[Message] = []
        first = getattr(self._inner, "first_poll", None)
        wait = Backoff(IN_PROCESS_POLL, IN_PROCESS_POLL) if first is None else Backoff(first, POLL)
        while waiting:
            raise_if_stopping()
            got = list(self._inner.pull_messages(waiting))
            if got:  # the others often follow soon
                wait.reset()
            replies += got
            waiting -= {r.metadata.reply_to_message_id for r in got}
            progress.update(len(replies))
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            wait.sleep()
        return replies
