"""Combine the round logs of several runs for analysis (used by the notebooks)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fedsim.logs import load

__all__ = [
    "config_labels", "declared_scores", "find_runs", "headline_score", "load_runs", "sweep_table",
]  # fmt: skip

# Keys that differ between runs without making them different experiments.
_NOT_CONFIG = {"output", "resume", "hydra"}


def find_runs(*roots: str | Path) -> list[Path]:
    """Run directories (folders holding rounds.parquet) under `roots`, sorted; folders without
    round logs (a run that failed before its first round) are skipped."""
    found = set()
    for root in roots:
        root = Path(root)
        if (root / "rounds.parquet").exists():
            found.add(root)
        found.update(p.parent for p in root.glob("**/rounds.parquet"))
    return sorted(found)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if not prefix and key in _NOT_CONFIG:
                continue
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _label_part(key: str, value: Any) -> str:
    """ "defense._target_" with "defenses.dp.GaussianDP" reads "defense=GaussianDP"."""
    if key.endswith("._target_") and isinstance(value, str):
        return f"{key[: -len('._target_')]}={value.rsplit('.', 1)[-1]}"
    return f"{key}={value}"


def config_labels(run_dirs: Iterable[str | Path]) -> dict[Path, str]:
    """run directory -> "key=value, ..." over every config key in which the runs differ (from
    each run's `config.yaml`), e.g. "defense=GaussianDP, defense.noise=1.0" (a `_target_` by its
    class name; keys a run does not have are left out of its label).
    `seed` is a key like any other, so repeats with different seeds get different labels;
    "(same config)" when none differ. A run without config.yaml is labelled by its folder name."""
    run_dirs = [Path(r) for r in run_dirs]
    configs = {}
    for run in run_dirs:
        path = run / "config.yaml"
        configs[run] = _flatten(yaml.safe_load(path.read_text())) if path.exists() else None
    known = [c for c in configs.values() if c is not None]
    keys = sorted({k for c in known for k in c})
    differ = [k for k in keys if len({repr(c.get(k)) for c in known}) > 1]
    labels = {}
    for run, config in configs.items():
        if config is None:
            labels[run] = run.name
        else:
            parts = [_label_part(k, config[k]) for k in differ if config.get(k) is not None]
            labels[run] = ", ".join(parts) if parts else "(same config)"
    return labels


def load_runs(run_dirs: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rounds, attacks) of all runs, each row labelled with `run` (folder name), `defense` and
    `config` (the keys in which the runs differ, see `config_labels`): group by `config`, never
    by `defense` alone, so runs of different configurations are not averaged together."""
    run_dirs = [Path(r) for r in run_dirs]
    labels = config_labels(run_dirs)
    rounds, attacks = [], []
    for run_dir in run_dirs:
        logs = load(run_dir)
        label = run_dir.name
        defense = (
            logs.clients["defense"].iloc[0]
            if "defense" in logs.clients and len(logs.clients)
            else "?"
        )
        tags = {"run": label, "defense": defense, "config": labels[run_dir]}
        rounds.append(logs.rounds.assign(**tags))
        attacks.append(logs.attacks.assign(**tags))
    if not rounds:
        raise FileNotFoundError("no run directories given (or none holds rounds.parquet)")
    return pd.concat(rounds, ignore_index=True), pd.concat(attacks, ignore_index=True)


def declared_scores(run_dirs: Iterable[str | Path]) -> dict[str, list[dict]]:
    """attack -> the score columns its findings declare (`fedcore.Score` as dicts), over runs."""
    declared: dict[str, list[dict]] = {}
    for run_dir in run_dirs:
        for attack, scores in load(run_dir).scores.items():
            declared.setdefault(attack, scores)
    return declared


def headline_score(declared: dict[str, list[dict]], attack: str) -> dict | None:
    """The attack's headline score (the one the round lines show), or its first, or None."""
    scores = declared.get(attack, [])
    return next((s for s in scores if s.get("headline")), scores[0] if scores else None)


def sweep_table(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run: its config label (the keys the runs differ in), final round, final
    metrics, each attack's mean headline score over its ok rows, and rounds that aggregated
    nothing (`failed_rounds`)."""
    from fedsim.summary import failed_rounds

    run_dirs = [Path(r) for r in run_dirs]
    labels = config_labels(run_dirs)
    rows = []
    for run_dir in run_dirs:
        logs = load(run_dir)
        row: dict[str, Any] = {"config": labels[run_dir], "run": str(run_dir)}
        if not logs.rounds.empty:
            last = logs.rounds.iloc[-1]
            row["round"] = int(last["round"])
            for metric in ("accuracy", "wer", "loss"):
                if metric in logs.rounds:
                    row[metric] = float(last[metric])
        ok = logs.attacks[logs.attacks["status"] == "ok"] if not logs.attacks.empty else None
        for attack in dict.fromkeys(logs.attacks.get("attack", [])):
            head = headline_score(logs.scores, attack)
            mine = ok[ok["attack"] == attack] if ok is not None else None
            if head and mine is not None and len(mine) and head["name"] in mine:
                row[f"{attack} {head.get('label') or head['name']}"] = float(
                    mine[head["name"]].mean()
                )
            else:
                row[f"{attack}"] = "/".join(sorted(set(logs.attacks[
                    logs.attacks["attack"] == attack]["status"])))  # fmt: skip
        row["failed rounds"] = len(failed_rounds(logs.rounds, logs.clients))
        rows.append(row)
    return pd.DataFrame(rows)
