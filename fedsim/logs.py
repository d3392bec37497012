"""Round logs: `attacks.parquet`, `clients.parquet`, `rounds.parquet` in a run directory.

Tables are rewritten atomically at the end of every round (write to a temporary file, then rename),
so a run killed at any moment leaves complete tables up to its last finished round.
`load(run_dir)` returns them as pandas DataFrames.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["TABLES", "RoundLog", "RunLogs", "load"]

TABLES = ("attacks", "clients", "rounds")


class RoundLog:
    """Collects rows and flushes every table to `<run_dir>/<table>.parquet`."""

    def __init__(self, run_dir: str | Path, context: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.context = dict(context or {})  # columns added to every attack and client row
        self.rows: dict[str, list[dict]] = {t: [] for t in TABLES}
        self.scores: dict[str, list[dict]] = {}  # attack -> its findings' declared scores

    def resume(self, last_round: int) -> None:
        """Reload the rows already on disk up to `last_round` (to continue a stopped run)."""
        for table in TABLES:
            path = self.run_dir / f"{table}.parquet"
            if path.exists():
                frame = pd.read_parquet(path)
                if "round" in frame:
                    frame = frame[frame["round"] <= last_round]
                rows = frame.to_dict("records")
                self.rows[table] = [{k: v for k, v in r.items() if not _missing(v)} for r in rows]
        scores = self.run_dir / "scores.json"
        if scores.exists():
            self.scores = json.loads(scores.read_text())

    def declare_scores(self, scores: Mapping[str, Sequence[Any]]) -> None:
        """Record each attack's score columns (`fedcore.Score`s), written to `scores.json`."""
        for attack, declared in scores.items():
            self.scores[attack] = [s.to_dict() for s in declared]

    def add(self, table: str, **row: Any) -> None:
        base = self.context if table != "rounds" else {}
        self.rows[table].append({**base, **row})

    def flush(self) -> None:
        for table, rows in self.rows.items():
            path = self.run_dir / f"{table}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            pd.DataFrame(rows).to_parquet(tmp, index=False)
            os.replace(tmp, path)
        if self.scores:
            tmp = self.run_dir / "scores.json.tmp"
            tmp.write_text(json.dumps(self.scores, indent=1))
            os.replace(tmp, self.run_dir / "scores.json")


def _missing(value: Any) -> bool:
    return isinstance(value, float) and value != value  # NaN: a column this row never had


@dataclass(frozen=True)
class RunLogs:
    """The tables of one run: attacks (round, client, attack), clients (round, client), rounds;
    and `scores`: attack -> its declared score columns (dicts with name, label, headline,
    higher_is_better), from `scores.json`."""

    run_dir: Path
    attacks: pd.DataFrame
    clients: pd.DataFrame
    rounds: pd.DataFrame
    scores: dict[str, list[dict]] = field(default_factory=dict)


def load(run_dir: str | Path) -> RunLogs:
    """Read a run directory's tables (missing tables come back empty)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    if not any((run_dir / f"{t}.parquet").exists() for t in TABLES):
        raise FileNotFoundError(f"{run_dir} holds no round logs ({', '.join(TABLES)}.parquet)")
    frames = {}
    for table in TABLES:
        path = run_dir / f"{table}.parquet"
        frames[table] = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    scores_path = run_dir / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    return RunLogs(run_dir=run_dir, **frames, scores=scores)
