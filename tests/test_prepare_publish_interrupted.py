"""A replace killed midway never loses the user's pack: `publish` moves the old pack aside to
`.OUT.old-<pid>-<hex>`, renames the new one to OUT, then removes the old one. Killed between the
renames, OUT was gone and the old pack hidden for good; killed before the removal, a dead old
pack stayed beside the new one (under the data cache too, re-pack after re-pack)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import dead_pid
from pixeljit.data import PackedDataset, prepare
from pixeljit.data import outdir as outdir_module
from pixeljit.data.open import cache_entry, open_dataset

OLD = re.compile(r"^\.(.+)\.old-(\d+)-([0-9a-f]+)$")


class Killed(BaseException):  # noqa: N818 (stands for SIGKILL: nothing after it runs)
    """The process was killed here."""


def make_flat(folder: Path, shade: int = 0, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (12, 10), (shade + 30 * i, 5, 9)).save(folder / f"{i}.png")
    return folder


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def hidden(parent: Path, tag: str) -> list[Path]:
    return sorted(p for p in parent.iterdir() if f".{tag}-" in p.name)


def as_dead(parent: Path) -> list[Path]:
    """Rename this process's `.NAME.old-<pid>-<hex>` folders with a dead process's pid: what a
    SIGKILL leaves (this process, still running, counts as a live writer)."""
    dead, moved = dead_pid(), []
    for path in hidden(parent, "old"):
        name, pid, token = OLD.fullmatch(path.name).groups()
        if int(pid) == os.getpid():
            path = path.rename(path.with_name(f".{name}.old-{dead}-{token}"))
        moved.append(path)
    return moved


def kill_between_renames(patch) -> None:
    """SIGKILL once the old pack is moved aside, before the new one is renamed into place: the
    rename (and the put-back that a Python exception would run) never happens."""
    real = os.replace

    def replace(src, dst):
        if ".partial-" in Path(src).name or ".old-" in Path(src).name:
            raise Killed
        return real(src, dst)

    patch.setattr(outdir_module.os, "replace", replace)


def kill_before_removal(patch, removed: int = 0) -> None:
    """SIGKILL once the new pack is in place, after `removed` files of the old one are deleted."""
    real = Path.unlink
    left = [removed]

    def unlink(self, *args, **kwargs):
        if ".old-" in self.parent.name:
            if not left[0]:
                raise Killed
            left[0] -= 1
        return real(self, *args, **kwargs)

    patch.setattr(Path, "unlink", unlink)


@pytest.fixture
def packed(tmp_path):
    """A packed set at tmp_path/out (the user's, from src), and a changed source `new`."""
    prepare(make_flat(tmp_path / "src"), 4, tmp_path / "out")
    return tmp_path / "out", make_flat(tmp_path / "new", shade=100)


def killed_overwrite(out: Path, source: Path, kill=kill_between_renames) -> list[Path]:
    """`prepare SOURCE --out OUT --overwrite` killed as `kill` says; the dead old folders."""
    with pytest.MonkeyPatch.context() as patch:
        kill(patch)
        with pytest.raises(Killed):
            prepare(source, 4, out, overwrite=True)
    return as_dead(out.parent)


def test_killed_between_the_renames_the_next_overwrite_restores_then_replaces(packed):
    out, new = packed
    before = files(out)
    (old,) = killed_overwrite(out, new)
    assert not out.exists() and files(old) == before  # the user's set, hidden
    said = rf"output folder {re.escape(str(out))} was missing: .*{re.escape(old.name)}.* moved back"
    with pytest.warns(UserWarning, match=said) as caught:
        prepare(new, 4, out, overwrite=True)
    assert all("\n" not in str(w.message) for w in caught)
    assert files(out) != before and len(PackedDataset(out, verify=True)) == 3
    assert not hidden(out.parent, "old") and not hidden(out.parent, "partial")


def test_killed_between_the_renames_a_prepare_without_overwrite_gets_the_set_back(packed):
    """The old code packed a new set into the missing OUT with no --overwrite, the user's set
    left hidden for good."""
    out, new = packed
    before = files(out)
    (_,) = killed_overwrite(out, new)
    with (
        pytest.warns(UserWarning, match="moved back"),
        pytest.raises(ValueError, match="not empty"),
    ):
        prepare(new, 4, out)
    assert files(out) == before and not hidden(out.parent, "old")


def test_killed_between_the_renames_opening_the_folder_gets_the_set_back(packed):
    out, new = packed
    expected = PackedDataset(out).slice(0, 3)
    (_,) = killed_overwrite(out, new)
    with pytest.warns(UserWarning, match="moved back"):
        data = open_dataset(str(out), 4, 3)
    np.testing.assert_array_equal(data.slice(0, 3), expected)
    assert not hidden(out.parent, "old")


def test_the_newest_of_two_killed_replaces_is_restored(packed):
    """Killed twice (the old code's next prepare packed a new set into the missing OUT): the set
    the last replace moved aside comes back, the earlier one, replaced since, is removed."""
    out, new = packed

    def old_code(patch) -> None:  # no recovery: what a killed run used to leave
        patch.setattr(outdir_module, "recover_replaced", lambda *_, **__: None, raising=False)

    def kill(patch) -> None:
        old_code(patch)
        kill_between_renames(patch)

    (first,) = killed_overwrite(out, new, kill)
    with pytest.MonkeyPatch.context() as patch:
        old_code(patch)
        prepare(new, 4, out)  # OUT was missing
    replaced = files(out)
    second = [p for p in killed_overwrite(out, new, kill) if p != first]
    assert len(second) == 1 and first.is_dir()
    kept = f"output folder {out} is not empty: choose another folder or pass --overwrite"
    with (
        pytest.warns(UserWarning, match=re.escape(second[0].name)),
        pytest.raises(ValueError, match=re.escape(kept)),  # the restored pack, kept as is
    ):
        prepare(new, 4, out)
    assert files(out) == replaced and not hidden(out.parent, "old")


@pytest.mark.parametrize("removed", [0, 1])
def test_killed_before_the_old_pack_was_removed_the_next_pack_removes_it(packed, removed):
    out, new = packed
    (old,) = killed_overwrite(out, new, lambda patch: kill_before_removal(patch, removed))
    published = files(out)
    assert old.is_dir() and len(PackedDataset(out, verify=True)) == 3
    with pytest.raises(ValueError, match="not empty"):  # no --overwrite: OUT is kept as is
        prepare(new, 4, out)
    assert not old.exists() and files(out) == published


def test_live_writers_and_foreign_files_are_never_touched(packed):
    out, new = packed
    (old,) = killed_overwrite(out, new, kill_before_removal)
    (old / "notes.txt").write_text("mine")  # a file written there meanwhile
    live = out.parent / f".other.old-{os.getpid()}-0123abcd"  # a replace under way
    live.mkdir()
    (live / "manifest.json").write_text("{}")
    with pytest.warns(UserWarning, match=r"holds files a pack never writes \(notes\.txt\)"):
        prepare(new, 4, out, overwrite=True)
    assert (old / "notes.txt").read_text() == "mine" and len(files(old)) > 1
    assert files(live) == {"manifest.json": b"{}"}
    prepare(new, 4, out.parent / "other")  # OUT missing, but its old folder's writer lives
    assert files(live) == {"manifest.json": b"{}"}


def test_a_dead_old_pack_beside_a_folder_not_ours_is_kept(packed):
    out, new = packed
    before = files(out)
    (old,) = killed_overwrite(out, new)
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.warns(UserWarning, match=rf"{re.escape(str(old))} holds .* kept: move it back"):
        with pytest.raises(ValueError, match="not empty"):
            prepare(new, 4, out, overwrite=False)
    assert files(old) == before and files(out) == {"thesis.tex": b"mine"}


def test_a_killed_cache_repack_is_restored_then_repacked(red_pngs):
    """The data cache re-packs with overwrite: dead old packs piled up under its folder."""
    first = open_dataset(str(red_pngs), 4, 3)
    target = first.folder
    assert target == cache_entry(str(red_pngs), 4, 3, None)
    Image.new("RGB", (6, 6), (99, 0, 0)).save(red_pngs / "1.png")
    with pytest.MonkeyPatch.context() as patch:
        kill_between_renames(patch)
        with pytest.raises(Killed):
            open_dataset(str(red_pngs), 4, 3)
    as_dead(target.parent)
    assert not target.exists()
    other = target.parent / "emoji-train-16px-3ch"  # another entry, killed the same way
    aside = target.parent / f".{other.name}.old-{dead_pid()}-89abcdef"
    shutil.copytree(hidden(target.parent, "old")[0], aside)
    with pytest.warns(UserWarning) as caught:
        data = open_dataset(str(red_pngs), 4, 3)
    said = " ".join(str(w.message) for w in caught)
    for entry in (target, other):
        assert f"data cache folder {entry} was missing: " in said
    assert data.slice(0, 3)[:, 0, 0, 0].tolist() == [0, 99, 20]
    assert not hidden(target.parent, "old") and len(PackedDataset(other)) == 3


def test_a_real_sigkill_between_the_renames_via_the_cli(packed):
    """An actual `kill -9` of the packing process, then `pixeljit prepare --overwrite`."""
    out, new = packed
    before = files(out)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from pixeljit.data import outdir, prepare
        real = os.replace
        def replace(src, dst):
            if ".partial-" in Path(src).name:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        outdir.os.replace = replace
        prepare({str(new)!r}, 4, {str(out)!r}, overwrite=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    (old,) = hidden(out.parent, "old")
    assert not out.exists() and files(old) == before
    argv = ["prepare", str(new), "--size", "4", "--out", str(out), "--overwrite"]
    done = subprocess.run([sys.executable, "-m", "pixeljit", *argv], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = (
        rf"^pixeljit prepare: warning: the output folder {re.escape(str(out))} was missing: "
        rf".*{re.escape(old.name)}.*moved back to {re.escape(str(out))}$"
    )
    assert re.search(said, done.stderr, re.M), done.stderr
    assert not hidden(out.parent, "old") and not hidden(out.parent, "partial")
    assert len(PackedDataset(out, verify=True)) == 3 and files(out) != before
