"""Fashion-MNIST (Zalando, MIT): 60,000 + 10,000 grey 28x28 images in 10 classes.

Where the IDX files are looked for, in order (the first folder holding both files of the split
wins; gzipped or raw):
- `root`, when given (and only there: an explicit folder never falls back elsewhere);
- otherwise the Debian package's folder /usr/share/datasets/fashion-mnist
  (`sudo apt-get install dataset-fashion-mnist`), then the user cache
  ($XDG_CACHE_HOME or ~/.cache)/pixeljit/fashion-mnist.
With `download=True` a missing split is fetched, with the other one, from Zalando's official
mirror into `root` (or the cache) and each file is checked against the MD5 published in the
Fashion-MNIST README.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from pixeljit.files.cache import cache_root
from pixeljit.files.download import DOWNLOAD_TIMEOUT_S, download, file_digest
from pixeljit.files.idx import read_idx

from .fingerprint import FINGERPRINT_KEY, paths_fingerprint
from .source import SourceStream, batch_images
from .transforms import CROP_RULE, GREY, check_channels, check_size, resize_stack

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NATIVE_SIZE = 28
# Not mirror-symmetric: every sandal, sneaker and ankle boot faces left, so random horizontal
# flips add right-facing shoes the data does not hold (measured on the demo model: FD-FMNIST
# 10.98 with flips, 4.26 without; docs/demo_tuning.md).
FACING_CLASSES = ("Sandal", "Sneaker", "Ankle boot")
MIRROR_WARNING = (
    "data.flip=true mirrors Fashion-MNIST images, but its sandals, sneakers and ankle boots all "
    "face left: the model also learns right-facing shoes that the data does not hold (the demo "
    "model's FD-FMNIST: 4.26 without flips, 10.98 with them); set data.flip=false (--set "
    "data.flip=false) unless you want mirrored images"
)
SPLITS = ("train", "test")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# split -> (images file, labels file), without the .gz suffix
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The MD5 sums of the official .gz files, as published in the Fashion-MNIST README.
OFFICIAL_CHECKSUMS: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
}

_RESIZE_BATCH = 1024


def default_cache_dir() -> Path:
    """<pixeljit cache>/fashion-mnist (see pixeljit.files.cache)."""
    return cache_root() / "fashion-mnist"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Fashion-MNIST split must be one of {SPLITS}, got {split!r}")
    return split


def install_hint(split: str, searched: list[Path]) -> str:
    """The 'not found' message: where we looked and the exact ways to get the files."""
    images, labels = FILES[split]
    where = ", ".join(str(p) for p in searched)
    return (
        f"Fashion-MNIST ({split} split) not found: looked for {images}[.gz] and {labels}[.gz] "
        f"in {where}. To install it: on Debian/Ubuntu run `sudo apt-get install "
        f"dataset-fashion-mnist` (files go to {DEBIAN_DIR}); elsewhere fetch it once into "
        f"{default_cache_dir()} (checksum-verified) with `pixeljit prepare fashion-mnist "
        f"--download --size 28 --out DIR` (Python: download=True), or put the four .gz files "
        f"from {OFFICIAL_BASE_URL} into {default_cache_dir()} yourself."
    )


def _find_in(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for name in FILES[split]:
        hit = next((folder / n for n in (f"{name}.gz", name) if (folder / n).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def find_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """(images path, labels path) of a split, or FileNotFoundError with install instructions."""
    _check_split(split)
    searched = [Path(root)] if root is not None else [DEBIAN_DIR, default_cache_dir()]
    for folder in searched:
        hit = _find_in(folder, split)
        if hit is not None:
            return hit
    raise FileNotFoundError(install_hint(split, searched))


def _download_hint(dest: Path) -> str:
    return (
        "; or get the files another way: on Debian/Ubuntu `sudo apt-get install "
        f"dataset-fashion-mnist`, or download {dest.name} by hand into {dest.parent}"
    )


def download_fashion_mnist(
    dest: str | os.PathLike | None = None,
    split: str = "train",
    base_url: str | None = None,
    checksums: Mapping[str, tuple[str, str]] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Fetch the two .gz files of `split` into `dest` (default: the cache), checksum-verified.

    Files already present with the right checksum are kept. `checksums` maps each file name to
    (hashlib algorithm, hex digest), default OFFICIAL_CHECKSUMS; `base_url` (default
    OFFICIAL_BASE_URL) may be any urllib URL (tests use file://).
    """
    _check_split(split)
    base_url = OFFICIAL_BASE_URL if base_url is None else base_url
    checksums = OFFICIAL_CHECKSUMS if checksums is None else checksums
    folder = Path(dest) if dest is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES[split]:
        filename = f"{name}.gz"
        if filename not in checksums:
            raise ValueError(f"no checksum known for {filename}: refusing an unverified download")
        algorithm, expected = checksums[filename]
        target = folder / filename
        if target.is_file() and file_digest(target, algorithm) == expected:
            continue
        url = base_url.rstrip("/") + "/" + filename
        download(url, target, expected, algorithm, timeout, hint=_download_hint(target))
    return folder


def locate_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None, download: bool = False
) -> tuple[Path, Path]:
    """Find a split's (images, labels) files, downloading them first if asked and missing. A
    download fetches every split (four small files): the demo scores against the test split
    after training on the train split, and would otherwise fail only at its end."""
    try:
        return find_fashion_mnist(split, root)
    except FileNotFoundError:
        if not download:
            raise
    _check_split(split)
    for each in (split, *(s for s in FILES if s != split)):
        folder = download_fashion_mnist(root, each)
    return find_fashion_mnist(split, folder)


def read_fashion_mnist(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 from a pair of IDX files, validated."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST files disagree: images {images.shape} in {images_path}, labels "
            f"{labels.shape} in {labels_path} (expected (N, H, W) and (N,))"
        )
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return images[:, None], labels.astype(np.int64)  # (N, 1, H, W), (N,)


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of a split (see the module doc)."""
    return read_fashion_mnist(*locate_fashion_mnist(split, root, download))


def fashion_mnist_stream(
    size: int = NATIVE_SIZE,
    split: str = "train",
    channels: int = GREY,
    root: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
) -> SourceStream:
    """Fashion-MNIST resized to `size` (ADM rule) with 1 or 3 channels, for `prepare`."""
    check_size(size)
    check_channels(channels)
    images_path, labels_path = locate_fashion_mnist(split, root, download)
    images, labels = read_fashion_mnist(images_path, labels_path)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]

    per_batch = batch_images(_RESIZE_BATCH, channels, size)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(images), per_batch):
            chunk = images[start : start + per_batch]  # (n, 1, 28, 28)
            yield resize_stack(chunk, size, channels), labels[start : start + per_batch]

    description = {
        "kind": "fashion-mnist",
        "split": split,
        "images_file": str(images_path),
        "labels_file": str(labels_path),
        "native_size": NATIVE_SIZE,
        "crop": CROP_RULE,
        "license": "MIT (Zalando SE)",
        FINGERPRINT_KEY: paths_fingerprint([images_path, labels_path]),
    }
    return SourceStream(list(CLASS_NAMES), True, description, batches(), total=len(images))
