"""Feedback during long work: the device a run computes on, and how many client replies of a
round have arrived (a line every `every` seconds while a round waits)."""

from __future__ import annotations

import logging
import os
import time

import torch

__all__ = ["ReplyProgress", "device_line"]

log = logging.getLogger("fedsim")


def device_line(device: torch.device) -> str:
    """ "device: CPU, 2 torch threads (2 cores)" or "device: cuda:0 (NVIDIA H200)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"device: cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"device: CPU, {torch.get_num_threads()} torch threads ({os.cpu_count()} cores)"


class ReplyProgress:
    """Logs "round R: k/n client replies after S s" every `every` seconds while a round waits
    (call `update(k)` on each poll); silent for rounds shorter than `every`. Round 0: a message
    exchange outside training (the partition query)."""

    def __init__(self, round_: int, expected: int, every: float = 10.0) -> None:
        self.round, self.expected, self.every = round_, expected, every
        self.start = time.monotonic()
        self.next = self.start + every

    def update(self, arrived: int) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.every
        log.info(
            "round %d: %d/%d client replies after %.0f s",
            self.round, arrived, self.expected, now - self.start,
        )  # fmt: skip
