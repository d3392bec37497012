"""The end-of-run summary: accuracy per round and mean attack scores, as tables.

Score columns come from what each attack's findings declare (`fedcore.Score`, saved in the run's
`scores.json`), so a new attack's scores appear here without any change to fedsim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from fedsim.logs import load

__all__ = ["attack_summary", "headline_scores", "print_summary"]

# Columns of attacks.parquet that are not scores (context, bookkeeping).
_NOT_SCORES = {
    "round", "client", "attack", "status", "message", "seconds", "diagnostics", "lr",
    "batch_size", "local_steps", "label_smoothing", "mixup_alpha",
}  # fmt: skip


def _score_columns(attacks: pd.DataFrame, scores: Mapping[str, Sequence[dict]]) -> dict[str, str]:
    """Score column -> header, in declaration order; undeclared numeric columns follow."""
    columns: dict[str, str] = {}
    for declared in scores.values():
        for s in declared:
            if s["name"] in attacks.columns:
                columns.setdefault(s["name"], s.get("label") or s["name"])
    for c in attacks.columns:
        numeric = pd.api.types.is_numeric_dtype(attacks[c])
        if c not in _NOT_SCORES and c not in columns and numeric and not scores:
            columns[c] = c
    return columns


def attack_summary(
    attacks: pd.DataFrame, scores: Mapping[str, Sequence[dict]] | None = None
) -> pd.DataFrame:
    """Per attack: rows by status and the mean of each declared score over the `ok` rows."""
    if attacks.empty:
        return pd.DataFrame()
    counts = attacks.pivot_table(
        index="attack", columns="status", values="round", aggfunc="count", fill_value=0
    )
    columns = _score_columns(attacks, scores or {})
    ok = attacks[attacks["status"] == "ok"]
    means = ok.groupby("attack")[list(columns)].mean() if columns else pd.DataFrame()
    means = means.reindex(counts.index).rename(columns=columns)
    seconds = attacks.groupby("attack")["seconds"].mean().rename("seconds")
    order = list(dict.fromkeys(attacks["attack"]))
    counts = counts.rename(columns={"not_applicable": "n/a", "error": "errors"})
    return counts.join(means, how="left").join(seconds).reindex(order)


def headline_scores(
    rows: Sequence[dict], scores: Mapping[str, Sequence[dict]], round_: int | None = None
) -> str:
    """One phrase per attack, e.g. "rlg F1 1.00, yin F1 0.45, idlg not_applicable": the mean of
    its headline score over ok rows (of `round_`, or all rows), else its statuses."""
    rows = [r for r in rows if round_ is None or r["round"] == round_]
    parts = []
    for name in dict.fromkeys(r["attack"] for r in rows):
        mine = [r for r in rows if r["attack"] == name]
        head = next((s for s in scores.get(name, ()) if s.get("headline")), None)
        values = [r[head["name"]] for r in mine if head and head["name"] in r]
        if values:
            parts.append(f"{name} {head.get('label') or head['name']} {np.nanmean(values):.2f}")
        else:
            statuses = sorted({r["status"] for r in mine})
            parts.append(f"{name} {'/'.join(statuses)}")
    return ", ".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float | np.floating):
        if pd.isna(value):
            return "–"
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e9 else f"{value:.3f}"
    return str(value)


def print_summary(run_dir: str | Path, console: Console | None = None) -> None:
    """Print the rounds table, the attack table and the run directory."""
    console = console or Console()
    logs = load(run_dir)
    rounds = logs.rounds
    table = Table(title="Global model per round")
    cols = [
        c
        for c in (
            "round", "accuracy", "wer", "loss", "ok", "failures", "timeouts", "non_finite",
            "seconds",
        )
        if c in rounds
    ]  # fmt: skip
    for c in cols:
        table.add_column(c, justify="right")
    for _, row in rounds.iterrows():
        table.add_row(*(_fmt(row[c]) for c in cols))
    console.print(table)
    summary = attack_summary(logs.attacks, logs.scores)
    if not summary.empty:
        table = Table(title="Attacks (mean over ok rows)")
        table.add_column("attack")
        for c in summary.columns:
            table.add_column(str(c), justify="right")
        for name, row in summary.iterrows():
            table.add_row(str(name), *(_fmt(v) for v in row.tolist()))
        console.print(table)
    console.print(f"Run directory: [bold]{Path(run_dir).resolve()}[/bold]")
