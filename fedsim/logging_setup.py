"""Logging: one line per message under Hydra (Flower adds its own console handler otherwise)."""

from __future__ import annotations

import logging
from typing import TextIO

__all__ = ["fedsim_lines_to", "tame_flower_logging"]


def tame_flower_logging(level: int = logging.ERROR) -> None:
    """Drop Flower's own console handler and keep only its errors (a failed client is logged;
    our round lines carry the progress); Ray and alembic keep warnings."""
    from flwr.supercore.logger import console_handler

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.removeHandler(console_handler)
    flwr_logger.setLevel(level)
    for name in ("alembic", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def fedsim_lines_to(stream: TextIO) -> None:
    """fedsim's log lines (INFO and up) on `stream` as "[fedsim] message", only where nothing else
    shows them (no handler on fedsim's or the root logger: a Flower process such as the deployed
    ServerApp or a SuperNode, not Hydra or pytest)."""
    fedsim = logging.getLogger("fedsim")
    if fedsim.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[fedsim] %(message)s"))
    fedsim.addHandler(handler)
    fedsim.setLevel(logging.INFO)
