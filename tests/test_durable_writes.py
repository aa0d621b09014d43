"""Writes reach the disk before a rename relies on them (a power cut leaves the old file or the
new one, never a new name over unwritten data), and the renames before the writer says done.

Every `os.fsync` and `os.replace` is recorded in order; an fsync is named by the path its file
descriptor has (Linux's /proc/self/fd)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pixeljit.checkpoints.run import save_checkpoint
from pixeljit.data.prepare import pack_arrays
from pixeljit.files import atomic
from pixeljit.files.atomic import atomic_write_text, sync_file
from pixeljit.files.image_set import staged_image_sets
from pixeljit.files.images import save_labels_csv, save_pngs
from pixeljit.files.staged_commit import JOURNAL

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")


class Journal(list):
    """("sync", path, size or None for a folder) and ("replace", src, dst), in order."""

    def syncs(self) -> list[str]:
        return [e[1] for e in self if e[0] == "sync"]

    def index(self, event) -> int:  # the first matching event
        for i, e in enumerate(self):
            if all(a == b for a, b in zip(e, event, strict=False)):
                return i
        raise AssertionError(f"{event} not in {list(self)}")


@pytest.fixture
def events(monkeypatch):
    log = Journal()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        size = None if os.path.isdir(path) else os.path.getsize(path)
        log.append(("sync", path, size))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        log.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def test_an_atomic_write_syncs_its_data_before_the_rename_and_the_folder_after(tmp_path, events):
    target = atomic_write_text(tmp_path / "config.yaml", "steps: 3\n")
    (rename,) = [e for e in events if e[0] == "replace"]
    tmp = rename[1]
    assert rename[2] == str(target)
    assert events.index(("sync", tmp, len("steps: 3\n"))) < events.index(rename)
    assert events.index(("sync", str(tmp_path))) > events.index(rename)


def test_a_write_asked_not_to_sync_does_not(tmp_path, events):
    atomic.atomic_write(tmp_path / "x.png", lambda p: p.write_bytes(b"png"), durable=False)
    assert events.syncs() == []
    assert (tmp_path / "x.png").read_bytes() == b"png"


def test_a_checkpoint_is_on_the_disk_before_it_replaces_latest(tmp_path, events):
    state = {"step": 3, "model": {"w": torch.ones(4)}}
    save_checkpoint(state, tmp_path, step=3, milestone=False)
    rename = next(e for e in events if e[0] == "replace" and e[2].endswith("latest.pt"))
    written = os.path.getsize(tmp_path / "latest.pt")
    assert events.index(("sync", rename[1], written)) < events.index(rename)
    assert events.index(("sync", str(tmp_path))) > events.index(rename)


def test_a_copied_milestone_is_synced_before_its_rename(tmp_path, events, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported here")

    monkeypatch.setattr(os, "link", no_links)
    save_checkpoint({"step": 5, "model": {"w": torch.ones(4)}}, tmp_path, step=5, milestone=True)
    keep = next(e for e in events if e[0] == "replace" and e[2].endswith("step-000000005.pt"))
    size = os.path.getsize(tmp_path / "latest.pt")
    assert events.index(("sync", keep[1], size)) < events.index(keep)


def test_an_image_set_is_synced_before_its_journal_and_its_renames(tmp_path, events):
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    out = tmp_path / "set"
    with staged_image_sets([out]) as (staging,):
        save_pngs(images, staging)
        save_labels_csv(staging, [0, 1, 2])
    journal = next(e for e in events if e[0] == "replace" and e[2].endswith(JOURNAL))
    moves = [e for e in events if e[0] == "replace"
             and Path(e[1]).parent == staging and Path(e[2]).parent == out]  # fmt: skip
    assert sorted(Path(e[2]).name for e in moves) == [
        "000000.png", "000001.png", "000002.png", "labels.csv"
    ]  # fmt: skip
    for move in moves:  # each file's data on the disk before the journal that relies on them
        size = os.path.getsize(move[2])
        assert events.index(("sync", move[1], size)) < events.index(journal)
    assert events.index(("sync", str(out))) > max(events.index(m) for m in moves)


def test_a_pack_is_synced_before_it_is_published(tmp_path, events):
    images = np.arange(5 * 16, dtype=np.uint8).reshape(5, 1, 4, 4)
    out = pack_arrays(images, tmp_path / "pack", labels=np.arange(5), images_per_shard=2).out_dir
    publish = next(e for e in events if e[0] == "replace" and e[2] == str(out))
    staging = publish[1]
    synced = {Path(e[1]).name for e in events[: events.index(publish)] if e[0] == "sync"
              and Path(e[1]).parent == Path(staging)}  # fmt: skip
    assert synced == {p.name for p in out.iterdir()}
    assert events.index(("sync", str(out.parent))) > events.index(publish)


def test_a_folder_that_cannot_be_synced_is_passed_over_a_file_is_not(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse)
    sync_file(tmp_path)  # some file systems refuse fsync on a folder: the files were synced
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(OSError, match="Invalid argument"):
        sync_file(tmp_path / "f")
