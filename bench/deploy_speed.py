"""Seconds per round: Flower's deployment engine on this host against simulation.

The same experiment everywhere: the default image task (small SiLU/GroupNorm CNN, Fashion-MNIST,
1,000 test images per round), 2 clients, N = 2, K = 1, RLG/Yin/iDLG scored (`audit=true`), CPU.
Backends: Ray (`backend=ray`, the default simulation), in-process (`backend=inline`), and a local
deployment (a SuperLink and two SuperNodes on 127.0.0.1, `fedsim.deploy_local`) run warm
(`fedsim-deploy supernode`: one long-lived ClientApp worker per SuperNode, Flower's waits
shortened) and cold (`--cold`: Flower's own executor, a fresh `flwr-clientapp` process per
message, Flower's 3 s / 1 s polls). Seconds per round: the median of the rounds' `seconds`
(rounds.parquet: from the end of one round's evaluation to the end of the next) over rounds 2..R
(round 1 includes start-up).

    python bench/deploy_speed.py [--rounds 6] [--skip-cold]  # bench/results/deploy_speed.json
    python bench/deploy_speed.py --skip-cold --name busy fl.batch_size=32 fl.local_steps=10
        # a heavier round (extra overrides for every backend): bench/results/deploy_speed_busy.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fedsim.deploy_local import LocalDeployment

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ["fl.clients=2", "device=cpu", "audit=true"]


def _rounds(run_dir: Path) -> pd.Series:
    rounds = pd.read_parquet(run_dir / "rounds.parquet").set_index("round")["seconds"]
    return rounds.drop(index=0, errors="ignore")


def _row(name: str, run_dir: Path, wall: float, rc: int) -> dict:
    seconds = _rounds(run_dir)
    return {
        "backend": name,
        "exit": rc,
        "rounds": len(seconds),
        "first_round_s": round(float(seconds.iloc[0]), 2),
        "per_round_s": round(float(seconds.iloc[1:].median()), 2),
        "per_round_all_s": [round(float(s), 2) for s in seconds.iloc[1:]],
        "wall_s": round(wall, 1),
    }


def _simulation(backend: str, rounds: int, tmp: Path, config: list[str]) -> dict:
    out = tmp / backend
    fedsim = str(Path(sys.executable).parent / "fedsim")
    start = time.perf_counter()
    done = subprocess.run(
        [fedsim, *config, f"fl.rounds={rounds}", f"backend={backend}", f"output={out}"],
        capture_output=True, text=True, cwd=tmp, check=False,
    )  # fmt: skip
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
    return _row(backend, out, time.perf_counter() - start, done.returncode)


def _deployed(cold: bool, rounds: int, tmp: Path, config: list[str]) -> dict:
    name = "deployed, cold (Flower's executor)" if cold else "deployed, warm (fedsim-deploy)"
    where = tmp / ("cold" if cold else "warm")
    out = where / "run"
    with LocalDeployment(where, nodes=2, cold=cold) as deployment:
        start = time.perf_counter()
        done = deployment.run(*config, f"fl.rounds={rounds}", f"output={out}", timeout=3600)
        wall = time.perf_counter() - start
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-2000:], file=sys.stderr)
    return _row(name, out, wall, done.returncode)


def _commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(  # earlier benches' results do not make the code dirty
        ["git", "status", "--porcelain", "--", ".", ":!bench/results"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return head + (" + working tree" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip-cold", action="store_true", help="skip Flower's own executor")
    parser.add_argument("--name", default="", help="suffix of the JSON file's name")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every backend")
    args = parser.parse_args()
    config = [*CONFIG, *args.overrides]
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploy_speed_") as tmp:
        tmp = Path(tmp)
        rows.append(_simulation("ray", args.rounds, tmp, config))
        rows.append(_simulation("inline", args.rounds, tmp, config))
        rows.append(_deployed(False, args.rounds, tmp, config))
        if not args.skip_cold:
            rows.append(_deployed(True, args.rounds, tmp, config))
    ray = rows[0]["per_round_s"]
    for row in rows:
        row["x_ray"] = round(row["per_round_s"] / ray, 2) if ray else None
    print(f"{'backend':38} {'s/round (median, rounds 2..R)':>30} {'x Ray':>6} {'round 1':>8}")
    for row in rows:
        print(
            f"{row['backend']:38} {row['per_round_s']:>30.2f} {row['x_ray']:>6.2f}"
            f" {row['first_round_s']:>8.1f}"
        )
    result = {
        "commit": _commit(),
        "cores": os.cpu_count(),
        "load_average_before": round(load_before, 1),
        "load_average_after": round(os.getloadavg()[0], 1),
        "rounds": args.rounds,
        "config": config,
        "rows": rows,
    }
    suffix = f"_{args.name}" if args.name else ""
    path = ROOT / "bench" / "results" / f"deploy_speed{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average {result['load_average_before']} -> {result['load_average_after']}; {path}")


if __name__ == "__main__":
    main()
