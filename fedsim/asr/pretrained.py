"""Shipped speech checkpoints: a trained model, its word pieces and how it was made.

A checkpoint folder (`fedsim/asr/pretrained/<name>/`, or any folder given by path) holds
- `model.pt`: the state dict, float16 (a few MB), loaded back as float32;
- `tokenizer.model`: the sentencepiece word pieces the model's vocabulary is made of;
- `info.json`: the model node it was built from, the corpus, steps, and its measured WERs.
`bench/asr_train.py --model las_whisper` writes one; `model.init=pretrained` starts from it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["SHIPPED", "checkpoint_folder", "load_state", "read_info", "save_checkpoint"]

SHIPPED = Path(__file__).parent / "pretrained"


def checkpoint_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder of a shipped checkpoint name (e.g. "las_whisper") or of a path."""
    path = Path(name_or_path)
    return path if path.is_absolute() or len(path.parts) > 1 else SHIPPED / path


def read_info(folder: Path) -> dict[str, Any]:
    """The checkpoint's `info.json` (empty when it has none)."""
    path = folder / "info.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """The float32 state dict of the checkpoint in `folder` (ValueError when it has none)."""
    path = folder / "model.pt"
    if not path.exists():
        raise ValueError(
            f"no trained checkpoint at {path}; train one with `python bench/asr_train.py "
            f"--model las_whisper --out {folder}` or set model.init=scratch"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def save_checkpoint(
    folder: Path, model: torch.nn.Module, tokenizer_path: Path, info: dict[str, Any]
) -> None:
    """Write `model.pt` (float16), `tokenizer.model` and `info.json` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, folder / "model.pt")
    if tokenizer_path.resolve() != (folder / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer_path, folder / "tokenizer.model")
    (folder / "info.json").write_text(json.dumps(info, indent=1) + "\n")
