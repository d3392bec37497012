"""Checks at the top of the attacks' entry points, so that any input either gets an answer or
one `ValueError` naming the problem and the fix (never an overflow, a linear-algebra failure or
an exception from deep inside the math).

Found by fuzzing (`tests/test_fuzz_attacks.py`): the soft-label root search overflows a Python
float at gradients ~1e300; transcript reconstruction fails with NaN/Inf gradients, gradients
whose squared norm overflows the search's dtype, and gradients of the wrong shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["MAX_MAGNITUDE", "check_decoder_grads", "check_magnitude"]

# The largest entry the float64 math accepts: squares and products of two entries stay finite.
MAX_MAGNITUDE = 1e100


def check_magnitude(x: np.ndarray, name: str, limit: float = MAX_MAGNITUDE) -> None:
    """Raise `ValueError` when a finite array has entries beyond `limit` in absolute value."""
    if x.size and float(np.max(np.abs(x))) > limit:
        raise ValueError(
            f"{name} has entries up to {float(np.max(np.abs(x))):.3g}, beyond {limit:g}: not a "
            "loss gradient or layer of a trained network; pass the gradient (-update / lr)"
        )


def check_decoder_grads(
    grads: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.Tensor],
    names: Sequence[str],
    dtype: torch.dtype,
) -> None:
    """Each gradient in `names` (parameter names) that `grads` has must be a tensor of its
    parameter's shape with finite entries whose squared norm is finite in `dtype` (the search's
    float type); raises `ValueError` naming the first that is not. Missing names are left to the
    caller (its error lists what to pass)."""
    for name in names:
        if name not in grads:
            continue
        grad, param = grads[name], params[name]
        if not isinstance(grad, torch.Tensor):
            raise ValueError(f"decoder_grads[{name!r}] must be a torch tensor, got {type(grad)}")
        if tuple(grad.shape) != tuple(param.shape):
            raise ValueError(
                f"decoder_grads[{name!r}] has shape {tuple(grad.shape)}, the parameter "
                f"{tuple(param.shape)}: pass the gradient of the model the server sent"
            )
        wide = grad.detach().to(torch.float64)
        if not bool(torch.isfinite(wide).all()):
            raise ValueError(f"decoder_grads[{name!r}] has non-finite entries (NaN or Inf)")
        if not bool(torch.isfinite(grad.detach().to(dtype).pow(2).sum())):
            raise ValueError(
                f"decoder_grads[{name!r}] is too large for {dtype} (its squared norm overflows):"
                " pass the gradient (-update / lr), or a wider dtype in TranscriptOptions"
            )
