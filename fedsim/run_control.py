"""Stopping a run cleanly on the first Ctrl-C (SIGINT) or SIGTERM.

`stop_on_signals(run_dir, rounds)` installs handlers in the main thread for the run. The first
signal only records itself: the server loop checks `raise_if_stopping()` before and while it waits
for each round's replies (`ObservedGrid`) and between clients (`InlineGrid`), so the run ends at
the next such point with every finished round's rows and checkpoint on disk (they are written at
the end of each round). `run_experiment` then raises `RunStopped`; the command prints one line on
how to resume and exits 128 + the signal (130 for SIGINT, 143 for SIGTERM). Should the run not end
within `GRACE` seconds (a client stuck in training, Ray not answering), a watchdog shuts Ray down
and ends the process with the same code; a second signal ends it at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["GRACE", "RunStopped", "raise_if_stopping", "resume_hint", "stop_on_signals"]

log = logging.getLogger("fedsim")

GRACE = 7.0  # seconds between the first signal and the hard exit
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOP = threading.Event()
_STATE: dict = {"signum": None, "hint": "", "hinted": False}
_LOCK = threading.Lock()


class RunStopped(Exception):
    """The run was stopped by a signal; `code` is the exit code (128 + the signal)."""

    def __init__(self, signum: int, hint: str = "") -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.code, self.hint = signum, 128 + signum, hint


def resume_hint(run_dir: str | Path, rounds: int, signum: int) -> str:
    name = signal.Signals(signum).name
    return (
        f"fedsim: stopped by {name}; the finished rounds are kept in {run_dir}. "
        f"To continue: fedsim resume={run_dir} fl.rounds={rounds}"
    )


def print_hint_once(hint: str) -> None:
    """Print the resume line (once per run, whoever gets there first)."""
    with _LOCK:
        if _STATE["hinted"]:
            return
        _STATE["hinted"] = True
    print(hint, file=sys.stderr, flush=True)


def stopping() -> bool:
    return _STOP.is_set()


def raise_if_stopping() -> None:
    """Raise `RunStopped` once a stop signal has arrived (called by the server loop)."""
    if _STOP.is_set():
        raise RunStopped(_STATE["signum"], _STATE["hint"])


def _shutdown_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        with contextlib.suppress(Exception):  # exiting anyway
            ray.shutdown()


def _watchdog(signum: int, grace: float) -> None:
    log.warning(
        "%s: stopping at the next round boundary (a second signal stops at once)",
        signal.Signals(signum).name,
    )
    if _DONE.wait(grace):
        return
    print_hint_once(_STATE["hint"])
    threading.Thread(target=_shutdown_ray, daemon=True).start()
    _DONE.wait(2.0)
    os._exit(128 + signum)


_DONE = threading.Event()  # set when the run has ended (the watchdog stands down)


def _handler(signum: int, frame) -> None:
    if _STOP.is_set():  # the second signal: now
        print_hint_once(_STATE["hint"])
        os._exit(128 + signum)
    _STATE["signum"] = signum
    _STATE["hint"] = resume_hint(_STATE["run_dir"], _STATE["rounds"], signum)
    _STOP.set()
    threading.Thread(target=_watchdog, args=(signum, _STATE["grace"]), daemon=True).start()


def install_handlers() -> None:
    """(Re)install the handlers: Ray's `ray.init` replaces the SIGTERM handler of the driver."""
    if threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            signal.signal(signum, _handler)


@contextmanager
def stop_on_signals(run_dir: str | Path, rounds: int, grace: float = GRACE) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM stop the run as described in the module docstring.
    Outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP.clear()
    _DONE.clear()
    _STATE.update(signum=None, hint="", hinted=False, run_dir=run_dir, rounds=rounds, grace=grace)
    old = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    install_handlers()
    try:
        yield
        raise_if_stopping()  # a signal during the last round: the run is complete, say so anyway
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def finished() -> None:
    """The command has printed its last line: the watchdog must not fire any more."""
    _DONE.set()
