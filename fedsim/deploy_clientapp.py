"""fedsim's ClientApp run inside the SuperNode's own process: the warm path of
`fedsim-deploy supernode`.

Flower's own executor starts a fresh `flwr-clientapp` process for every message, which re-imports
torch and rebuilds the task each round (most of a deployed round's time); even a long-lived
ClientApp process costs ~12 local HTTP requests per message on the SuperNode's Runtime API
(acquire, task input, message, its objects, confirm, reply, its objects, task output). Here the
SuperNode's loop, right after it has pulled and stored a message, runs the task itself on its
own NodeState: the same steps as Flower's Runtime API handlers (claim the task, activate it, read
the message from the object store, run the ClientApp, store the reply and the node's context,
finish the task), without the requests. The loop then pushes the reply at once.

The client's exceptions become error replies, as with `flwr-clientapp` (exception type and message
first, then the traceback); the task's heartbeat is acknowledged while the ClientApp trains
(Flower's sender, ~every 20 s), so a long round is not taken for a crashed one. A run whose
ClientApp is not fedsim's gets an error reply naming the fix (`--cold`: Flower's executor). What the
separate process gave and this does not: a client that crashes the interpreter (a segfault, the OOM
killer) takes its SuperNode with it; the SuperLink then treats the node as gone (see the README).
"""

from __future__ import annotations

import logging
import time

__all__ = ["FEDSIM_CLIENTAPP", "run_pending_tasks"]

FEDSIM_CLIENTAPP = "fedsim.client_app:app"

log = logging.getLogger("fedsim")


def _clientapp_of(fab_content: bytes) -> str:
    from flwr.common.config import get_fab_config

    return str(get_fab_config(fab_content)["tool"]["flwr"]["app"]["components"]["clientapp"])


def _take_message(state, run_id: int):
    """The run's stored message, inflated from the object store (whose copy is then released,
    as `ConfirmMessageReceived` releases it for a ClientApp process)."""
    from flwr.app import Message
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    stored = state.get_messages_legacy(run_ids=[run_id], is_reply=False, limit=1)
    if not stored:
        raise RuntimeError(f"no message stored for run {run_id}")
    message_id = stored[0].metadata.message_id
    state.record_message_processing_start(message_id=message_id)
    store = state.object_store
    tree = store.get_object_tree(message_id)
    contents = {t.object_id: store.get(t.object_id) for t in iterate_object_tree(tree)}
    missing = [oid for oid, content in contents.items() if not content]
    if missing:
        raise RuntimeError(f"message {message_id} lacks {len(missing)} of its objects")
    store.delete(message_id)
    message = inflate_object_from_contents(message_id, contents)
    if not isinstance(message, Message):
        raise TypeError(f"stored object {message_id} is a {type(message).__name__}")
    message.metadata.__dict__["_message_id"] = message_id
    return message


def _run_task(state, task) -> str:
    """Run one claimed ClientApp task; returns "ok" or "failed" (an error reply was stored)."""
    from flwr.common.constant import SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supernode.start_client_internal import _insert_message

    from fedsim.errors import client_error_reply

    start = time.perf_counter()
    # Flower fails a running task whose heartbeat stops for 60 s; a ClientApp process sends one
    # every ~20 s with this sender, here acknowledged in the state directly.
    heartbeat = HeartbeatSender(lambda: state.acknowledge_task_heartbeat(task.task_id))
    heartbeat.start()
    message = reply = context = run = None
    status, details, outcome = SubStatus.FAILED, "ClientApp task failed", "failed"
    try:
        run = state.get_run(task.run_id)
        if run is None:
            raise RuntimeError(f"run {task.run_id} is not in the SuperNode's state")
        context = state.get_run_series_context(run.series_id)
        fab = state.get_fab(run.fab_hash)
        if context is None or fab is None:
            raise RuntimeError(f"run {task.run_id}: the SuperNode has no context or app for it")
        if not state.activate_task(task_id=task.task_id):
            raise RuntimeError(f"task {task.task_id} of run {task.run_id} could not start")
        message = _take_message(state, task.run_id)
        component = _clientapp_of(fab.content)
        if component != FEDSIM_CLIENTAPP:
            raise RuntimeError(
                f"this SuperNode runs only {FEDSIM_CLIENTAPP}, the run asks for {component}: "
                "start the SuperNode with `fedsim-deploy supernode --cold`"
            )
        from fedsim.client_app import app

        reply = app(message=message, context=context)
        status, details, outcome = SubStatus.COMPLETED, "", "ok"
    except Exception as exc:  # the client's error becomes an error reply, as in Flower
        log.error("ClientApp raised %s: %s", type(exc).__name__, exc)
        details = f"{type(exc).__name__}: {exc}"
        if message is not None:
            reply = client_error_reply(message, exc)
    finally:
        heartbeat.stop()
        if reply is not None and message is not None:
            state.record_message_processing_end(message_id=message.metadata.message_id)
            _insert_message(reply, state, state.object_store)
        state.finish_task(task_id=task.task_id, sub_status=status, details=details)
        if context is not None and run is not None:
            state.set_run_series_context(run.series_id, context)
    log.debug("task %s in %.2f s", outcome, time.perf_counter() - start)
    return outcome


def run_pending_tasks(state) -> list[str]:
    """Claim and run, one after another, every pending ClientApp task in a SuperNode's
    `state` (Flower's NodeState, with its ObjectStore); returns each task's outcome
    ("ok" or "failed"). Called by the SuperNode's loop after it has stored a message."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.servicer.runtime.runtime_handlers import acquire_task

    outcomes = []
    while True:
        claimed = acquire_task(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]), state
        )
        if not claimed.HasField("task"):
            return outcomes
        try:
            outcomes.append(_run_task(state, claimed.task))
        except Exception:  # Flower's own bookkeeping failed: keep the SuperNode's loop alive
            log.exception("task %s of run %s", claimed.task.task_id, claimed.task.run_id)
            outcomes.append("failed")
