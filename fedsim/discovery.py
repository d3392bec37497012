"""Partition discovery: which connected node holds which data partition."""

from __future__ import annotations

import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

__all__ = ["discover_partitions"]


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
