"""The fault matrix (issue 14, README "Fault matrix"): for each fault, the run goes on or stops
cleanly, and no row of a finished round is lost.

Rows already tested elsewhere are cited in the README table, not repeated here: a client that
raises and an attack that raises or hangs
(`test_simulation.test_failing_client_and_failing_attack`), a NaN update
(`test_simulation.test_non_finite_update_is_flagged_and_not_aggregated`), a stuck client on the
inline backend (`test_run_control.test_a_stuck_client_times_out_...`), SIGINT and
SIGTERM (`test_run_control`). This module adds the rest: updates that do not fit the model, the
driver killed by SIGKILL and resumed, and the Ray-specific faults (a worker process killed
mid-round, a client stuck past the round's timeout at the end of the run).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord

from fedsim.inline_grid import InlineGrid
from fedsim.logs import load
from fedsim.ray_engine import STRAGGLER_GRACE
from tests.test_run_control import SLOW, _rounds_logged, _start
from tests.test_simulation import FAST_CLI


def _one_row_per_client_and_round(logs, rounds: int, clients: int) -> None:
    """Every (round, client) of rounds 1..rounds has exactly one client row, and the round table
    has rounds 0..rounds once each: nothing lost, nothing written twice."""
    assert list(logs.rounds["round"]) == list(range(rounds + 1))
    pairs = logs.clients.groupby(["round", "client"]).size()
    assert (pairs == 1).all(), pairs[pairs != 1]
    assert len(pairs) == rounds * clients


# --- a client sends a model that does not fit, a non-finite one, or a zero weight ---------

# Partition -> how its reply is corrupted on the way to the server (after the client trained).
CORRUPT = {
    1: "wrong_shape",  # a weight matrix with a row missing
    2: "missing_tensor",  # one tensor left out
    3: "inf",  # a single +inf in one tensor (the NaN case is in test_simulation)
    4: "zero_weight",  # num-examples 0: FedAvg's weights would divide by zero
}


def _corrupt(reply, how: str) -> None:
    """Corrupt a train reply in place (after the client trained, before the server reads it)."""
    if how == "zero_weight":
        next(iter(reply.content.metric_records.values()))["num-examples"] = 0
        return
    state = reply.content["arrays"].to_torch_state_dict()
    name = next(k for k, v in state.items() if v.ndim == 2)
    if how == "wrong_shape":
        state[name] = state[name][:-1]
    elif how == "missing_tensor":
        del state[name]
    else:
        state[name] = state[name].clone()
        state[name].view(-1)[0] = float("inf")
    reply.content["arrays"] = ArrayRecord(state)


def test_updates_that_do_not_fit_the_model_are_rejected_and_the_rest_aggregated(
    run_fedsim, monkeypatch
):
    run_client = InlineGrid._run_client

    def run_and_corrupt(self, message):
        run_client(self, message)
        how = CORRUPT.get(message.metadata.dst_node_id - 1000)
        reply = self._replies[message.metadata.message_id]
        if how and not reply.has_error() and "arrays" in reply.content:
            _corrupt(reply, how)

    monkeypatch.setattr(InlineGrid, "_run_client", run_and_corrupt)
    recorder = "+attack.recorder._target_=tests.plugins.Recorder"
    logs = run_fedsim("fl.clients=5", "fl.rounds=2", recorder, name="corrupt")
    _one_row_per_client_and_round(logs, rounds=2, clients=5)
    by_client = logs.clients.groupby("client")
    status = by_client["status"].agg(set).to_dict()
    assert status == {0: {"ok"}, 1: {"error"}, 2: {"error"}, 3: {"non_finite"}, 4: {"error"}}
    message = by_client["message"].first()
    assert (
        message[1].startswith("ValueError: wrong shapes in 1 tensors") and "expected" in message[1]
    )
    assert message[2].startswith("ValueError: the reply's model has other tensors")
    assert "not aggregated" in message[3]
    assert message[4].startswith("ValueError: num-examples (the update's weight in the average)")
    assert list(logs.rounds["ok"]) == [0, 1, 1] and list(logs.rounds["failures"]) == [0, 3, 3]
    assert list(logs.rounds["non_finite"]) == [0, 1, 1]
    # Attacks see only the usable update; the global model stays finite and keeps its shapes.
    assert set(logs.attacks["client"]) == {0}
    assert np.isfinite(logs.rounds["loss"]).all()


def test_updates_that_do_not_fit_leave_the_global_model_intact(tmp_path, monkeypatch):
    """With every client's reply corrupted the round aggregates nothing: the checkpoint is the
    initial model, finite and of the right shapes."""
    from fedsim.config import compose_config
    from fedsim.simulation import run_experiment
    from tests.conftest import FAST

    run_client = InlineGrid._run_client

    def run_and_corrupt(self, message):
        run_client(self, message)
        reply = self._replies[message.metadata.message_id]
        if "arrays" in reply.content:  # a train reply
            _corrupt(reply, CORRUPT[message.metadata.dst_node_id - 1000 + 1])

    monkeypatch.setattr(InlineGrid, "_run_client", run_and_corrupt)
    out = run_experiment(compose_config([*FAST, "fl.clients=4", "fl.rounds=1"]), tmp_path / "r")
    logs = load(out)
    assert list(logs.rounds["ok"]) == [0, 0]
    initial = torch.load(out / "checkpoints" / "latest.pt")["model"]
    assert all(torch.isfinite(v).all() for v in initial.values() if v.is_floating_point())
    assert logs.rounds["loss"].iloc[0] == logs.rounds["loss"].iloc[1]  # nothing was applied


# --- the driver killed (SIGKILL) mid-round, then resumed ------------------------------------


def test_driver_sigkilled_mid_round_then_resumed_keeps_every_finished_row(tmp_path):
    out = tmp_path / "killed"
    proc = _start(*FAST_CLI, "fl.rounds=4", *SLOW, f"output={out}", cwd=tmp_path)
    deadline = time.monotonic() + 240
    while _rounds_logged(out) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "round 2 never logged"
        time.sleep(0.05)
    time.sleep(0.3)  # into round 3 (each round takes > 1 s: two clients x a 0.5 s attack)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    kept = load(out)
    done = int(torch.load(out / "checkpoints" / "latest.pt")["round"])
    assert done >= 2 and list(kept.rounds["round"]) == list(range(done + 1))
    assert sorted(set(kept.clients["round"])) == list(range(1, done + 1))

    # Resumed in this process (the command's resume path is tested in test_run_control).
    from fedsim.config import compose_config
    from fedsim.simulation import run_experiment

    run_experiment(compose_config(["fl.rounds=4", f"resume={out}"]), out)
    logs = load(out)
    _one_row_per_client_and_round(logs, rounds=4, clients=2)
    per_attack = logs.attacks.groupby(["round", "client", "attack"]).size()
    assert (per_attack == 1).all() and len(per_attack) == 4 * 2
    # The rows of the finished rounds are the ones written before the kill.
    before = kept.clients.sort_values(["round", "client"]).reset_index(drop=True)
    after = logs.clients[logs.clients["round"] <= done].sort_values(["round", "client"])
    cols = ["round", "client", "status", "train_loss"]
    pd.testing.assert_frame_equal(before[cols], after[cols].reset_index(drop=True))


# --- Ray: a worker process killed mid-round; a client stuck at the end of the run -----------


@pytest.mark.ray
def test_ray_worker_killed_mid_round_and_a_stuck_client_at_the_end(tmp_path):
    """Round 1: client 1's Ray worker is killed by its pid while it trains -> an `error` row
    naming the dead worker. Round 2: client 1 runs again (on a fresh worker: a job handed to the
    dead one would fail at once with another `error` row) and is stuck past `round_timeout` ->
    a `timeout` row; the finished run then ends within STRAGGLER_GRACE (+ Ray's shutdown)
    instead of waiting for the stuck client."""
    out, pid_file = tmp_path / "ray", tmp_path / "worker.pid"
    args = [a for a in FAST_CLI if not a.startswith("backend")]
    proc = _start(*args, "backend=ray", "backend.num_cpus=2", "fl.rounds=2", "round_timeout=20",
                  "defense._target_=tests.plugins.KillableThenStuck", "+defense.stuck=1",
                  f"+defense.pid_file={pid_file}", f"output={out}", cwd=tmp_path)  # fmt: skip
    deadline = time.monotonic() + 300
    while not pid_file.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "client 1 never started training"
        time.sleep(0.05)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    while _rounds_logged(out) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "round 2 never logged"
        time.sleep(0.1)
    last_round = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except Exception:
        proc.kill()
        raise
    ended_after = time.monotonic() - last_round
    assert proc.returncode == 0, stderr[-3000:]
    assert ended_after < STRAGGLER_GRACE + 15, ended_after  # not the stuck client's 300 s
    logs = load(out)
    _one_row_per_client_and_round(logs, rounds=2, clients=2)
    rows = logs.clients.set_index(["round", "client"])["status"].to_dict()
    assert rows == {(1, 0): "ok", (1, 1): "error", (2, 0): "ok", (2, 1): "timeout"}
    died = logs.clients[logs.clients["status"] == "error"]["message"].iloc[0]
    assert died.startswith("ActorDiedError: The actor died")
    said = stdout + stderr
    assert "round 2: client 1 did not reply in time" in said
    assert "stuck past their round's timeout; stopping them" in said


def test_a_dead_ray_worker_error_is_stored_exception_first():
    """Flower wraps a dead actor's error as "<class '...ActorDiedError'>:<'message...'>"."""
    from fedsim.errors import plain_error

    reason = (
        "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before finishing "
        "this task.\n\tclass_name: ClientAppActor\nThe actor is dead because its worker process"
        " has died.'>"
    )
    headline = plain_error(reason).split("\n")[0]
    assert headline == "ActorDiedError: The actor died unexpectedly before finishing this task."


def test_fault_matrix_is_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "### Fault matrix" in readme
    for test in (
        "test_updates_that_do_not_fit_the_model_are_rejected_and_the_rest_aggregated",
        "test_driver_sigkilled_mid_round_then_resumed_keeps_every_finished_row",
        "test_ray_worker_killed_mid_round_and_a_stuck_client_at_the_end",
    ):
        assert test in readme, test
