"""`task=asr`'s builder: the speech task class that the chosen model needs.

`model=whisper_tiny` needs Whisper's own front end and tokenizer (`WhisperAsrTask`); every LAS
model (`las_whisper`, `las`) takes `AsrTask`. `conf/task/asr.yaml` targets `asr_task`.
"""

from __future__ import annotations

from typing import Any

from fedsim.tasks.asr import AsrTask
from fedsim.tasks.whisper_asr import WhisperAsrTask, is_whisper

__all__ = ["asr_task"]


def asr_task(**kwargs: Any) -> AsrTask:
    """`WhisperAsrTask(**kwargs)` when `kwargs["model"]` is the Whisper fine-tuning node, else
    `AsrTask(**kwargs)` (arguments: see `AsrTask`)."""
    cls = WhisperAsrTask if is_whisper(kwargs.get("model")) else AsrTask
    return cls(**kwargs)
