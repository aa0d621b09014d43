"""`open_dataset`'s cache: a pack of a source is reused only while the source is unchanged."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from pixeljit.data.open import cache_entry, open_dataset
from pixeljit.files.cache import CACHE_ENV


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (6, 6), (10 * i, 0, 0)).save(root / f"{i}.png")
    return root


def red(data) -> list[int]:
    return data.slice(0, len(data))[:, 0, 0, 0].tolist()


def test_a_changed_image_is_repacked(folder):
    """The old cache was keyed by the folder's path only and served the old pixels."""
    first = open_dataset(str(folder), 4, 3)
    assert red(first) == [0, 10, 20]
    manifest = first.folder / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert red(open_dataset(str(folder), 4, 3)) == [0, 10, 20]
    assert manifest.stat().st_mtime_ns == stamp  # unchanged folder: the pack is reused
    path = folder / "1.png"
    old = path.stat()
    Image.new("RGB", (6, 6), (99, 0, 0)).save(path)  # same name, same size on disk
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # even with the old mtime
    assert path.stat().st_size == old.st_size
    assert red(open_dataset(str(folder), 4, 3)) == [0, 99, 20]


def test_added_and_removed_images_are_repacked(folder):
    open_dataset(str(folder), 4, 3)
    Image.new("RGB", (6, 6), (50, 0, 0)).save(folder / "3.png")
    assert red(open_dataset(str(folder), 4, 3)) == [0, 10, 20, 50]
    (folder / "0.png").unlink()
    data = open_dataset(str(folder), 4, 3)
    assert red(data) == [10, 20, 50]
    entry = cache_entry(str(folder), 4, 3, None)
    assert data.folder == entry and not [p for p in entry.parent.iterdir() if p != entry]


def test_a_cache_entry_holding_foreign_files_is_refused_not_deleted(folder):
    data = open_dataset(str(folder), 4, 3)
    (data.folder / "mine.txt").write_text("not pixeljit's")
    Image.new("RGB", (6, 6), (70, 0, 0)).save(folder / "new.png")
    with pytest.raises(ValueError, match="mine.txt"):
        open_dataset(str(folder), 4, 3)
    assert (data.folder / "mine.txt").read_text() == "not pixeljit's"
