"""Reading packed sets (see `shards.py` for the format) and an in-memory twin for tests.

Both classes offer the interface the loader needs: `len`, `num_classes`, `class_names`,
`image_shape`, `conditional`, `labels` and `gather(indices) -> (B, C, H, W) uint8`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pixeljit.files.download import file_digest
from pixeljit.values import is_integer

from .manifest import (
    PREPARE_HINT,
    check_entry,
    check_layout,
    listed_names,
    member,
    read_manifest_json,
)
from .shards import MANIFEST

MAX_CLASSES = 1 << 20


def check_indices(indices, count: int) -> np.ndarray:
    """`gather`'s indices as int64 (B,), each in [0, count): negative ones would wrap to the
    end silently, a boolean mask would be read as rows 0 and 1, floats truncated."""
    given = np.asarray(indices)
    if given.size == 0:
        return given.astype(np.int64).reshape(0)
    if given.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers (row numbers), got {given.dtype}: pass "
                        "np.flatnonzero(mask) for a boolean mask")  # fmt: skip
    if given.ndim != 1:
        raise ValueError(f"indices must be 1-D (B,), got shape {given.shape}: flatten them")
    low, high = int(given.min()), int(given.max())
    if low < 0 or high >= count:
        bad = low if low < 0 else high
        raise ValueError(f"indices must be in [0, {count}) for {count} images, got {bad}: "
                         "negative indices are not counted from the end")  # fmt: skip
    return given.astype(np.int64)


def check_range(start: int, stop: int, count: int) -> tuple[int, int]:
    """`slice`'s (start, stop) as 0 ≤ start ≤ stop, start ≤ count; stop past the end is cut to
    `count` (the last batch of a loop may ask for more), nothing counts from the end."""
    for name, value in (("start", start), ("stop", stop)):
        if not is_integer(value):
            raise TypeError(f"slice {name} must be an integer, got {value!r}")
    if start < 0 or stop < 0:
        raise ValueError(f"slice({start}, {stop}): start and stop must be ≥ 0 (negative values "
                         "are not counted from the end)")  # fmt: skip
    if start > stop or start > count:
        raise ValueError(f"slice({start}, {stop}) must have start ≤ stop and start ≤ {count} "
                         f"(the images held)")  # fmt: skip
    return int(start), int(min(stop, count))


def _mismatch(folder: Path, what: str) -> ValueError:
    return ValueError(
        f"packed set {folder}: {what}; the files do not match the manifest: {PREPARE_HINT}"
    )


def _open_npy(folder: Path, entry: dict, shape: tuple, dtype, verify: bool) -> np.ndarray:
    """Memory-map one .npy file after checking it against its (already validated) entry.

    The file's size must equal the manifest's byte count and hold the declared data, so a
    manifest declaring more than the file holds is refused before anything is mapped.
    """
    name, _, nbytes, digest = check_entry(folder / MANIFEST, entry)
    path = member(folder, name, folder / MANIFEST)
    if not path.is_file():
        raise FileNotFoundError(f"packed set {folder}: {name} is missing; {PREPARE_HINT}")
    size = path.stat().st_size
    if size != nbytes:
        raise _mismatch(folder, f"{name} has {size} bytes, manifest says {nbytes}")
    data_bytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if size < data_bytes:
        raise _mismatch(folder, f"{name} has {size} bytes, too few for {np.dtype(dtype)} {shape}")
    if verify and file_digest(path) != digest:
        raise _mismatch(folder, f"{name} fails its sha256 check (content changed)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _mismatch(folder, f"{name} is not a readable .npy file ({err})") from err
    if array.shape != shape or array.dtype != dtype:
        raise _mismatch(
            folder,
            f"{name} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}",
        )
    return array


class PackedDataset:
    """A packed set, memory-mapped. The manifest is validated (see `manifest.py`), sizes and
    shapes are always checked against it; `verify=True` also checks every file's sha256."""

    def __init__(self, folder: str | os.PathLike, verify: bool = False):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        manifest = read_manifest_json(self.folder)
        listed_names(manifest, path)  # every file name is plain and inside the folder
        self.manifest = manifest
        self.image_shape, count, self.images_per_shard = check_layout(path, manifest)
        names, num_classes = manifest.get("class_names"), manifest.get("num_classes")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _mismatch(self.folder, f"class_names {names!r} is not a list of names")
        if not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
            raise _mismatch(
                self.folder, f"num_classes {num_classes!r} is not in [1, {MAX_CLASSES}]"
            )
        if len(names) != num_classes:
            raise _mismatch(self.folder, f"{len(names)} class names, {num_classes} classes")
        if not isinstance(manifest.get("conditional"), bool):
            raise _mismatch(self.folder, "conditional is not true or false")
        self.class_names: list[str] = list(names)
        self.num_classes: int = num_classes
        self.conditional: bool = manifest["conditional"]
        counts = [check_entry(path, s)[1] for s in manifest["shards"]]
        if sum(counts) != count:
            raise _mismatch(
                self.folder, f"shards hold {sum(counts)} images, manifest count {count}"
            )
        if any(c != self.images_per_shard for c in counts[:-1]) or (
            counts and not 1 <= counts[-1] <= self.images_per_shard
        ):
            raise _mismatch(
                self.folder, f"shard counts {counts} are not {self.images_per_shard} each"
            )
        self._shards = [
            _open_npy(self.folder, s, (c, *self.image_shape), np.uint8, verify)
            for s, c in zip(manifest["shards"], counts, strict=True)
        ]
        self.labels = np.array(
            _open_npy(self.folder, manifest["labels"], (count,), np.int64, verify)
        )
        if count and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise _mismatch(self.folder, f"labels outside [0, {self.num_classes})")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"PackedDataset({str(self.folder)!r}, count={len(self)}, shape={self.image_shape}, "
            f"classes={self.num_classes})"
        )

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Images at `indices` (B,) as a fresh (B, C, H, W) uint8 array (any order)."""
        indices = check_indices(indices, len(self))
        if len(self._shards) == 1:
            return self._shards[0][indices]
        shard = indices // self.images_per_shard  # (B,)
        local = indices - shard * self.images_per_shard  # (B,)
        out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        for k in np.unique(shard):
            mask = shard == k
            out[mask] = self._shards[k][local[mask]]
        return out

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Images start..stop-1 in packed order, (stop - start, C, H, W) uint8; stop past the
        end is cut to the end, start < 0 or start > stop are refused."""
        start, stop = check_range(start, stop, len(self))
        return self.gather(np.arange(start, stop, dtype=np.int64))


class ArrayDataset:
    """An in-memory set with PackedDataset's interface (for tests and small experiments)."""

    def __init__(self, images, labels=None, class_names: list[str] | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        n = images.shape[0]
        labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels {labels.shape} do not match {n} images")
        if class_names is None:
            class_names = [str(k) for k in range(int(labels.max()) + 1 if n else 1)]
        if n and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"labels outside [0, {len(class_names)})")
        self.images, self.labels = images, labels
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.conditional = self.num_classes > 1
        self.image_shape: tuple[int, int, int] = tuple(images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        return self.images[check_indices(indices, len(self))]

    def slice(self, start: int, stop: int) -> np.ndarray:
        start, stop = check_range(start, stop, len(self))
        return self.images[start:stop]
