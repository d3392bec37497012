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

from fedsim.errors import error_headline
from fedsim.logs import load

__all__ = [
    "attack_summary",
    "failed_rounds",
    "format_value",
    "headline_scores",
    "print_summary",
    "result_line",
]

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


def skipped_reasons(attacks: pd.DataFrame) -> list[str]:
    """One line per attack and reason it did not apply (or failed), with how many rows, e.g.
    "idlg not_applicable (300 rows): iDLG needs batch_size 1 (one sample per update), got 2"."""
    if attacks.empty:
        return []
    lines = []
    rows = attacks[attacks["status"] != "ok"]
    for (name, status, message), group in rows.groupby(["attack", "status", "message"], sort=False):
        lines.append(f"{name} {status} ({len(group)} rows): {error_headline(message)}")
    return lines


def failed_rounds(rounds: pd.DataFrame, clients: pd.DataFrame) -> list[str]:
    """One line per round that aggregated no update, e.g.
    "round 2: 0 of 4 updates aggregated (4 errors: NameError: name 'torch' is not defined)"."""
    lines = []
    for _, row in rounds.iterrows():
        round_ = int(row["round"])
        if round_ == 0 or "ok" not in row or pd.isna(row["ok"]) or int(row["ok"]) > 0:
            continue
        mine = clients[(clients["round"] == round_) & (clients["status"] != "ok")]
        causes = []
        for status, group in mine.groupby("status", sort=False):
            label = {"error": "errors", "timeout": "timeouts", "non_finite": "non-finite"}
            head = error_headline(group["message"].iloc[0])
            causes.append(f"{len(group)} {label.get(status, status)}: {head}")
        total = int(row["clients"]) if "clients" in row and not pd.isna(row["clients"]) else 0
        why = f" ({'; '.join(causes)})" if causes else ""
        lines.append(f"round {round_}: 0 of {total} updates aggregated{why}")
    return lines


def result_line(rounds: pd.DataFrame, attacks: pd.DataFrame, scores: Mapping) -> str:
    """The run's result in one line: the last round's metrics and each attack's mean headline
    score over all rounds, e.g. "round 150: accuracy 0.812 | rlg F1 1.00, yin F1 0.41"."""
    if rounds.empty:
        return "no round finished"
    last = rounds.iloc[-1]
    metrics = [c for c in ("accuracy", "wer", "loss") if c in rounds and not pd.isna(last[c])]
    shown = ", ".join(f"{c} {float(last[c]):.3f}" for c in metrics)
    head = headline_scores(attacks.to_dict("records"), scores) if not attacks.empty else ""
    return f"round {int(last['round'])}: {shown}" + (f" | {head}" if head else "")


def format_value(value) -> str:
    """A table cell: floats with 3 decimals (whole numbers as integers), NaN as a dash."""
    if isinstance(value, float | np.floating):
        if pd.isna(value):
            return "–"
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e9 else f"{value:.3f}"
    return str(value)


def print_summary(run_dir: str | Path, console: Console | None = None) -> list[str]:
    """Print the rounds table, the attack table, the result line and the run directory.

    Returns the lines of rounds that aggregated nothing (printed last; the CLI then exits 1).
    """
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
        table.add_row(*(format_value(row[c]) for c in cols))
    console.print(table)
    summary = attack_summary(logs.attacks, logs.scores)
    if not summary.empty:
        table = Table(title="Attacks (mean over ok rows)")
        table.add_column("attack")
        for c in summary.columns:
            table.add_column(str(c), justify="right")
        for name, row in summary.iterrows():
            table.add_row(str(name), *(format_value(v) for v in row.tolist()))
        console.print(table)
        for line in skipped_reasons(logs.attacks):
            console.print(line, markup=False)
    console.print(f"Run directory: [bold]{Path(run_dir).resolve()}[/bold]")
    console.print(f"Result: {result_line(rounds, logs.attacks, logs.scores)}", markup=False)
    failed = failed_rounds(rounds, logs.clients)
    for line in failed:
        console.print(f"FAILED {line}", style="bold red", markup=False)
    return failed
