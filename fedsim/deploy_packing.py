"""One Array per model on the deployment engine's wire.

Flower sends every tensor of an `ArrayRecord` as its own objects, and every object is one HTTP
request on each hop (ServerApp -> SuperLink -> SuperNode -> ClientApp and back): 28 objects per
message for the small CNN's 12 tensors, about 170 requests per client per round. Packed into one
byte Array (the state dict as `torch.save` writes it), a message is 6 objects. The deployed
ServerApp packs the model it sends and unpacks the replies (`PackedGrid`); the deployed ClientApp
unpacks what it receives and packs its reply only when the message came packed, so the apps
still talk to unpacked peers. Everything above the grid sees plain `ArrayRecord`s.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from fedsim.wrapped_grid import WrappedGrid

__all__ = ["PACKED", "PackedGrid", "pack", "pack_message", "unpack", "unpack_message"]

PACKED = "fedsim-packed"  # the single key of a packed ArrayRecord
KEY = "arrays"  # the record packed in a message (the model, both ways)


def pack(record: ArrayRecord) -> ArrayRecord:
    """`record` as one uint8 Array under `PACKED` (its state dict, names, dtypes and order kept)."""
    buffer = io.BytesIO()
    torch.save(record.to_torch_state_dict(), buffer)
    return ArrayRecord({PACKED: Array(np.frombuffer(buffer.getbuffer(), dtype=np.uint8))})


def unpack(record: ArrayRecord) -> ArrayRecord | None:
    """The plain record of a packed one; None when `record` is not packed."""
    if list(record.keys()) != [PACKED]:
        return None
    data = record[PACKED].numpy().tobytes()
    return ArrayRecord(torch.load(io.BytesIO(data), weights_only=True))


def pack_message(message: Message, cache: dict[int, ArrayRecord] | None = None) -> None:
    """Pack the message's model record in place (`cache`: records already packed, by id)."""
    if message.has_error() or KEY not in message.content.array_records:
        return
    record = message.content.array_records[KEY]
    if list(record.keys()) == [PACKED]:  # messages may share one content (Flower's strategies)
        return
    cache = {} if cache is None else cache
    if id(record) not in cache:
        cache[id(record)] = pack(record)
    message.content[KEY] = cache[id(record)]


def unpack_message(message: Message) -> bool:
    """Unpack the message's model record in place; True when it was packed."""
    if message.has_error() or KEY not in message.content.array_records:
        return False
    plain = unpack(message.content.array_records[KEY])
    if plain is None:
        return False
    message.content[KEY] = plain
    return True


class PackedGrid(WrappedGrid):
    """A Grid that packs the model of each message it sends and unpacks each reply's."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages, cache = list(messages), {}
        for message in messages:
            pack_message(message, cache)
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._inner.pull_messages(message_ids))
        for reply in replies:
            unpack_message(reply)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages, cache = list(messages), {}
        for message in messages:
            pack_message(message, cache)
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            unpack_message(reply)
        return replies
