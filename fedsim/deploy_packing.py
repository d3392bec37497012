"""A message's content as one or two byte strings on the deployment engine's wire.

Flower sends every record and every tensor of a message as its own object (an Array and each of its
chunks too), and every object is one HTTP request on each hop (ServerApp -> SuperLink -> SuperNode
-> ClientApp and back): 28 objects per message for the small CNN's 12 tensors. The SuperLink's
per-request cost, not the bytes, is then most of a small deployed round. Packed, a content is one
record holding two byte strings: `MODEL` (the model record in Flower's own protobuf serialisation)
and `REST` (every other record: configs, metrics, the audit truth). Up to `INLINE_BYTES` in all
they are the two values of one ConfigRecord, so a message is 3 objects (the Message, its
RecordDict, that record); a larger content is an ArrayRecord of two byte Arrays, chunked by Flower,
and the model Array is byte-identical for every client of a round, so Flower's content-addressed
store sends it once. Values, dtypes, shapes and the records' order come back exactly.

The deployed ServerApp packs what it sends and unpacks the replies (`PackedGrid`); the deployed
ClientApp unpacks what it receives and packs its reply only when the message came packed, so the
apps still talk to unpacked peers. Everything above the grid sees plain records.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import (
    array_record_from_proto,
    array_record_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.recorddict_pb2 import ArrayRecord as ArrayRecordProto
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

from fedsim.wrapped_grid import WrappedGrid

__all__ = [
    "PACKED",
    "PackedGrid",
    "is_packed",
    "pack_content",
    "pack_message",
    "unpack_content",
    "unpack_message",
]

PACKED = "fedsim-packed"  # the single record of a packed content
MODEL, REST = "model", "rest"  # its Arrays: the model record, every other record
KEY = "arrays"  # the model's record in a message (both ways)
INLINE_BYTES = 4 << 20  # packed contents up to this size travel as one ConfigRecord


def is_packed(content: RecordDict) -> bool:
    return list(content.keys()) == [PACKED]


def _serialised(content: RecordDict, cache: dict[int, bytes]) -> dict[str, bytes]:
    """MODEL (when the content has one) and REST as bytes; `cache`: models by record id."""
    parts: dict[str, bytes] = {}
    model = content.array_records.get(KEY)
    if model is not None:
        if id(model) not in cache:
            cache[id(model)] = array_record_to_proto(model).SerializeToString()
        parts[MODEL] = cache[id(model)]
    # The rest keeps the model's place (an empty record there), so the order comes back.
    rest = RecordDict({k: (ArrayRecord() if k == KEY else v) for k, v in content.items()})
    parts[REST] = recorddict_to_proto(rest).SerializeToString()
    return parts


def pack_content(content: RecordDict, cache: dict[int, bytes] | None = None) -> RecordDict:
    """`content` as one record of two byte strings (`cache`: serialised models by the id of
    their ArrayRecord, for contents that share one model)."""
    parts = _serialised(content, {} if cache is None else cache)
    if sum(len(b) for b in parts.values()) <= INLINE_BYTES:
        return RecordDict({PACKED: ConfigRecord(parts)})
    arrays = {k: Array(np.frombuffer(b, dtype=np.uint8)) for k, b in parts.items()}
    return RecordDict({PACKED: ArrayRecord(arrays)})


def unpack_content(content: RecordDict) -> RecordDict | None:
    """The plain content of a packed one; None when `content` is not packed."""
    if not is_packed(content):
        return None
    if PACKED in content.config_records:
        parts = {k: bytes(v) for k, v in content.config_records[PACKED].items()}
    else:
        parts = {k: a.numpy().tobytes() for k, a in content.array_records[PACKED].items()}
    rest = RecordDictProto()
    rest.ParseFromString(parts[REST])
    plain = recorddict_from_proto(rest)
    if MODEL in parts:
        model = ArrayRecordProto()
        model.ParseFromString(parts[MODEL])
        plain[KEY] = array_record_from_proto(model)
    return plain


def pack_message(message: Message, cache: dict[int, bytes] | None = None) -> None:
    """Pack the message's content in place (error replies and packed contents stay as they are)."""
    if message.has_error() or not message.has_content() or is_packed(message.content):
        return
    message.content = pack_content(message.content, cache)


def unpack_message(message: Message) -> bool:
    """Unpack the message's content in place; True when it was packed."""
    if message.has_error() or not message.has_content():
        return False
    plain = unpack_content(message.content)
    if plain is None:
        return False
    message.content = plain
    return True


def _packed(messages: Iterable[Message]) -> list[Message]:
    """The messages, each packed in place (one serialised model per shared model record)."""
    messages, cache = list(messages), {}
    for message in messages:
        pack_message(message, cache)
    return messages


def _unpacked(replies: Iterable[Message]) -> list[Message]:
    """The replies, each unpacked in place."""
    replies = list(replies)
    for reply in replies:
        unpack_message(reply)
    return replies


class PackedGrid(WrappedGrid):
    """A Grid that packs the content of each message it sends and unpacks each reply's. Its replies
    cross the network, so `ObservedGrid` looks for them first after `first_poll` seconds."""

    first_poll = 0.02

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(_packed(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return _unpacked(self._inner.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        return _unpacked(self._inner.send_and_receive(_packed(messages), timeout=timeout))
