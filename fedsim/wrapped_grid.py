"""`WrappedGrid`: a Flower Grid that hands every call to an inner Grid; subclasses override
the calls they change (`ObservedGrid` shows replies to the observer, `PackedGrid` packs models)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["WrappedGrid"]


class WrappedGrid(Grid):
    """Delegates every Grid call to `inner`."""

    def __init__(self, inner: Grid) -> None:
        self._inner = inner

    def set_run(self, run) -> None:
        self._inner.set_run(run)

    @property
    def run(self):
        return self._inner.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl=None
    ):
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        return self._inner.send_and_receive(messages, timeout=timeout)
