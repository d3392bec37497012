"""Flower's fixed waits, shortened for fedsim's deployed processes.

Flower 1.41's deployment engine polls with fixed sleeps: a SuperNode sleeps 3 s whenever the
SuperLink has no message for it and 0.5 s while waiting for a reply, and every pull of a message's
objects that finds one not there yet backs off 1 s, then 2 s, ... (up to 10 s). On one host or a
LAN these waits, not training, made most of a deployed round (see the README's deployment
timings). `shorten(poll)` cuts them to `poll` seconds in the process that calls it (the SuperNode
of `fedsim-deploy supernode`, its ClientApp worker, the deployed ServerApp); nothing else changes.
The cost: an idle SuperNode asks the SuperLink for work every `poll` seconds instead of every 3 s.
"""

from __future__ import annotations

import time
from functools import partial
from types import ModuleType

__all__ = ["ShortSleeps", "shorten"]


class ShortSleeps:
    """The `time` module as a Flower module sees it, each `sleep` cut to `poll` seconds."""

    def __init__(self, poll: float) -> None:
        self.poll = poll

    def sleep(self, seconds: float) -> None:
        time.sleep(min(float(seconds), self.poll))

    def __getattr__(self, name: str):
        return getattr(time, name)


def _short_backoff(module: ModuleType, name: str, poll: float) -> None:
    fn = getattr(module, name, None)
    if fn is None or isinstance(fn, partial):
        return
    setattr(module, name, partial(fn, initial_backoff=poll, backoff_cap=max(poll, 0.5)))


def shorten(poll: float = 0.1) -> None:
    """Cut Flower's idle sleeps and object-pull backoffs to `poll` seconds in this process."""
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    start_client_internal.time = ShortSleeps(poll)
    _short_backoff(start_client_internal, "pull_objects", poll)
    _short_backoff(run_clientapp, "pull_and_inflate_object_from_tree", poll)
    _short_backoff(http_grid, "pull_objects", poll)
