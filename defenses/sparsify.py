"""Keep the largest-magnitude entries of an update: the mask shared by GradDrop and top-k."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["SCOPES", "check_scope", "keep_largest"]


def _mask(flat: Tensor, keep: int) -> Tensor:
    """Mask of the `keep` largest-|x| entries of the 1-D `flat` (ties broken by position)."""
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep >= flat.numel():
        mask[:] = True
    elif keep > 0:
        order = torch.argsort(flat.abs(), stable=True)
        mask[order[flat.numel() - keep :]] = True
    return mask


def keep_largest(
    update: dict[str, Tensor], count: Callable[[int], int], scope: str
) -> dict[str, Tensor]:
    """Zero all but the largest-|x| entries of `update` (same keys, shapes and dtypes).

    `count(n)` says how many of `n` entries to keep. `scope="tensor"` ranks each tensor on its
    own (every layer keeps `count(numel)` entries); `scope="global"` ranks all entries of all
    tensors together (`count(total)` in all; layers with small updates may lose every entry).
    """
    if scope == "tensor":
        return {k: v * _mask(v.flatten(), count(v.numel())).view_as(v) for k, v in update.items()}
    names = list(update)
    if not names:
        return {}
    flat = torch.cat([update[k].flatten().to(torch.float64) for k in names])
    mask = _mask(flat, count(flat.numel()))
    out, pos = {}, 0
    for k in names:
        n = update[k].numel()
        out[k] = update[k] * mask[pos : pos + n].view_as(update[k])
        pos += n
    return out


SCOPES = ("tensor", "global")


def check_scope(scope: str, who: str) -> None:
    """Raise ValueError naming `who` unless `scope` is "tensor" or "global"."""
    if scope not in SCOPES:
        raise ValueError(f"{who} scope must be 'tensor' or 'global', got {scope!r}")
