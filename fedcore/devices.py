"""The one device resolver: "auto", "cpu", "cuda", "cuda:<i>" -> `torch.device`."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """ "auto" (or None) picks CUDA when present, else CPU; "cpu", "cuda", "cuda:1" are taken as
    given. Raises `ValueError` for a CUDA device when torch sees no GPU, or an unknown name."""
    if isinstance(name, torch.device):
        return name
    name = "auto" if name is None else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={name} was asked for, but torch sees no CUDA GPU; use device=auto or cpu"
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<i>, got {name!r}") from exc
