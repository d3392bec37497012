"""A long-lived ClientApp worker for one SuperNode (`--isolation process`): the warm path of
`fedsim-deploy supernode`.

Flower's own executor starts a fresh `flwr-clientapp` process for every message, which re-imports
torch and rebuilds the task each round (most of a deployed round's time). This worker takes the
same tasks from the SuperNode's Runtime API (`AcquireTask`) and runs fedsim's ClientApp in this
process, so imports, the task and its data are loaded once. It speaks Flower's protocol with
Flower's own helpers (`pull_task_input`, `push_message`, `push_task_output`), and the node's
`context.state` travels back to the SuperNode after each task as with `flwr-clientapp`. A run
whose ClientApp is not fedsim's gets an error reply naming the fix (`--cold`: Flower's executor).

The SuperNode wakes it through a pipe (`--wake-fd`) as each message arrives; without one it asks
for work every `--poll` seconds.

python -m fedsim.deploy_worker --runtime-api-address 127.0.0.1:9094 --insecure
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import threading
import time
import traceback
from pathlib import Path

__all__ = ["FEDSIM_CLIENTAPP", "main", "serve"]

FEDSIM_CLIENTAPP = "fedsim.client_app:app"
POLL = 0.1  # seconds between AcquireTask calls while idle

log = logging.getLogger("fedsim")


def _runtime_client(address: str, root_certificates: bytes | None, token: str | None = None):
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=root_certificates is None,
        root_certificates=root_certificates,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def _clientapp_of(fab_content: bytes) -> str:
    from flwr.common.config import get_fab_config

    return str(get_fab_config(fab_content)["tool"]["flwr"]["app"]["components"]["clientapp"])


def _error_reply(message, exc: BaseException):
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    reason += "\n\n" + "".join(traceback.format_exception(exc)).strip()
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
    )


def run_task(address: str, token: str, root_certificates: bytes | None) -> str:
    """Run one ClientApp task (the one `token` names) in this process; returns "ok" or
    "failed" (an error reply was sent, as `flwr-clientapp` sends one)."""
    from flwr.common.constant import SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    start = time.perf_counter()
    client = _runtime_client(address, root_certificates, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    status, details, outcome = SubStatus.FAILED, "ClientApp task failed", "failed"
    try:
        message, context, _run, fab = pull_task_input(client)
        component = _clientapp_of(fab.content)
        if component != FEDSIM_CLIENTAPP:
            raise RuntimeError(
                f"this SuperNode's worker runs only {FEDSIM_CLIENTAPP}, the run asks for "
                f"{component}: start the SuperNode with `fedsim-deploy supernode --cold`"
            )
        from fedsim.client_app import app

        reply = app(message=message, context=context)
        status, details, outcome = SubStatus.COMPLETED, "", "ok"
    except Exception as exc:  # the client's error becomes an error reply, as in Flower
        log.error("ClientApp raised %s: %s", type(exc).__name__, exc)
        details = f"{type(exc).__name__}: {exc}"
        if message is not None:
            reply = _error_reply(message, exc)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            heartbeat.stop()
            client.close()
    log.debug("task %s in %.2f s", outcome, time.perf_counter() - start)
    return outcome


def serve(
    address: str,
    root_certificates_path: str | None = None,
    parent_pid: int | None = None,
    poll: float = POLL,
    wake_fd: int | None = None,
) -> None:
    """Take ClientApp tasks from the SuperNode's Runtime API at `address` until the SuperNode
    (`parent_pid`) is gone; runs one task at a time, like the SuperNode itself. Between tasks it
    asks again every `poll` seconds, or as soon as `wake_fd` (a pipe the SuperNode writes a byte
    to for each message it stores) is readable."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    import fedsim.client_app  # noqa: F401  (torch and fedsim imported once, before any task)
    from fedsim.flower_waits import shorten

    shorten(poll)

    root = Path(root_certificates_path).read_bytes() if root_certificates_path else None
    acquirer = _runtime_client(address, root)
    log.info("fedsim ClientApp worker: taking tasks from the SuperNode at %s", address)
    while parent_pid is None or _alive(parent_pid):
        res = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        if res.HasField("task") and res.token:
            run_task(address, res.token, root)
            continue
        wake_fd = wait_for_wake(wake_fd, poll)


def wait_for_wake(wake_fd: int | None, timeout: float) -> int | None:
    """Wait up to `timeout` seconds for bytes on `wake_fd` (drained); returns the fd to wait on next
    time: None once the writer has closed it (from then on only the timeout wakes)."""
    if wake_fd is None:
        time.sleep(timeout)
        return None
    ready, _, _ = select.select([wake_fd], [], [], timeout)
    if ready and not os.read(wake_fd, 4096):  # end of file: the SuperNode is gone
        os.close(wake_fd)
        return None
    return wake_fd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(pid: int) -> None:
    """Exit when the SuperNode that started this worker is gone (checked every second)."""

    def watch() -> None:
        while _alive(pid):
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--poll", type=float, default=POLL, help="seconds between idle polls")
    parser.add_argument("--wake-fd", type=int, default=None, help="a pipe: a byte per message")
    args = parser.parse_args(argv)
    level = os.environ.get("FEDSIM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    if args.parent_pid is not None:
        _watch_parent(args.parent_pid)
    serve(
        args.runtime_api_address, args.root_certificates, args.parent_pid, args.poll, args.wake_fd
    )


if __name__ == "__main__":
    main()
