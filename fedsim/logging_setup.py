"""Logging: one line per message under Hydra (Flower adds its own console handler otherwise)."""

from __future__ import annotations

import logging

__all__ = ["tame_flower_logging"]


def tame_flower_logging(level: int = logging.ERROR) -> None:
    """Drop Flower's own console handler and keep only its errors (a failed client is logged;
    our round lines carry the progress); Ray and alembic keep warnings."""
    from flwr.supercore.logger import console_handler

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.removeHandler(console_handler)
    flwr_logger.setLevel(level)
    for name in ("alembic", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
