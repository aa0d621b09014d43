"""pixeljit.files.atomic: all-or-nothing writes, and the leftovers of killed ones swept."""

from __future__ import annotations

import os

import pytest

from conftest import dead_pid
from pixeljit.files.atomic import atomic_write, atomic_write_text, sweep_stale_temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_text(target, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="x.json"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_temporaries_of_a_killed_write_of_the_same_name_are_swept(tmp_path):
    """`kill -9` during `pixeljit sample` / `convert` leaves `.NAME.tmp-PID-TOKEN` beside the
    output; the next write of that name removes it. A live writer's temporary, another name's,
    and files that only look alike are kept."""
    dead = dead_pid()
    stale = tmp_path / f".grid.png.tmp-{dead}-0123abcd"
    live = tmp_path / f".grid.png.tmp-{os.getpid()}-89abcdef"
    other = tmp_path / f".other.png.tmp-{dead}-0123abcd"
    lookalike = tmp_path / ".grid.png.tmp-notapid-0123abcd"
    for path in (stale, live, other, lookalike):
        path.write_bytes(b"partial")
    atomic_write_text(tmp_path / "grid.png", "done")
    assert not stale.exists()
    assert live.exists() and other.exists() and lookalike.exists()
    assert (tmp_path / "grid.png").read_text() == "done"
    assert sweep_stale_temporaries(tmp_path / "other.png") == [other]
