"""`prepare`: any source -> a packed set on disk (the one entry point behind `pixeljit prepare`).

SOURCE is "fashion-mnist", "emoji", or a path to an image folder (a folder literally named
like a keyword can be passed as ./emoji). Grey Fashion-MNIST keeps 1 channel unless
`channels=3`; the other sources default to RGB.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from pixeljit.files import GIB
from pixeljit.files.atomic import DISK_FULL
from pixeljit.values import is_integer

from .emoji import emoji_stream
from .fashion_mnist import fashion_mnist_stream
from .folders import LAYOUTS, folder_stream
from .outdir import check_output, open_staging, publish
from .progress import PackProgress
from .shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    ShardWriter,
    check_images_per_shard,
    default_images_per_shard,
    write_json_atomic,
)
from .source import BadImage, SourceStream
from .text import utf8_text
from .transforms import COLOUR, GREY, check_channels, check_size

FASHION_MNIST = "fashion-mnist"
EMOJI = "emoji"
KEYWORD_SOURCES = (FASHION_MNIST, EMOJI)
EMOJI_SPLIT = "train"  # the emoji set is one split; "train" is accepted as its name
MAX_WORKERS = 256  # decoding processes
KIB, MIB = 2**10, 2**20
# what a pack too large for its disk calls for, unless the caller names its own (the cache's)
DISK_FIX = "pack at a smaller size, fewer images (--limit), or into another folder"


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare` wrote, and what it left out."""

    out_dir: Path
    count: int
    image_shape: tuple[int, int, int]
    num_classes: int
    seconds: float
    skipped: list[BadImage] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # declared classes left with no image (a small limit, or all their images skipped): the set
    # keeps them in its label space, so labels mean the same as in the full data set
    empty_classes: list[str] = field(default_factory=list)


def native_channels(source) -> int:
    """The channels a source is packed with when none are asked for: grey for Fashion-MNIST,
    colour for the others (emoji, image folders: grey images in a folder are repeated)."""
    return GREY if str(source) == FASHION_MNIST else COLOUR


def _open_source(
    source: str | os.PathLike,
    size: int,
    channels: int | None,
    split: str | None,
    skip_bad: bool,
    data_dir: str | os.PathLike | None,
    download: bool,
    font_path: str | os.PathLike | None,
    layout: str,
    limit: int | None,
    num_workers: int,
) -> SourceStream:
    key = str(source)
    if data_dir is not None and key != FASHION_MNIST:
        raise ValueError("data_dir (--data-dir) only applies to fashion-mnist")
    if font_path is not None and key != EMOJI:
        raise ValueError("font_path (--font) only applies to emoji")
    if download and key != FASHION_MNIST:
        raise ValueError("download (--download) only applies to fashion-mnist")
    if layout != "auto" and key in KEYWORD_SOURCES:
        raise ValueError(f"layout (--layout) only applies to image folders, not {key}")
    if num_workers != 0 and key in KEYWORD_SOURCES:
        raise ValueError(
            f"num_workers (--workers) only applies to image folders (it sets their decoding "
            f"processes), not {key}: leave it out"
        )
    if skip_bad and key == FASHION_MNIST:
        raise ValueError(
            f"skip_bad (--skip-bad) only applies to image folders and {EMOJI}, not {key} (its "
            "IDX files are read whole, with no single image to skip): leave it out"
        )
    ch = native_channels(key) if channels is None else channels
    if key == FASHION_MNIST:
        return fashion_mnist_stream(size, split or "train", ch, data_dir, download, limit)
    if key == EMOJI:
        if split not in (None, EMOJI_SPLIT):
            raise ValueError(
                f"the emoji set has one split, {EMOJI_SPLIT!r} (all glyphs): got {split!r}"
            )
        return emoji_stream(size, ch, font_path, limit, skip_bad)
    if Path(source).exists() and not Path(source).is_dir():
        raise ValueError(
            f"source {key!r} is a file, not a folder: pass the folder that holds the images "
            f"(or one of {', '.join(KEYWORD_SOURCES)})"
        )
    if not Path(source).is_dir():
        raise FileNotFoundError(
            f"source {key!r} is neither {' nor '.join(KEYWORD_SOURCES)} nor an existing folder"
        )
    return folder_stream(source, size, ch, split, layout, skip_bad, limit, num_workers)


def prepare(
    source: str | os.PathLike,
    size: int,
    out_dir: str | os.PathLike,
    *,
    split: str | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    font_path: str | os.PathLike | None = None,
    layout: str = "auto",
    limit: int | None = None,
    images_per_shard: int | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    disk_fix: str = DISK_FIX,
) -> PrepareResult:
    """Pack `source` at `size` x `size` into `out_dir` (see shards.py for the format).

    split: fashion-mnist "train" (default) or "test"; for folders the sub-folder to use.
    channels: 1 or 3 (default: 1 for fashion-mnist, 3 otherwise).
    skip_bad: skip (and list in the manifest) unreadable images instead of failing.
    data_dir / download: where Fashion-MNIST lives / fetch it if missing (checksum-verified).
    layout: for folders, "auto", "classes" or "flat". limit: keep the first N images.
    num_workers: for folders, decoding processes (0: decode in this process).
    A class left with no image (by `limit`, or all its images skipped) stays declared and is
    named in the result's `empty_classes`. disk_fix: what a disk too small for the pack is told
    to do (the data cache names its own).
    """
    size = check_size(size, "size (--size)")  # NumPy integers as ints, from here on
    if channels is not None:
        channels = check_channels(channels)
    if layout not in LAYOUTS:
        raise ValueError(f"layout (--layout) must be one of {LAYOUTS}, got {layout!r}")
    limit = _check_count("limit", "--limit", limit, 1, None)
    num_workers = _check_count("num_workers", "--workers", num_workers, 0, MAX_WORKERS)
    if images_per_shard is not None:
        ch = channels or native_channels(source)
        images_per_shard = check_images_per_shard(images_per_shard, (ch, size, size))
    sources = _source_folders(source, data_dir)
    out_dir = check_output(out_dir, overwrite, sources)
    start = time.perf_counter()
    staging = open_staging(out_dir)  # an unwritable output fails now, not after the packing
    try:
        stream = _open_source(
            source, size, channels, split, skip_bad, data_dir, download, font_path, layout, limit,
            num_workers,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return write_stream(
        stream, out_dir, images_per_shard, overwrite, progress, start, staging, sources, disk_fix
    )


def _check_count(name: str, flag: str, value: int | None, low: int, high: int | None) -> int | None:
    """An optional integer argument within [low, high] (None = no limit / not given), as an
    int."""
    if value is None:
        return None
    if not is_integer(value) or not (value >= low and (high is None or value <= high)):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} ({flag}) must be an integer {bound}, got {value!r}")
    return int(value)


def _source_folders(source: str | os.PathLike, data_dir: str | os.PathLike | None) -> list[Path]:
    """The folders a source reads from, which the output must stay out of."""
    folders = [Path(data_dir)] if data_dir is not None else []
    if str(source) not in KEYWORD_SOURCES or Path(source).is_dir():
        folders.append(Path(source))
    return folders


def _check_images(images: np.ndarray) -> np.ndarray:
    """`pack_arrays`' images as the reader (PackedDataset) and training take them: non-empty
    uint8 (N, C, H, W), C = 1 or 3 (as `prepare` packs). H ≠ W is kept: the reader takes it
    (training then asks for square images)."""
    shape = images.shape
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:  # noqa: PLR2004
        raise ValueError(f"images must be non-empty uint8 (N, C, H, W), got {images.dtype} "
                         f"{shape}: convert with images.astype(np.uint8) (values 0..255) and "
                         "stack them into one (N, C, H, W) array")  # fmt: skip
    if shape[1] not in (GREY, COLOUR):
        nhwc = shape[3] in (GREY, COLOUR)
        raise ValueError(f"images must be (N, C, H, W) with C = 1 (grey) or 3 (RGB), got shape "
                         f"{shape}" + (": this looks like NHWC (channels last); pass "
                         "images.transpose(0, 3, 1, 2)" if nhwc else ""))  # fmt: skip
    return images


def _check_labels(labels, count: int) -> np.ndarray:
    """`pack_arrays`' labels as int64: integers ≥ 0, one per image (floats are refused, not
    truncated)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers (class indices), got {labels.dtype}: pass "
                        "labels.astype(np.int64) if they are whole numbers")  # fmt: skip
    if labels.shape != (count,):
        raise ValueError(f"labels must be 1-D, one per image ({count},), got shape "
                         f"{labels.shape}")  # fmt: skip
    if count and labels.min() < 0:
        raise ValueError(f"labels must be classes ≥ 0, got {labels.min()}")
    return labels.astype(np.int64)


def pack_arrays(
    images: np.ndarray,
    out_dir: str | os.PathLike,
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
    *,
    description: dict | None = None,
    images_per_shard: int | None = None,
    overwrite: bool = False,
) -> PrepareResult:
    """Pack in-memory uint8 images (N, C, H, W) (+ int64 labels (N,)) as a packed set.

    Without labels the set is unconditional (one class, label 0); without class names the
    classes are named "0", "1", ... up to the largest label.
    """
    images = _check_images(np.asarray(images))
    conditional = labels is not None
    labels = (
        np.zeros(len(images), np.int64) if labels is None else _check_labels(labels, len(images))
    )
    if class_names is None:
        class_names = [str(k) for k in range(int(labels.max()) + 1)] if conditional else ["all"]
    stream = SourceStream(
        list(class_names),
        conditional,
        description or {"kind": "arrays"},
        iter([(images, labels)]),
        total=len(images),
    )
    return write_stream(stream, out_dir, images_per_shard, overwrite)


def write_stream(
    stream: SourceStream,
    out_dir: str | os.PathLike,
    images_per_shard: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    start: float | None = None,
    staging: Path | None = None,
    sources: list[Path] | None = None,
    disk_fix: str = DISK_FIX,
) -> PrepareResult:
    """Consume a source stream into a packed set at `out_dir`, atomically (see outdir.py)."""
    sources = sources or []
    out_dir = Path(out_dir)
    start = time.perf_counter() if start is None else start
    if staging is None:  # `prepare` made (and checked) it before opening the source
        check_output(out_dir, overwrite, sources)
        staging = open_staging(out_dir)
    try:
        count, shape, class_counts = _pack(stream, staging, images_per_shard, progress, disk_fix)
        publish(staging, out_dir, overwrite, sources)
    except OSError as err:  # a full disk, a vanished folder: one line, nothing half-written
        shutil.rmtree(staging, ignore_errors=True)
        full = err.errno in DISK_FULL and err.strerror  # its reason, not the hidden file's name
        fix = f"{err.strerror}): free space on its disk, or {disk_fix}" if full else f"{err})"
        raise ValueError(f"packing into {out_dir} failed, nothing was written ({fix}") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrepareResult(
        out_dir,
        count,
        shape,
        len(stream.class_names),
        time.perf_counter() - start,
        list(stream.skipped),
        list(stream.ignored),
        [name for name, n in zip(stream.class_names, class_counts, strict=True) if n == 0],
    )


def _pack(
    stream: SourceStream, staging: Path, images_per_shard: int | None, progress: bool,
    disk_fix: str = DISK_FIX,
) -> tuple[int, tuple[int, int, int], list[int]]:  # fmt: skip
    """Write shards, labels and manifest into `staging`; (count, image shape, class counts)."""
    writer: ShardWriter | None = None
    with PackProgress(stream, progress) as bar:  # skipped images count; warnings on own lines
        for images, labels in stream.batches:  # (n, C, H, W) uint8, (n,) int64
            if writer is None:
                shape = tuple(images.shape[1:])
                _check_disk_space(staging, stream.total, shape, disk_fix)
                per_shard = images_per_shard or default_images_per_shard(shape)
                writer = ShardWriter(staging, shape, per_shard)
            writer.add(images, labels)
            bar.advance(len(images))
    if writer is None:
        if not stream.skipped:
            raise ValueError("the source holds no images: point it at a non-empty data set")
        reasons = "; ".join(f"{b.path}: {b.reason}" for b in stream.skipped[:5])
        raise ValueError(
            f"no readable images in the source ({len(stream.skipped)} skipped: {reasons})"
        )
    shards, labels_entry, labels = writer.finish()
    num_classes = len(stream.class_names)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels outside [0, {num_classes}) for classes {stream.class_names}")
    channels, height, width = writer.image_shape
    class_counts = np.bincount(labels, minlength=num_classes).tolist()
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "count": int(labels.shape[0]),
        "shape": list(writer.image_shape),
        "channels": channels,
        "size": height if height == width else None,
        "dtype": "uint8",
        "label_dtype": "int64",
        "num_classes": num_classes,
        "class_names": stream.class_names,
        "conditional": stream.conditional,
        "class_counts": class_counts,
        "images_per_shard": writer.per_shard,
        "shards": shards,
        "labels": labels_entry,
        "source": stream.description,
        "skipped": [
            {"path": utf8_text(b.path), "reason": utf8_text(b.reason)} for b in stream.skipped
        ],
        "ignored_files": len(stream.ignored),
        "created_by": _creator(),
    }
    write_json_atomic(staging / MANIFEST, manifest)
    return int(labels.shape[0]), writer.image_shape, class_counts


def _check_disk_space(
    staging: Path, total: int | None, shape: tuple[int, int, int], disk_fix: str = DISK_FIX
) -> None:
    """Refuse, before the first shard, a pack larger than the free space where it is written
    (60,000 Fashion-MNIST images at 4096 px are 1 TB: the packer filled 17 GB, then died)."""
    if total is None:
        return
    needed = total * int(np.prod(shape))
    free = shutil.disk_usage(staging).free
    if needed > free:
        c, h, w = shape
        raise ValueError(
            f"packing {total:,} images of {c}×{h}×{w} needs {bytes_text(needed)}, but "
            f"{staging.parent} has {bytes_text(free)} free: {disk_fix}"
        )


def bytes_text(n: int) -> str:
    """A size in the unit that shows it: '1.5 GiB', '14.6 MiB', '9.8 KiB', '100 bytes'."""
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n >= unit:
            return f"{n / unit:,.1f} {name}"
    return f"{n:,} bytes"


def _creator() -> str:
    try:
        return f"pixeljit {metadata.version('pixeljit')}"
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "pixeljit (not installed)"
