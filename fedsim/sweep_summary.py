"""Hydra callback printing one cross-job table after a multirun (`fedsim -m ...`).

Registered in conf/config.yaml under `hydra.callbacks`; each row is one job: the config keys in
which the jobs differ, its final accuracy (or WER) and each attack's mean headline score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

__all__ = ["SweepSummary", "print_sweep_table"]


def print_sweep_table(sweep_dir: str | Path) -> None:
    """Print the cross-job table of the runs under `sweep_dir` (nothing if none has logs)."""
    from rich.console import Console
    from rich.table import Table

    from fedsim.analysis import find_runs, sweep_table
    from fedsim.summary import format_value

    runs = find_runs(sweep_dir)
    if len(runs) < 2:
        return
    frame = sweep_table(runs).drop(columns=["run"])
    console = Console()
    console.print(f"Sweep: {len(runs)} runs in {Path(sweep_dir).resolve()}", markup=False)
    table = Table()
    for column in frame.columns:
        table.add_column(str(column), justify="left" if column == "config" else "right")
    for _, row in frame.iterrows():
        table.add_row(*(format_value(v) for v in row.tolist()))
    Console(width=max(console.width, 160)).print(table)


class SweepSummary(Callback):
    """Prints `print_sweep_table` for the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_sweep_table(config.hydra.sweep.dir)
