"""The end-of-run summary: accuracy per round and mean attack scores, as tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from fedsim.logs import load

__all__ = ["attack_summary", "print_summary"]

SCORES = ("precision", "recall", "f1", "exact", "length_error", "l1", "wer", "psnr", "ssim")


def attack_summary(attacks: pd.DataFrame) -> pd.DataFrame:
    """Per attack: rows by status and the mean of each score over the `ok` rows."""
    if attacks.empty:
        return pd.DataFrame()
    counts = attacks.pivot_table(
        index="attack", columns="status", values="round", aggfunc="count", fill_value=0
    )
    ok = attacks[attacks["status"] == "ok"]
    present = [c for c in SCORES if c in attacks.columns]
    means = ok.groupby("attack")[present].mean() if present else pd.DataFrame(index=counts.index)
    seconds = attacks.groupby("attack")["seconds"].mean().rename("seconds")
    order = list(dict.fromkeys(attacks["attack"]))
    counts = counts.rename(
        columns={"not_applicable": "n/a", "error": "errors", "length_error": "len_err"}
    )
    means = means.rename(columns={"precision": "prec", "length_error": "len_err"})
    return counts.join(means, how="left").join(seconds).reindex(order)


def _fmt(value) -> str:
    if isinstance(value, float):
        if pd.isna(value):
            return "–"
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
        for c in ("round", "accuracy", "wer", "loss", "ok", "failures", "non_finite", "seconds")
        if c in rounds
    ]
    for c in cols:
        table.add_column(c, justify="right")
    for _, row in rounds.iterrows():
        table.add_row(*(_fmt(row[c]) for c in cols))
    console.print(table)
    summary = attack_summary(logs.attacks)
    if not summary.empty:
        table = Table(title="Attacks (mean over ok rows)")
        table.add_column("attack")
        for c in summary.columns:
            table.add_column(str(c), justify="right")
        for name, row in summary.iterrows():
            table.add_row(str(name), *(_fmt(v) for v in row.tolist()))
        console.print(table)
    console.print(f"Run directory: [bold]{Path(run_dir).resolve()}[/bold]")
