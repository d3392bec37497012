"""Run control: stopping on SIGINT / SIGTERM, resume that cannot surprise, no stub run
directories, round timeouts (issue 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fedsim.logs import load
from tests.conftest import FAST, ROOT
from tests.test_simulation import FAST_CLI, _cli


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "fedsim.cli", *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rounds_logged(out: Path) -> int:
    try:
        return int(pd.read_parquet(out / "rounds.parquet")["round"].max())
    except Exception:
        return -1


def _stop_after_round_2(proc: subprocess.Popen, out: Path, signum: int, wait: float = 240):
    """Send `signum` once round 2 is in rounds.parquet; return (rc, seconds to exit, stderr)."""
    deadline = time.monotonic() + wait
    while _rounds_logged(out) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "round 2 never logged"
        time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, time.monotonic() - sent, err


# A slow round (a sleeping attack) so that the signal arrives mid-run.
SLOW = ["+attack.sleeping._target_=tests.plugins.Sleeping", "+attack.sleeping.seconds=0.5"]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_an_inline_run(tmp_path, signum, code):
    out = tmp_path / "stopped"
    proc = _start(*FAST_CLI, "fl.rounds=50", *SLOW, f"output={out}", cwd=tmp_path)
    rc, seconds, err = _stop_after_round_2(proc, out, signum)
    assert rc == code, err[-3000:]
    assert seconds < 10
    assert f"fedsim resume={out} fl.rounds=50" in err
    assert err.count("To continue:") == 1
    logs = load(out)
    done = int(torch.load(out / "checkpoints" / "latest.pt")["round"])
    assert done >= 2 and list(logs.rounds["round"]) == list(range(done + 1))
    assert sorted(set(logs.clients["round"])) == list(range(1, done + 1))


@pytest.mark.ray
def test_sigint_stops_a_ray_run(tmp_path):
    out = tmp_path / "ray"
    args = [a for a in FAST_CLI if not a.startswith("backend")]
    proc = _start(*args, "backend=ray", "backend.num_cpus=2", "fl.rounds=50", *SLOW,
                  f"output={out}", cwd=tmp_path)  # fmt: skip
    rc, seconds, err = _stop_after_round_2(proc, out, signal.SIGINT)
    assert rc == 130, err[-3000:]
    assert seconds < 10
    assert f"fedsim resume={out} fl.rounds=50" in err
    done = int(torch.load(out / "checkpoints" / "latest.pt")["round"])
    assert list(load(out).rounds["round"]) == list(range(done + 1))


def _two_rounds(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "two"
    result = _cli(*FAST_CLI, "fl.rounds=2", *extra, f"output={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_resume_needs_fl_rounds_and_the_saved_config(tmp_path):
    out = _two_rounds(tmp_path)
    before = (out / "config.yaml").read_text()
    rest = [a for a in FAST_CLI if not a.startswith("device")]

    no_total = _cli(*rest, f"resume={out}", cwd=tmp_path)
    assert no_total.returncode == 2
    said = no_total.stdout + no_total.stderr
    assert "fl.rounds=<total>" in said and "Traceback" not in said

    other = _cli(*rest, "fl.rounds=4", "fl.lr=0.01", "defense=signsgd", f"resume={out}",
                 cwd=tmp_path)  # fmt: skip
    assert other.returncode == 2
    said = other.stdout + other.stderr
    assert "continues the saved config" in said and "fl.lr" in said and "defense" in said

    nothing = _cli(*rest, "fl.rounds=2", "device=cpu", f"resume={out}", cwd=tmp_path)
    assert nothing.returncode == 0, nothing.stderr[-3000:]
    assert "nothing to do" in nothing.stderr + nothing.stdout
    assert (out / "config.yaml").read_text() == before
    assert list(load(out).rounds["round"]) == [0, 1, 2]


def test_resume_restores_the_defense_state_of_each_client(tmp_path):
    """A stateful defense (a per-client counter): 2 rounds + resume to 4 equals 4 rounds."""
    from fedsim.config import compose_config
    from fedsim.simulation import run_experiment

    common = [*FAST, "fl.lr_schedule=constant", "defense._target_=tests.plugins.CountingScale"]
    straight = run_experiment(compose_config([*common, "fl.rounds=4"]), tmp_path / "straight")
    part = run_experiment(compose_config([*common, "fl.rounds=2"]), tmp_path / "part")
    resumed = run_experiment(compose_config([*common, "fl.rounds=4", f"resume={part}"]), part)
    a = torch.load(straight / "checkpoints" / "latest.pt")
    b = torch.load(resumed / "checkpoints" / "latest.pt")
    assert a["round"] == b["round"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert (part / "client_state" / "partition_0000").is_dir()


@pytest.mark.parametrize("bad", ["defense=graddrop defense.rate=1.5", "device=cuda"])
def test_a_late_config_error_leaves_no_run_directory(tmp_path, bad):
    if bad == "device=cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "stub"
    rest = [a for a in FAST_CLI if not a.startswith("device")] + ["device=cpu"] * (
        "device" not in bad
    )
    result = _cli(*rest, "fl.rounds=1", *bad.split(), f"output={out}", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists() and not (tmp_path / "outputs").exists()


def test_cli_log_goes_to_the_run_directory(tmp_path):
    out = _two_rounds(tmp_path)
    assert (out / "cli.log").exists() and "round 2/2" in (out / "cli.log").read_text()
    assert not (tmp_path / "outputs").exists()


def test_a_stuck_client_times_out_without_holding_up_the_round(tmp_path):
    out = tmp_path / "stuck"
    result = _cli(*FAST_CLI, "fl.rounds=1", "round_timeout=2",
                  "defense._target_=tests.plugins.SleepOnClient", "+defense.client=1",
                  "+defense.seconds=30", f"output={out}", cwd=tmp_path)  # fmt: skip
    logs = load(out)
    row = logs.rounds[logs.rounds["round"] == 1].iloc[0]
    assert row["seconds"] < 2 + 5 and row["timeouts"] == 1
    late = logs.clients[logs.clients["status"] == "timeout"]
    assert list(late["client"]) == [1]
    assert "round 1: client 1 did not reply in time" in result.stdout + result.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["round_timeout"] == 2
