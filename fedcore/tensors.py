"""One converter from tensors (any device, any float dtype) and array-likes to numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_numpy"]


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """`x` (a torch tensor on any device, an array or a sequence) as a numpy array.

    Half-precision tensors are widened to float32 (numpy has no bfloat16). With `dtype`, the
    result is cast to it (a copy only when needed).
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)
