"""Round logs: `attacks.parquet`, `clients.parquet`, `rounds.parquet` in a run directory.

Tables are rewritten atomically at the end of every round (write to a temporary file, then rename),
so a run killed at any moment leaves complete tables up to its last finished round.
`load(run_dir)` returns them as pandas DataFrames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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

    def add(self, table: str, **row: Any) -> None:
        base = self.context if table != "rounds" else {}
        self.rows[table].append({**base, **row})

    def flush(self) -> None:
        for table, rows in self.rows.items():
            path = self.run_dir / f"{table}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            pd.DataFrame(rows).to_parquet(tmp, index=False)
            os.replace(tmp, path)


def _missing(value: Any) -> bool:
    return isinstance(value, float) and value != value  # NaN: a column this row never had


@dataclass(frozen=True)
class RunLogs:
    """The tables of one run: attacks (round, client, attack), clients (round, client), rounds."""

    run_dir: Path
    attacks: pd.DataFrame
    clients: pd.DataFrame
    rounds: pd.DataFrame


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
    return RunLogs(run_dir=run_dir, **frames)
