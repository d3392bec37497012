"""One converter from tensors (any device, any float dtype) and array-likes to numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_numpy"]


def to_numpy(
    x: Any, dtype: Any = None, *, floating: bool = False, finite: bool = False, name: str = "x"
) -> np.ndarray:
    """`x` (a torch tensor on any device, an array or a sequence) as a numpy array.

    Half-precision tensors are widened to float32 (numpy has no bfloat16). With `dtype`, the
    result is cast to it (a copy only when needed). With `floating`, float32 and float64 are
    kept and anything else is widened: float16 to float32, integers and booleans to float64.
    With `finite`, a NaN or Inf entry raises `ValueError` naming `name`.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    array = np.asarray(x, dtype=dtype)
    if floating and array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32 if array.dtype == np.float16 else np.float64)
    if finite and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite entries (NaN or Inf); pass finite values")
    return array
