"""Combine the round logs of several runs for analysis (used by the notebooks)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fedsim.logs import load

__all__ = ["declared_scores", "find_runs", "headline_score", "load_runs"]


def find_runs(*roots: str | Path) -> list[Path]:
    """Run directories (folders holding rounds.parquet) under `roots`, sorted."""
    found = set()
    for root in roots:
        root = Path(root)
        if (root / "rounds.parquet").exists():
            found.add(root)
        found.update(p.parent for p in root.glob("**/rounds.parquet"))
    return sorted(found)


def load_runs(run_dirs: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rounds, attacks) of all runs, each row labelled with `run` (folder name) and `defense`."""
    rounds, attacks = [], []
    for run_dir in run_dirs:
        logs = load(run_dir)
        label = Path(run_dir).name
        defense = (
            logs.clients["defense"].iloc[0]
            if "defense" in logs.clients and len(logs.clients)
            else "?"
        )
        rounds.append(logs.rounds.assign(run=label, defense=defense))
        attacks.append(logs.attacks.assign(run=label))
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
