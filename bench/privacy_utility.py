"""Benchmark: what each defense costs in accuracy against what it stops leaking.

Every defense over a strength grid (none; Sign-SGD; GradDrop 50/90/99 %; top-k 1/10 %; DP at
three noise levels; QSGD at two level counts; SecAgg+) trains the same image configuration (the
default experiment: Fashion-MNIST, the small SiLU CNN, 16 clients, N = 2, K = 1) for the same
number of rounds, on the in-process backend, one `fedsim` process per run. Recorded per run:
final test accuracy (all 10,000 test images, from the last checkpoint); leakage per round and at
the last round (a trained model): RLG precision / recall / F1 / exact / count L1, Yin F1; DP's
epsilon. Seeds repeat each run; the table gives mean and spread (min-max).

Writes bench/results/privacy_utility[_quick].json and, from it, the figure
bench/results/privacy_utility.png (accuracy against RLG F1, Pareto front marked; RLG F1 per
round). `--figure-only` redraws the figure and table from the JSON.

Usage: python bench/privacy_utility.py [--quick] [--rounds R] [--seeds 0,1] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FEDSIM = [sys.executable, "-m", "fedsim.cli"]

# name -> overrides of the default experiment (16 clients x N = 2, K = 1, small SiLU CNN).
GRID: dict[str, list[str]] = {
    "none": ["defense=none"],
    "signsgd": ["defense=signsgd"],
    "graddrop 50%": ["defense=graddrop", "defense.rate=0.5"],
    "graddrop 90%": ["defense=graddrop", "defense.rate=0.9"],
    "graddrop 99%": ["defense=graddrop", "defense.rate=0.99"],
    "top-k 10%": ["defense=topk", "defense.k=0.1"],
    "top-k 1%": ["defense=topk", "defense.k=0.01"],
    "dp sigma 0.001": ["defense=dp", "defense.clip=1.0", "defense.noise=0.001"],
    "dp sigma 0.01": ["defense=dp", "defense.clip=1.0", "defense.noise=0.01"],
    "dp sigma 0.1": ["defense=dp", "defense.clip=1.0", "defense.noise=0.1"],
    "qsgd s=16": ["defense=qsgd", "defense.levels=16"],
    "qsgd s=2": ["defense=qsgd", "defense.levels=2"],
    "secagg+": ["defense=secagg"],
}
RLG = ("precision", "recall", "f1", "exact", "count_l1")


def run_one(name: str, overrides: list[str], seed: int, rounds: int, out: Path) -> dict:
    """Run one configuration; return its record (or its error)."""
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in name.replace("%", "pc"))
    run_dir = out / f"{slug}_seed{seed}"
    cmd = [
        *FEDSIM, "backend=inline", f"fl.rounds={rounds}", f"seed={seed}", "attack=[rlg,yin]",
        f"output={run_dir}", *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    record = {"name": name, "seed": seed, "overrides": overrides, "rounds": rounds,
              "seconds": time.perf_counter() - start, "exit_code": proc.returncode}  # fmt: skip
    if not (run_dir / "rounds.parquet").exists():
        record["error"] = (proc.stderr or proc.stdout)[-2000:]
        return record
    record.update(collect(run_dir))
    return record


def final_accuracy(run_dir: Path) -> float:
    """Test accuracy of the run's last global model on all 10,000 test images."""
    import torch
    import yaml

    from fedsim.checkpoints import Checkpoints
    from fedsim.factory import build_task

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["task"]["eval_samples"] = 0
    task = build_task(cfg)
    model = task.model_spec().build()
    model.load_state_dict(Checkpoints(run_dir).load_latest()[1])
    return float(task.evaluate(model, torch.device("cpu"))["accuracy"])


def collect(run_dir: Path) -> dict:
    """Accuracy, per-round and last-round leakage, DP epsilon, from a run's logs."""
    from fedsim.logs import load

    logs = load(run_dir)
    attacks, rounds = logs.attacks, logs.rounds
    last = int(rounds["round"].max())
    ok = attacks[attacks["status"] == "ok"]
    rlg, yin = ok[ok["attack"] == "rlg"], ok[ok["attack"] == "yin"]
    # Leakage with abstentions counted as none: an RLG row that is not applicable (or failed)
    # revealed nothing, so its F1 is 0 here (the ok-row means below ignore those rows).
    all_rlg = attacks[attacks["attack"] == "rlg"].assign(
        f1=lambda f: f["f1"].where(f["status"] == "ok", 0.0)
    )
    per_round = all_rlg.groupby("round")["f1"].mean() if len(all_rlg) else None
    record = {
        "run_dir": str(run_dir),
        "accuracy_per_round": rounds.set_index("round")["accuracy"].round(4).to_dict(),
        "final_accuracy": final_accuracy(run_dir),
        "rlg_applicable": float((attacks[attacks["attack"] == "rlg"]["status"] == "ok").mean()),
        "rlg_f1_leak": float(all_rlg["f1"].mean()) if len(all_rlg) else None,
        "rlg_f1_leak_last": float(all_rlg[all_rlg["round"] == last]["f1"].mean())
        if len(all_rlg)
        else None,
        "rlg": {k: float(rlg[k].mean()) for k in RLG if k in rlg and len(rlg)},
        "rlg_last": {
            k: float(rlg[rlg["round"] == last][k].mean()) for k in RLG if k in rlg and len(rlg)
        },
        "rlg_f1_per_round": per_round.round(4).to_dict() if per_round is not None else {},
        "yin_f1": float(yin["f1"].mean()) if len(yin) else None,
        "yin_f1_last": float(yin[yin["round"] == last]["f1"].mean()) if len(yin) else None,
        "failed_clients": int((logs.clients["status"] != "ok").sum()),
    }
    if "dp_epsilon" in logs.clients:
        record["dp_epsilon_max"] = float(logs.clients["dp_epsilon"].max())
    return record


def summarise(records: list[dict]) -> list[dict]:
    """One row per grid entry: means and min-max over seeds."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name and "final_accuracy" in r]
        if not mine:
            err = next(r for r in records if r["name"] == name).get("error", "")
            rows.append({"name": name, "error": err.strip().splitlines()[-1:] or ["?"]})
            continue

        def stat(values):
            values = [v for v in values if v is not None and not np.isnan(v)]
            if not values:
                return None
            return {"mean": float(np.mean(values)), "min": min(values), "max": max(values)}

        row = {
            "name": name,
            "seeds": len(mine),
            "accuracy": stat([r["final_accuracy"] for r in mine]),
        }
        for k in RLG:
            row[f"rlg_{k}"] = stat([r["rlg"].get(k) for r in mine])
            row[f"rlg_{k}_last"] = stat([r["rlg_last"].get(k) for r in mine])
        row["rlg_applicable"] = stat([r["rlg_applicable"] for r in mine])
        row["rlg_f1_leak"] = stat([r.get("rlg_f1_leak") for r in mine])
        row["rlg_f1_leak_last"] = stat([r.get("rlg_f1_leak_last") for r in mine])
        row["yin_f1"] = stat([r["yin_f1"] for r in mine])
        row["yin_f1_last"] = stat([r["yin_f1_last"] for r in mine])
        if any("dp_epsilon_max" in r for r in mine):
            row["dp_epsilon"] = stat([r.get("dp_epsilon_max") for r in mine])
        rows.append(row)
    return rows


def _cell(s, digits=3) -> str:
    if s is None:
        return "–"
    if s["min"] == s["max"]:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def print_table(rows: list[dict]) -> str:
    """The README table (markdown), printed and returned."""
    head = ("| defense | test acc. | RLG leakage F1 (all rounds) | last round | RLG F1 where it "
            "answers | RLG exact | RLG count L1 | RLG answers | Yin F1 | ε (δ=1e-5) |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][0]} |" + " |" * 8)
            continue
        eps = _cell(r.get("dp_epsilon"), 0) if r.get("dp_epsilon") else "–"
        lines.append(
            f"| {r['name']} | {_cell(r['accuracy'])} | {_cell(r.get('rlg_f1_leak'), 2)} | "
            f"{_cell(r.get('rlg_f1_leak_last'), 2)} | {_cell(r['rlg_f1'], 2)} | "
            f"{_cell(r['rlg_exact'], 2)} | {_cell(r['rlg_count_l1'], 2)} | "
            f"{_cell(r['rlg_applicable'], 2)} | {_cell(r['yin_f1'], 2)} | {eps} |"
        )
    text = "\n".join(lines)
    print(text)
    return text


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (higher accuracy, lower leakage)."""
    front = []
    for i, (acc, leak) in enumerate(points):
        dominated = any(
            a >= acc and lk <= leak and (a > acc or lk < leak)
            for j, (a, lk) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def figure(rows: list[dict], records: list[dict], path: Path) -> None:
    """Accuracy against RLG F1 (Pareto front marked) and RLG F1 per round, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "error" not in r and r.get("rlg_f1_leak") is not None]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    points = [(r["accuracy"]["mean"], r["rlg_f1_leak"]["mean"]) for r in good]
    front = set(pareto(points))
    for i, (r, (acc, f1)) in enumerate(zip(good, points)):
        ax.scatter(f1, acc, s=60 if i in front else 30, marker="o" if i in front else "x")
        ax.annotate(r["name"], (f1, acc), fontsize=7, xytext=(4, 2), textcoords="offset points")
    line = sorted((points[i][1], points[i][0]) for i in front)
    ax.plot([p[0] for p in line], [p[1] for p in line], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("RLG F1 (label-set leakage; not applicable = 0; mean over rounds, clients)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("Privacy-utility: each defense and strength")
    ax.legend(fontsize=8)
    for r in good:
        mine = [x for x in records if x["name"] == r["name"] and x.get("rlg_f1_per_round")]
        if not mine:
            continue
        curve = mine[0]["rlg_f1_per_round"]
        xs = sorted(int(k) for k in curve)
        ys = np.array([curve[str(x)] if str(x) in curve else curve[x] for x in xs])
        window = max(1, len(xs) // 30)  # a moving mean: one round holds only 16 updates
        smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
        bx.plot(xs[window - 1 :], smooth, label=r["name"], lw=1)
    bx.set_xlabel("round")
    bx.set_ylabel("RLG F1 (round mean; not applicable = 0)")
    bx.set_title("Leakage against round (first seed; moving mean over len/30 rounds)")
    bx.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 rounds, one seed (a few minutes)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per run (full: 600)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (full: 0,1)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU each)")
    ap.add_argument("--only", default=None, help="comma-separated grid names (default: all)")
    ap.add_argument("--figure-only", action="store_true", help="redraw from the saved JSON")
    ap.add_argument(
        "--recollect", action="store_true",
        help="re-read the saved JSON's run directories (still on disk), then redraw",
    )  # fmt: skip
    args = ap.parse_args(argv)
    name = "privacy_utility_quick.json" if args.quick else "privacy_utility.json"
    path = RESULTS / name
    if args.figure_only or args.recollect:
        if not path.exists():
            sys.exit(f"{path} does not exist: run `python bench/privacy_utility.py` first")
        saved = json.loads(path.read_text())
        if args.recollect:
            for record in saved["runs"]:
                if "run_dir" in record:
                    record.update(collect(Path(record["run_dir"])))
            saved["rows"] = summarise(saved["runs"])
            path.write_text(json.dumps(saved, indent=1, default=float))
        print_table(saved["rows"])
        figure(saved["rows"], saved["runs"], path.with_suffix(".png"))
        return
    rounds = args.rounds or (30 if args.quick else 600)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1")).split(",")]
    grid = {k: v for k, v in GRID.items() if not args.only or k in args.only.split(",")}
    unknown = set(args.only.split(",")) - set(GRID) if args.only else set()
    if unknown:
        sys.exit(f"unknown grid names {sorted(unknown)}; choose from {list(GRID)}")
    load = os.getloadavg()
    print(f"privacy-utility: {len(grid)} configs x {len(seeds)} seeds x {rounds} rounds; "
          f"load {load[0]:.2f}")  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix="privacy_utility_"))
    jobs = [(n, o, s) for s in seeds for n, o in grid.items()]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, n, o, s, rounds, out) for n, o, s in jobs]
        records = []
        for future in futures:
            record = future.result()
            records.append(record)
            acc = record.get("final_accuracy")
            status = f"acc {acc:.3f}" if acc is not None else "FAILED"
            print(f"  {record['name']} seed {record['seed']}: {status} "
                  f"({record['seconds']:.0f} s)", flush=True)  # fmt: skip
    rows = summarise(records)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    result = {
        "quick": args.quick, "rounds": rounds, "seeds": seeds, "commit": commit,
        "load_average": load, "load_average_end": os.getloadavg(),
        "seconds": time.perf_counter() - start, "rows": rows, "runs": records,
    }  # fmt: skip
    path.write_text(json.dumps(result, indent=1, default=float))
    print_table(rows)
    figure(rows, records, path.with_suffix(".png"))
    print(f"JSON: {path}; run directories in {out}")


if __name__ == "__main__":
    main()
