"""Writing a packed set: uint8 image shards + int64 labels + manifest.json, atomically.

On disk (format version 1):
    images-00000.npy ...  (n_k, C, H, W) uint8, `images_per_shard` each but the last
    labels.npy            (N,) int64
    manifest.json         what, how many, which shape, per-file byte size and sha256
Everything is written into a hidden sibling folder which is renamed onto the target at the
end (see outdir.py), so a crash never leaves a half-written set behind a valid-looking manifest;
manifest.py reads a manifest back without trusting it. `.npy` keeps
the files readable by plain numpy and memory-mappable (`np.load(..., mmap_mode="r")`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pixeljit.files.atomic import temp_sibling
from pixeljit.values import is_integer

FORMAT_NAME = "pixeljit-packed"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS_FILE = "labels.npy"
SHARD_PATTERN = "images-{:05d}.npy"
DEFAULT_SHARD_BYTES = 1 << 30  # ~1 GiB of pixels per shard
_FIRST_BUFFER = 256  # images buffered before the shard buffer grows
MAX_SHARD_BYTES = 1 << 34  # 16 GiB: a shard is buffered in memory while it is written


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, fh):
        self.fh, self.digest, self.bytes = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.bytes += view.nbytes
        return self.fh.write(view)


def save_npy(path: Path, array: np.ndarray) -> dict:
    """Write one .npy file; return its manifest entry (file, count, bytes, sha256)."""
    with open(path, "wb") as fh:
        writer = _HashingWriter(fh)
        np.lib.format.write_array(writer, np.ascontiguousarray(array), allow_pickle=False)
    return {
        "file": path.name,
        "count": int(array.shape[0]),
        "bytes": writer.bytes,
        "sha256": writer.digest.hexdigest(),
    }


def default_images_per_shard(image_shape: tuple[int, int, int]) -> int:
    return max(1, DEFAULT_SHARD_BYTES // int(np.prod(image_shape)))


def check_images_per_shard(images_per_shard: int, image_shape: tuple[int, int, int]) -> int:
    """Validate a shard length: at least 1 image, at most MAX_SHARD_BYTES of pixels."""
    image_bytes = int(np.prod(image_shape))
    most = max(1, MAX_SHARD_BYTES // image_bytes)
    valid = is_integer(images_per_shard)
    if not valid or not 1 <= images_per_shard <= most:
        raise ValueError(
            f"images_per_shard (--images-per-shard) must be an integer in [1, {most}] for "
            f"{image_shape} images (shards of at most {MAX_SHARD_BYTES >> 30} GiB), "
            f"got {images_per_shard!r}"
        )
    return int(images_per_shard)


class ShardWriter:
    """Accumulates (n, C, H, W) uint8 batches and writes fixed-size shards into `folder`."""

    def __init__(self, folder: Path, image_shape: tuple[int, int, int], images_per_shard: int):
        images_per_shard = check_images_per_shard(images_per_shard, tuple(image_shape))
        self.folder, self.image_shape = folder, tuple(image_shape)
        self.per_shard = images_per_shard
        # (n, C, H, W); grows up to one shard as images arrive, so a small set stays small
        self._buffer = np.empty((min(images_per_shard, _FIRST_BUFFER), *image_shape), np.uint8)
        self._filled = 0
        self._labels: list[np.ndarray] = []
        self.shards: list[dict] = []

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"batch {images.dtype} {images.shape} does not match uint8 (n, *{self.image_shape})"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels {labels.shape} do not match {images.shape[0]} images")
        self._labels.append(labels.astype(np.int64))
        start = 0
        while start < len(images):
            take = min(self.per_shard - self._filled, len(images) - start)
            self._reserve(self._filled + take)
            self._buffer[self._filled : self._filled + take] = images[start : start + take]
            self._filled += take
            start += take
            if self._filled == self.per_shard:
                self._flush()

    def _reserve(self, needed: int) -> None:
        if needed <= len(self._buffer):
            return
        grown = np.empty(
            (min(self.per_shard, max(needed, 2 * len(self._buffer))), *self.image_shape), np.uint8
        )
        grown[: self._filled] = self._buffer[: self._filled]
        self._buffer = grown

    def _flush(self) -> None:
        path = self.folder / SHARD_PATTERN.format(len(self.shards))
        self.shards.append(save_npy(path, self._buffer[: self._filled]))
        self._filled = 0

    def finish(self) -> tuple[list[dict], dict, np.ndarray]:
        """Write the last partial shard and the labels; (shard entries, labels entry, labels)."""
        if self._filled:
            self._flush()
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        return self.shards, save_npy(self.folder / LABELS_FILE, labels), labels


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = temp_sibling(path)
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
