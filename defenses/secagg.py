"""Secure aggregation (Flower's SecAgg+): the server sees only the sum of the round's updates.

The protection is the protocol, not a transform: `__call__` is the identity, and
`secure_aggregation = True` tells the simulation to run Flower's SecAgg+ (its client mod and
server workflow) instead of showing the observer each client's reply. The observer then attacks
the round's aggregate, once per round.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["SecAggPlus"]


class SecAggPlus:
    """Flower's SecAgg+ protocol; the parameters are those of its server workflow.

    Clients send their update `after - before` of the floating-point tensors (integer buffers
    such as BatchNorm's `num_batches_tracked` keep the global value), multiplied by
    `num_examples / max_weight`, clipped to `[-clipping_range, clipping_range]` and stochastically
    quantised to `quantization_range` levels; the server dequantises the masked sum into the
    FedAvg mean. One client's error is below one step `2 * clipping_range / quantization_range`
    (3.8e-6 with the defaults), and the mean's below that too.

    Args:
        num_shares: shares each client's secrets are split into (an int > 2, or a float in
            (0, 1]: that fraction of the round's clients; 1.0: all of them).
        reconstruction_threshold: shares needed to rebuild a secret (an int < num_shares, or a
            float in (0, 1]: that fraction of num_shares).
        clipping_range: the bound on every entry of a weighted update (weight units; Flower's
            default 8.0 covers EfficientNet-B0's first-round updates, up to 1.4 at lr 0.02).
            Entries beyond it are clipped (the client logs a warning); a smaller range gives a
            finer step.
        quantization_range: integer levels per entry (at most `modulus_range / clients`).
        modulus_range: the mask modulus, a power of 2 up to 2**32.
        max_weight: the largest `num_examples` a client reports; None: N * K of the run, so
            every weight is 1 and costs no precision.
    """

    name = "secagg"
    secure_aggregation = True

    def __init__(
        self,
        num_shares: int | float = 3,
        reconstruction_threshold: int | float = 2,
        clipping_range: float = 8.0,
        quantization_range: int = 2**22,
        modulus_range: int = 2**32,
        max_weight: float | None = None,
    ) -> None:
        _check_count("num_shares", num_shares)
        _check_count("reconstruction_threshold", reconstruction_threshold)
        if isinstance(num_shares, int) and num_shares == 2:
            raise ValueError("SecAgg+ num_shares as an integer must be > 2 (or 1.0: all clients)")
        ints = isinstance(num_shares, int) and isinstance(reconstruction_threshold, int)
        if ints and num_shares > 2 and not reconstruction_threshold < num_shares:
            raise ValueError(
                f"SecAgg+ reconstruction_threshold ({reconstruction_threshold}) must be below "
                f"num_shares ({num_shares})"
            )
        if not clipping_range > 0:
            raise ValueError(f"SecAgg+ clipping_range must be > 0, got {clipping_range}")
        if not isinstance(modulus_range, int) or modulus_range < 2 or modulus_range > 2**32:
            raise ValueError(
                f"SecAgg+ modulus_range must be an int in [2, 2**32], got {modulus_range!r}"
            )
        if modulus_range & (modulus_range - 1):
            raise ValueError(f"SecAgg+ modulus_range must be a power of 2, got {modulus_range}")
        if not isinstance(quantization_range, int) or not 0 < quantization_range < modulus_range:
            raise ValueError(
                f"SecAgg+ quantization_range must be an int in (0, modulus_range), "
                f"got {quantization_range}"
            )
        if max_weight is not None and not max_weight > 0:
            raise ValueError(f"SecAgg+ max_weight must be > 0 or null, got {max_weight}")
        self.num_shares, self.reconstruction_threshold = num_shares, reconstruction_threshold
        self.clipping_range, self.quantization_range = float(clipping_range), quantization_range
        self.modulus_range, self.max_weight = modulus_range, max_weight

    @property
    def quantization_step(self) -> float:
        """One quantisation step in weight units (a weighted update entry's resolution)."""
        return 2 * self.clipping_range / self.quantization_range

    def __call__(self, update: dict[str, Tensor], state: dict) -> dict[str, Tensor]:
        return update


def _check_count(name: str, value: int | float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"SecAgg+ {name} must be an int or a float, got {value!r}")
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"SecAgg+ {name} as a float must be in (0, 1], got {value}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"SecAgg+ {name} as an int must be >= 1, got {value}")
