"""Global-model checkpoints of a run: `checkpoints/latest.pt` every round (and every round's,
when asked), so a stopped run can resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["Checkpoints"]


class Checkpoints:
    """`<run_dir>/checkpoints/`: `latest.pt` = {"round": r, "model": state dict}.

    Args:
        run_dir: the run directory.
        keep_all: also keep `round_<r>.pt` for every round.
    """

    def __init__(self, run_dir: str | Path, keep_all: bool = False) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_all = keep_all

    @property
    def latest(self) -> Path:
        return self.dir / "latest.pt"

    def save(self, round_: int, state: dict[str, torch.Tensor]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = {"round": round_, "model": state}
        tmp = self.latest.with_suffix(".tmp")
        torch.save(saved, tmp)
        tmp.replace(self.latest)  # atomic: a killed run never leaves half a checkpoint
        if self.keep_all:
            torch.save(saved, self.dir / f"round_{round_:04d}.pt")

    def load_latest(self) -> tuple[int, dict[str, Any]]:
        """(round, state dict) of `latest.pt`."""
        saved = torch.load(self.latest, weights_only=False)
        return int(saved["round"]), saved["model"]
