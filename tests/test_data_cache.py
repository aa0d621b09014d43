"""`open_dataset`'s cache: a pack of a source is reused only while the source is unchanged."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from conftest import dead_pid
from pixeljit.data.open import cache_entry, open_dataset
from pixeljit.data.prepare import prepare


@pytest.fixture
def folder(red_pngs):
    return red_pngs


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


def test_a_packed_folder_is_read_only_in_the_split_it_was_packed_from(folder, tmp_path):
    """A split asked of a packed folder used to be ignored: `--set data.split=test` trained on
    whatever the folder held."""
    (folder / "train").mkdir()
    for i in range(2):
        Image.new("RGB", (6, 6), (40 + i, 0, 0)).save(folder / "train" / f"{i}.png")
    packed = prepare(str(folder), 4, tmp_path / "packed", split="train")
    assert packed.count == 2
    path = str(tmp_path / "packed")
    assert red(open_dataset(path, 4, 3)) == [40, 41]  # no split asked: as packed
    assert red(open_dataset(path, 4, 3, split="train")) == [40, 41]  # the same split
    with pytest.raises(ValueError, match=r"split 'test'.*'train' split of image-folder.*--split"):
        open_dataset(path, 4, 3, split="test")
    whole = prepare(str(folder / "train"), 4, tmp_path / "whole")
    assert whole.count == 2  # a folder packed as a whole
    with pytest.raises(ValueError, match="image-folder without a split"):
        open_dataset(str(tmp_path / "whole"), 4, 3, split="train")


def test_the_emoji_set_is_its_own_train_split(tmp_path):
    from pixeljit.data.open import check_packed_split, packed_split
    from pixeljit.data.packed import PackedDataset

    class Packed(PackedDataset):
        def __init__(self, source):  # only the manifest matters here
            self.folder, self.manifest = tmp_path, {"source": source}

    emoji = Packed({"kind": "emoji"})
    assert packed_split(emoji) == "train"
    check_packed_split(emoji, "train")
    with pytest.raises(ValueError, match="'train' split of emoji"):
        check_packed_split(emoji, "test")
    assert packed_split(Packed("not a dict")) is None


def test_killed_packs_of_other_cache_entries_are_swept(folder):
    """A pack killed while filling one cache entry left its staging folder (up to the data set's
    size) for good when the next pack went into another entry: the cache is pixeljit's own, so
    every entry's leftovers go, a live packer's and a foreign file's excepted."""
    dead = dead_pid()
    packed = cache_entry(str(folder), 4, 3, None).parent
    packed.mkdir(parents=True)
    stale = packed / f".fashion-mnist-default-32px-1ch.partial-{dead}-0123abcd"
    stale.mkdir()
    (stale / "images-00000.npy").write_bytes(b"half a shard")
    live = packed / f".emoji-train-16px-3ch.partial-{os.getpid()}-fedcba98"
    live.mkdir()
    foreign = packed / f".emoji-train-8px-3ch.partial-{dead}-4567cdef"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert red(open_dataset(str(folder), 4, 3)) == [0, 10, 20]
    assert not stale.exists()
    assert live.is_dir() and (foreign / "notes.txt").read_text() == "mine"


def test_each_size_and_channel_count_gets_its_own_pack(folder):
    """One source at two channel counts and two sizes: four packs of the shapes asked for; a
    cache entry holding a pack of another shape (written there by anything else) is packed
    again, not served (the fingerprint covers only the source)."""
    for channels, size in ((3, 4), (1, 4), (3, 2), (1, 2)):
        assert open_dataset(str(folder), size, channels).image_shape == (channels, size, size)
    grey, colour = cache_entry(str(folder), 4, 1, None), cache_entry(str(folder), 4, 3, None)
    for name in os.listdir(grey):
        os.remove(grey / name)
    for name in os.listdir(colour):  # the colour pack, under the grey entry's name
        (grey / name).write_bytes((colour / name).read_bytes())
    assert open_dataset(str(folder), 4, 1).image_shape == (1, 4, 4)
