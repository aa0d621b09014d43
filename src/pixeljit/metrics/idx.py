"""A tiny reader for Fashion-MNIST's gzipped IDX files, local to the metrics package.

Kept self-contained (rather than importing `pixeljit.data`) so that the metrics — and the shipped
Fashion-MNIST classifier — depend on nothing but torch and numpy.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "PIXELJIT_FASHION_MNIST"
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (files under "
    f"{FASHION_MNIST_DIR}) or point ${FASHION_MNIST_ENV} at a folder holding the four "
    "*-idx?-ubyte.gz files"
)
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one Fashion-MNIST uses


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one (optionally gzipped) IDX file of unsigned bytes into an array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX type code {raw[2]:#x} unsupported (only unsigned bytes)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} bytes (truncated?)")
    return data.reshape(shape)


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """The Fashion-MNIST folder: `root`, else ${PIXELJIT_FASHION_MNIST}, else the system copy."""
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR
    return Path(root)


def load_fashion_mnist(
    split: str = "test", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images (N, 1, 28, 28) uint8 and labels (N,) int64 of `split` (train/test)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    folder = fashion_mnist_dir(root)
    image_file, label_file = (folder / name for name in SPLIT_FILES[split])
    for file in (image_file, label_file):
        if not file.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {file} not found: {INSTALL_HINT}")
    images = torch.from_numpy(read_idx(image_file).copy())  # (N, 28, 28)
    labels = torch.from_numpy(read_idx(label_file).astype(np.int64))  # (N,)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{folder}: images {tuple(images.shape)} / labels {tuple(labels.shape)}")
    return images.unsqueeze(1), labels
