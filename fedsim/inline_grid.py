"""An in-process Grid: runs the same ClientApp for each node in this process, one after another.

For tests and debugging (about a second per small run, no Ray). A client exception becomes an
error reply, exactly as in Flower's simulation engine, so the run goes on.
"""

from __future__ import annotations

import copy
import traceback
import uuid
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InlineGrid", "run_inline"]


class InlineGrid(Grid):
    """`num_nodes` simulated nodes with partition ids 0..num_nodes-1 and persistent contexts."""

    def __init__(
        self, client_app: ClientApp, num_nodes: int, run_id: int = 1, run_config: dict | None = None
    ) -> None:
        self.client_app, self.run_id = client_app, run_id
        self._run = None
        self.contexts = {
            1000 + i: Context(
                run_id=run_id,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
            run_id,
            SUPERLINK_NODE_ID,
            1,
        )

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            message = copy.deepcopy(message)  # like a network: the client gets its own copy
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = self.client_app(message, context)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                    reply_to=message,
                )
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        return self.pull_messages(self.push_messages(messages))


def run_inline(server_app, client_app: ClientApp, num_nodes: int) -> None:
    """Run `server_app` against `num_nodes` in-process clients."""
    grid = InlineGrid(client_app, num_nodes)
    context = Context(
        run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={}
    )
    server_app(grid, context)
