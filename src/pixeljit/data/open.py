"""Open a training / reference set by name: a packed folder as is, or a source (fashion-mnist,
emoji, an image folder) packed once at the wanted size into the cache.

A cache entry is keyed by the source's path, split, size and channels, and holds the source's
fingerprint (file names, sizes, times; see fingerprint.py) in its manifest. Each open
recomputes the fingerprint: an entry made from other content (a changed, added or removed image,
a replaced font or IDX file) is re-packed in place, never reused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from pixeljit.files.cache import CACHE_ENV, cache_root

from .emoji import find_emoji_font
from .fashion_mnist import find_fashion_mnist
from .fingerprint import FINGERPRINT_KEY, paths_fingerprint
from .folders import folder_fingerprint, scan_image_folder
from .image_types import ignored_summary
from .manifest import read_manifest_json
from .outdir import recover_replaced, sweep_stale_staging
from .packed import PackedDataset
from .prepare import EMOJI, EMOJI_SPLIT, FASHION_MNIST, prepare
from .shards import MANIFEST
from .text import file_name_text, utf8_text

BUILTIN_SOURCES = (FASHION_MNIST, EMOJI)
# a source packed into the cache at the model's size: its size and count are not the caller's
CACHE_DISK_FIX = (
    f"set {CACHE_ENV} to a folder with room (the data cache), or pack it yourself elsewhere "
    "(`pixeljit prepare SOURCE --size S --out DIR`) and pass DIR instead of SOURCE"
)


def _slug(path: Path) -> str:
    """The cache name of a folder: its name and a hash of its resolved path's bytes, so any path
    the OS accepts (one whose bytes are not valid UTF-8 too) names an entry of its own."""
    digest = hashlib.sha1(os.fsencode(path.resolve())).hexdigest()[:8]
    return f"{file_name_text(path.name)}-{digest}"


def source_fingerprint(source: str, split: str | None) -> str:
    """The fingerprint `prepare` records for `source` (as `open_dataset` packs it)."""
    if source == FASHION_MNIST:
        return paths_fingerprint(find_fashion_mnist(split or "train"))
    if source == EMOJI:
        return paths_fingerprint([find_emoji_font()])
    return folder_fingerprint(scan_image_folder(source, split))


def packed_fingerprint(folder: Path, shape: tuple[int, int, int] | None = None) -> str | None:
    """The source fingerprint stored in a packed set's manifest; None if absent or unreadable,
    or (given `shape`, (C, H, W)) if its images are of another shape: a cache entry is the
    source's pack at its size and channels, whatever else wrote there."""
    try:
        manifest = read_manifest_json(folder)
    except (ValueError, OSError):
        return None
    if shape is not None and manifest.get("shape") != list(shape):
        return None
    source = manifest.get("source")
    return source.get(FINGERPRINT_KEY) if isinstance(source, dict) else None


def packed_split(dataset: PackedDataset) -> str | None:
    """The split a packed set was made from, as its manifest records it (None: the whole
    source, e.g. an image folder without split folders, or the emoji set)."""
    source = dataset.manifest.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("kind") == EMOJI:
        return EMOJI_SPLIT
    split = source.get("split")
    return split if isinstance(split, str) else None


def check_packed_split(dataset: PackedDataset, split: str | None) -> None:
    """A packed folder is read as it was packed: a split asked for (data.split, --split,
    --ref-split) must be the one it was packed from, not be silently ignored."""
    if split is None:
        return
    have = packed_split(dataset)
    if utf8_text(split) == have:  # as the manifest records a split folder's name
        return
    source = dataset.manifest.get("source")
    kind = source.get("kind", "a source") if isinstance(source, dict) else "a source"
    made = f"the {have!r} split of {kind}" if have is not None else f"{kind} without a split"
    raise ValueError(
        f"split {split!r} was asked for, but {dataset.folder} is already packed, from {made}: "
        f"a packed folder cannot change split. Pack that split (`pixeljit prepare SOURCE "
        f"--split {split} --size S --out DIR`) and pass its folder, or leave the split out"
    )


def cache_entry(source: str, size: int, channels: int, split: str | None) -> Path:
    """Where `open_dataset` keeps the pack of a source."""
    name = source if source in BUILTIN_SOURCES else f"folder-{_slug(Path(source))}"
    return cache_root() / "packed" / f"{name}-{split or 'default'}-{size}px-{channels}ch"


def open_dataset(
    source: str,
    size: int,
    channels: int,
    split: str | None = None,
    rank0_first: Callable[[Callable[[], None]], None] | None = None,
    progress: bool = True,
) -> PackedDataset:
    """A PackedDataset for `source` at size × size with `channels`. Under several processes
    `rank0_first(fn)` runs `fn` on rank 0 alone while the others wait, every rank failing if it
    failed (`training.distributed.rank0_first`): there rank 0 checks the cache and packs (with
    a progress bar if `progress`)."""
    if not source:
        raise ValueError("no data: pass a packed folder, fashion-mnist, emoji, or an image folder")
    path = Path(source)
    if not (path / MANIFEST).is_file():
        recover_replaced(path)  # a pack a killed `prepare --overwrite` moved aside goes back
    if (path / MANIFEST).is_file():
        dataset = PackedDataset(path)
        check_packed_split(dataset, split)
        return dataset
    if source not in BUILTIN_SOURCES and not path.is_dir():
        raise FileNotFoundError(
            f"data {source!r}: not a packed folder, an image folder, or one of {BUILTIN_SOURCES}"
        )
    target = cache_entry(source, size, channels, split)

    def pack() -> None:
        recover_replaced(target, every_entry=True)  # re-packs killed midway: undone or finished
        current = source_fingerprint(source, split)
        cached = packed_fingerprint(target, (channels, size, size))
        if cached != current:
            why = "changed since it was packed; re-packing" if target.exists() else "packing"
            print(f"{utf8_text(source)} ({split or 'default split'}): {why} at {size}px into "
                  f"{utf8_text(str(target))} …")  # fmt: skip
            sweep_stale_staging(target, every_entry=True)  # killed packs of any cache entry
            result = prepare(source, size, target, split=split, channels=channels,
                             progress=progress, overwrite=True,
                             disk_fix=CACHE_DISK_FIX)  # fmt: skip
            if result.ignored:  # as `pixeljit prepare` says it: nothing left out without a word
                print(ignored_summary(result.ignored))
            if packed_fingerprint(target) != current:
                raise RuntimeError(
                    f"{utf8_text(source)} changed while it was being packed into {target}; run "
                    "again once nothing is writing to it"
                )

    (rank0_first or _alone)(pack)
    return PackedDataset(target)


def _alone(fn: Callable[[], None]) -> None:
    fn()
