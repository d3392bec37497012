"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (original IDX gz files)."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "CLASSES",
    "DEFAULT_ROOT",
    "ImageSplit",
    "MissingDataError",
    "check_fashion_mnist",
    "load_fashion_mnist",
]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = (
    "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
    "original *-ubyte.gz files in a folder and set FEDSIM_FASHION_MNIST=<folder>."
)


class MissingDataError(FileNotFoundError):
    """A data set is not installed; the message says how to install it."""


@dataclass(frozen=True)
class ImageSplit:
    """Images `(n, 1, 28, 28)` uint8 and labels `(n,)` int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def data_root() -> Path:
    return Path(os.environ.get("FEDSIM_FASHION_MNIST", DEFAULT_ROOT))


def check_fashion_mnist(root: str | None = None) -> Path:
    """The data folder; raises `MissingDataError` (with the install command) if a file is absent."""
    folder = Path(root) if root else data_root()
    missing = [
        str(folder / n) for names in _FILES.values() for n in names if not (folder / n).exists()
    ]
    if missing:
        raise MissingDataError(f"Fashion-MNIST not found ({', '.join(missing)}). {INSTALL_HINT}")
    return folder


@lru_cache(maxsize=4)
def load_fashion_mnist(split: str = "train", root: str | None = None) -> ImageSplit:
    """Load the full Fashion-MNIST `split` ("train": 60,000, "test": 10,000) from IDX gz files."""
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    folder = check_fashion_mnist(root)
    images, labels = (_read_idx(folder / name) for name in _FILES[split])
    return ImageSplit(images=images[:, None, :, :], labels=labels.astype(np.int64))
