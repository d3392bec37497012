"""Flower's fixed waits, shortened for fedsim's deployed processes.

Flower 1.41's deployment engine polls with fixed sleeps: a SuperNode sleeps 3 s whenever the
SuperLink has no message for it and 0.5 s at a time while it waits for its ClientApp's reply (in
its own memory), and every pull of a message's objects that finds one not there yet backs off 1 s,
then 2 s, ... (up to 10 s). On one host or a LAN these waits, not training, made most of a deployed
round (see the README's deployment timings). In the process that calls them:

- `shorten(poll)` cuts the object-pull backoffs to `poll` seconds (SuperNode, deployed
  ServerApp);
- `shorten_supernode(poll, on_message)` also replaces the SuperNode loop's sleeps: a wait on its
  own memory polls every `LOCAL` seconds, and an idle wait for the SuperLink is a `Backoff` from
  `FIRST` seconds doubling to `poll`, restarted whenever a message came or a reply went (the next
  one is then likely soon); `on_message(state)` is called each time a message has been stored,
  with the SuperNode's NodeState (where the warm SuperNode runs the ClientApp in-process).

The cost: an idle SuperNode asks the SuperLink for work every `poll` seconds instead of every 3 s.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

__all__ = ["FIRST", "LOCAL", "Backoff", "ShortSleeps", "shorten", "shorten_supernode"]

FIRST = 0.02  # seconds: the first idle wait after activity
LOCAL = 0.005  # seconds between checks of a process's own memory (a reply, an object's content)
IDLE_FROM = 1.0  # Flower's sleeps of at least this many seconds are its idle SuperLink waits


class Backoff:
    """Waits of `first` seconds, doubling up to `cap`, until `reset()` starts them over."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = min(first, cap), cap
        self._next = self.first

    def next(self) -> float:
        """The next wait in seconds (and advance)."""
        wait, self._next = self._next, min(self._next * 2.0, self.cap)
        return wait

    def reset(self) -> None:
        self._next = self.first

    def sleep(self) -> None:
        time.sleep(self.next())


class ShortSleeps:
    """The `time` module as Flower's SuperNode loop sees it: `sleep(s)` with s >= `IDLE_FROM` (the
    idle wait for the SuperLink) takes the `idle` backoff's next wait, a shorter one (a wait on the
    node's own memory) `local` seconds."""

    def __init__(self, poll: float, local: float = LOCAL, first: float = FIRST) -> None:
        self.local = min(local, poll)
        self.idle = Backoff(first, poll)

    def sleep(self, seconds: float) -> None:
        if float(seconds) >= IDLE_FROM:
            self.idle.sleep()
        else:
            time.sleep(min(float(seconds), self.local))

    def __getattr__(self, name: str):
        return getattr(time, name)


def _short_backoff(module: ModuleType, name: str, poll: float) -> None:
    fn = getattr(module, name, None)
    if fn is None or isinstance(fn, partial):
        return
    setattr(module, name, partial(fn, initial_backoff=poll, backoff_cap=max(poll, 0.5)))


def shorten(poll: float = 0.1) -> None:
    """Cut Flower's object-pull backoffs to `poll` seconds in this process."""
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    _short_backoff(start_client_internal, "pull_objects", poll)
    _short_backoff(run_clientapp, "pull_and_inflate_object_from_tree", poll)
    _short_backoff(http_grid, "pull_objects", poll)


def shorten_supernode(poll: float = 0.1, on_message: Callable[[Any], object] | None = None) -> None:
    """`shorten(poll)`, and the SuperNode loop's sleeps replaced (see the module docstring);
    `on_message(state)` runs in the loop after each message the SuperNode has
    pulled and stored, before the loop pushes the replies."""
    from flwr.supernode import start_client_internal as loop

    shorten(poll)
    pull, push = loop._pull_and_store_message, loop._push_messages
    if getattr(pull, "fedsim_wrapped", False):  # once per process: the wrappers hold `sleeps`
        return
    sleeps = ShortSleeps(poll)
    loop.time = sleeps

    @functools.wraps(pull)
    def pull_and_store(*args, **kwargs):
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            sleeps.idle.reset()
            if on_message is not None:
                on_message(kwargs["state"])
        return run_id

    @functools.wraps(push)
    def push_replies(*args, **kwargs):
        try:
            return push(*args, **kwargs)
        finally:
            sleeps.idle.reset()

    pull_and_store.fedsim_wrapped = True
    loop._pull_and_store_message, loop._push_messages = pull_and_store, push_replies
