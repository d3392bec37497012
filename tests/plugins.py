"""Attack and defense plugins used by the tests (instantiated from Hydra `_target_`s)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import torch

from fedcore import Finding, ServerView

SEEN: list[ServerView] = []
FINDINGS: list[dict] = []  # the `findings` argument of each Recorder call (a copy)


class Recorder:
    """Keeps every view it is shown (in-process runs only)."""

    name = "recorder"

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        SEEN.append(view)
        FINDINGS.append(dict(findings))
        return Finding(
            diagnostics={
                "update_norm": float(sum(v.float().norm() ** 2 for v in view.update.values()))
            }
        )


class Raising:
    name = "raising"

    def __call__(self, view, findings):
        raise RuntimeError("boom from the test attack")


class Sleeping:
    name = "sleeping"

    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds

    def __call__(self, view, findings):
        time.sleep(self.seconds)
        return Finding()


class KillAtRound:
    """Kills the whole process (no clean-up, like `kill -9`) when round `round` starts attacks."""

    name = "killer"

    def __init__(self, round: int = 3) -> None:
        self.round = round

    def __call__(self, view, findings):
        if view.round >= self.round:
            os._exit(9)
        return Finding()


class FailOnClient:
    """A defense that raises on one client, or on every client when `client` is None."""

    name = "fail_on_client"

    def __init__(self, client: int | None = 1) -> None:
        self.client = client

    def __call__(self, update, state):
        if self.client is None or state["partition_id"] == self.client:
            raise RuntimeError(f"client {self.client} crashed on purpose")
        return update


class NaNOnClient:
    """A defense that sends NaN from one client."""

    name = "nan_on_client"

    def __init__(self, client: int = 0) -> None:
        self.client = client

    def __call__(self, update, state):
        if state["partition_id"] == self.client:
            return {k: torch.full_like(v, float("nan")) for k, v in update.items()}
        return update


class CountingScale:
    """A stateful defense: a client's k-th update (k counted in its state) is sent scaled by 1/k,
    so a resumed run equals an uninterrupted one only if the counter survives the restart."""

    name = "counting_scale"

    def __call__(self, update, state):
        state["calls"] = int(state.get("calls", 0)) + 1
        return {k: v / state["calls"] for k, v in update.items()}


class SleepOnClient:
    """A defense that sleeps `seconds` on one client (a stuck client, for round timeouts)."""

    name = "sleep_on_client"

    def __init__(self, client: int = 1, seconds: float = 30.0) -> None:
        self.client, self.seconds = client, seconds

    def __call__(self, update, state):
        if state["partition_id"] == self.client:
            time.sleep(self.seconds)
        return update


class KillableThenStuck:
    """Ray faults for the fault matrix. Client `killed` writes its process id (the Ray worker's)
    to `pid_file` the first time it trains and then sleeps `seconds`, for the test to kill that
    process mid-round; client `stuck` sleeps `seconds` from round `stuck_round` on (stuck past the
    round's timeout)."""

    name = "killable_then_stuck"

    def __init__(
        self,
        pid_file: str,
        killed: int = 1,
        stuck: int = 2,
        stuck_round: int = 2,
        seconds: float = 300.0,
    ) -> None:
        self.pid_file, self.killed, self.stuck = pid_file, killed, stuck
        self.stuck_round, self.seconds = stuck_round, seconds

    def __call__(self, update, state):
        client = state["partition_id"]
        if client == self.killed and not os.path.exists(self.pid_file):
            with open(self.pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(self.pid_file + ".tmp", self.pid_file)
            time.sleep(self.seconds)
        if client == self.stuck and state["round"] >= self.stuck_round:
            time.sleep(self.seconds)
        return update
