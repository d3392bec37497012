"""An in-process Grid: runs the same ClientApp for each node in this process, one after another.

For tests and debugging (about a second per small run, no Ray). A client exception becomes an
error reply, exactly as in Flower's simulation engine, so the run goes on.

With a `timeout` (`round_timeout`), each client runs in a daemon thread and the round waits for it
only until the round's deadline: a client still running then sends no reply (it times out, and
the server's observer writes its `timeout` row); its node is skipped while it is still busy. A stop
signal (`fedsim.run_control`) is honoured between clients, and a `progress` (a
`fedsim.progress.ReplyProgress`) hears after each client how many have replied.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsim.errors import client_error_reply
from fedsim.progress import ReplyProgress
from fedsim.run_control import raise_if_stopping

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
        self._busy: dict[int, threading.Thread] = {}  # node -> a client still running late
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

    def _prepare(self, message: Message) -> Message:
        message = copy.deepcopy(message)  # like a network: the client gets its own copy
        message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        return message

    def _run_client(self, message: Message) -> None:
        context = self.contexts[message.metadata.dst_node_id]
        try:
            reply = self.client_app(message, context)
        except Exception as exc:
            reply = client_error_reply(message, exc, limit=5)
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        self._replies[message.metadata.message_id] = reply

    def push_messages(
        self, messages: Iterable[Message], progress: ReplyProgress | None = None
    ) -> list[str]:
        ids = []
        for message in messages:
            raise_if_stopping()
            message = self._prepare(message)
            self._run_client(message)
            ids.append(message.metadata.message_id)
            if progress is not None:
                progress.update(len(ids))
        return ids

    def _push_within(
        self, messages: Iterable[Message], timeout: float, progress: ReplyProgress | None = None
    ) -> list[str]:
        """Run the clients one after another, each in a thread, until `timeout` seconds from now;
        a client not done by then gets no reply."""
        end = time.monotonic() + float(timeout)
        ids = []
        for message in messages:
            raise_if_stopping()
            message = self._prepare(message)
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            late = self._busy.get(node)
            if late is not None:
                late.join(max(0.0, end - time.monotonic()))
                if late.is_alive():
                    continue  # still on an earlier round's message: no reply this round
                del self._busy[node]
            if time.monotonic() >= end:
                continue
            thread = threading.Thread(target=self._run_client, args=(message,), daemon=True)
            thread.start()
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                self._busy[node] = thread
            elif progress is not None:
                progress.update(sum(i in self._replies for i in ids))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,
        progress: ReplyProgress | None = None,
    ):
        if timeout is None:
            return self.pull_messages(self.push_messages(messages, progress))
        return self.pull_messages(self._push_within(messages, timeout, progress))


def run_inline(server_app, client_app: ClientApp, num_nodes: int) -> None:
    """Run `server_app` against `num_nodes` in-process clients."""
    grid = InlineGrid(client_app, num_nodes)
    context = Context(
        run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={}
    )
    server_app(grid, context)
