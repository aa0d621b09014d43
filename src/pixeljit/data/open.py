"""Open a training / reference set by name: a packed folder as is, or a source (fashion-mnist,
emoji, an image folder) packed once at the wanted size into the cache."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from pixeljit.files.cache import cache_root

from .packed import PackedDataset
from .prepare import prepare
from .shards import MANIFEST

BUILTIN_SOURCES = ("fashion-mnist", "emoji")


def _slug(path: Path) -> str:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.name}-{digest}"


def open_dataset(
    source: str,
    size: int,
    channels: int,
    split: str | None = None,
    is_main: bool = True,
    barrier: Callable[[], None] | None = None,
) -> PackedDataset:
    """A PackedDataset for `source` at size × size with `channels`. Under several processes
    only `is_main` packs; the others wait at `barrier`."""
    if not source:
        raise ValueError("no data: pass a packed folder, fashion-mnist, emoji, or an image folder")
    path = Path(source)
    if (path / MANIFEST).is_file():
        return PackedDataset(path)
    if source not in BUILTIN_SOURCES and not path.is_dir():
        raise FileNotFoundError(
            f"data {source!r}: not a packed folder, an image folder, or one of {BUILTIN_SOURCES}"
        )
    name = source if source in BUILTIN_SOURCES else f"folder-{_slug(path)}"
    target = cache_root() / "packed" / f"{name}-{split or 'default'}-{size}px-{channels}ch"
    if is_main and not (target / MANIFEST).is_file():
        print(f"packing {source} ({split or 'default split'}) at {size}px into {target} …")
        prepare(source, size, target, split=split, channels=channels, progress=True)
    if barrier is not None:
        barrier()
    return PackedDataset(target)
