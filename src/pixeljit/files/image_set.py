"""A folder's set of numbered PNGs and its labels.csv written as one (`pixeljit sample --out DIR/`,
`pixeljit eval --save-images DIR`): into a hidden staging folder inside DIR first, then, once
every file is written, renamed into place (labels.csv last) as one journaled commit
(`staged_commit`).

Hidden names are skipped by every reader (`eval --images`, image-folder data sets, the check for
files pixeljit did not write), and the staging folder lies on DIR's file system, so the renames
need no space. A failure before them (a full disk) or a Ctrl-C leaves DIR exactly as it was (an
earlier set there whole) and removes the staging folder; a Ctrl-C during the renames is held
until they are done. A process killed during the renames leaves the rest of the new set staged
with the commit's journal: the next set written into DIR, or the next read of DIR as an image
folder (`finish_interrupted_set`), moves it in first, saying so. A staging folder a killed process
left before that (nothing moved) is removed by the next set written into DIR.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

from pixeljit.files import staged_commit
from pixeljit.files.atomic import DISK_FULL, temp_sibling
from pixeljit.files.staged_commit import MoveFailed, WrittenThenStopped, deliver, held_signals

LABELS_CSV = "labels.csv"  # beside a folder of numbered PNGs: the class of each (torch-free here)

STAGING_NAME, STAGING_TAG = "new-set", "staging"  # DIR/.new-set.staging-<pid>-<hex>
_STAGING = re.compile(rf"\.{STAGING_NAME}\.{STAGING_TAG}-(\d+)-[0-9a-f]+")
# what `save_pngs` writes: 000000.png, 000001.png, …, 999999.png, 1000000.png, …
NUMBERED_PNG = re.compile(r"(\d{6}|[1-9]\d{6,})\.png")
# what a staging folder may hold: the set's files, and the atomic writes' temporaries of them
_STAGED_FILE = re.compile(rf"\.?({NUMBERED_PNG.pattern}|{re.escape(LABELS_CSV)})(\.tmp-.+)?")


class ImageSetNotWritten(OSError):
    """Writing a set into `folder` failed before any of it was moved there: the folder is as it
    was (`earlier`: it held a set, kept whole). `reason`: the operating system's words."""

    def __init__(self, code: int | None, message: str, folder: Path, reason: str, earlier: bool):
        super().__init__(code, message)
        self.folder, self.reason, self.earlier = folder, reason, earlier

    @classmethod
    def of(cls, err: OSError, folder: Path, earlier: bool) -> ImageSetNotWritten:
        reason = err.strerror or str(err)
        kept = ", and its earlier set is kept as it was" if earlier else ""
        fix = _fix_for(err.errno, "write the set to another folder")
        text = f"writing images into {folder} failed ({reason}): nothing was written{kept}; {fix}"
        return cls(err.errno, text, folder, reason, earlier)

    def fix(self, elsewhere: str) -> str:
        """How to go on: `elsewhere` (another output), or first free space if the disk was full."""
        return _fix_for(self.errno, elsewhere)


def _fix_for(code: int | None, elsewhere: str) -> str:
    """`elsewhere`, after freeing space when the error `code` is a full disk's."""
    return f"free space on its disk, or {elsewhere}" if code in DISK_FULL else elsewhere


class SetWrittenThenStopped(WrittenThenStopped):
    """A Ctrl-C (or SIGTERM: `signum`) held while a set was renamed into place, raised once it
    was: the folders hold the whole new set."""


def holds_a_set(folder: Path) -> bool:
    """Whether `folder` holds numbered PNGs or a labels.csv (an earlier set's)."""
    with contextlib.suppress(OSError):
        return any(NUMBERED_PNG.fullmatch(n) or n == LABELS_CSV for n in os.listdir(folder))
    return False


def sweep_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in `folder` of processes that are gone (killed while writing a
    set, before any of it was moved in); one of a live process, one holding the journal of a
    commit (`finish_interrupted_set` moves it in), or holding a file a set never has, is left.
    Returns them."""
    return staged_commit.sweep_unfinished(folder, _STAGING, _STAGED_FILE)


def finish_interrupted_set(folder: str | os.PathLike, reading: bool = True) -> int:
    """Move into `folder` the rest of a set a killed process was moving in (its staging folder
    holds the commit's journal), saying so in a warning; returns how many sets were finished.
    `reading`: for a reader of `folder` (the messages name that use). OSError (naming the fix)
    when `folder` cannot take the files; a staging folder of a live process is left alone, but
    a reader is warned that the set it reads is being replaced."""
    folder = Path(folder)
    then = "before reading it" if reading else "before writing the new one"
    what = ("a write of its image set", "set", "write the set again")
    done = staged_commit.finish_with_warning(folder, _STAGING, _STAGED_FILE, what, then)
    live = staged_commit.commits_in_progress(folder, _STAGING) if reading else []
    if live:
        pid = _STAGING.fullmatch(live[0].name).group(1)
        warnings.warn(f"{folder}: process {pid} is moving a new image set into it right now "
                      f"({live[0].name}): what is read may mix the earlier set and the new one; "
                      "read it again once that process is done", stacklevel=2)  # fmt: skip
    return done


class StagedImageSet:
    """The staging folder `path` of a set bound for `folder` (`open`, then `commit` or
    `discard`). `finished`: `open` finished an interrupted earlier write into `folder`."""

    def __init__(self, folder: Path, path: Path, earlier: bool, created: list[Path]):
        self.folder, self.path, self.earlier, self.created = folder, path, earlier, created
        self.finished = 0

    @classmethod
    def open(cls, folder: str | os.PathLike) -> StagedImageSet:
        """Make the staging folder (and `folder`, if missing): first a set a killed process was
        moving in is finished (`finish_interrupted_set`), then stale staging folders swept."""
        folder = Path(folder)
        created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        finished = finish_interrupted_set(folder, reading=False) if folder.is_dir() else 0
        earlier = holds_a_set(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sweep_stale_staging(folder)
            path = temp_sibling(folder / STAGING_NAME, STAGING_TAG)
            path.mkdir()
        except OSError as err:
            _remove_empty(created)
            raise ImageSetNotWritten.of(err, folder, earlier) from err
        staged = cls(folder, path, earlier, created)
        staged.finished = finished
        return staged

    def commit(self) -> None:
        """Rename every staged file into `folder` (labels.csv last), replacing the earlier set's
        files of the same names, then remove the staging folder: a journaled commit
        (`staged_commit.commit`), which a kill cannot leave half done."""
        names = sorted(n for n in os.listdir(self.path) if _STAGED_FILE.fullmatch(n)
                       and not n.startswith("."))  # fmt: skip
        names.sort(key=lambda n: n == LABELS_CSV)
        if self.finished:
            self._check_no_leftovers(names)
        try:
            staged_commit.commit(self.path, self.folder, staged_commit.moves(names))
        except MoveFailed as err:
            self.discard()
            text = (f"moving the new set into {self.folder} failed after {err.done} of "
                    f"{err.total} files ({err.strerror}): it holds a mix of the new "
                    "and the earlier set; write the set again")  # fmt: skip
            raise OSError(err.errno, text) from err
        except OSError as err:  # the journal not written: nothing was moved
            self.discard()
            raise ImageSetNotWritten.of(err, self.folder, self.earlier) from err

    def _check_no_leftovers(self, names: list[str]) -> None:
        """The set `open` finished (bigger than the earlier one, maybe, and not seen by the
        command's checks) must not leave numbered PNGs beyond the new set, or a labels.csv an
        unlabelled new set would keep: refused, nothing moved."""
        new = set(names)
        left = sorted(n for n in os.listdir(self.folder) if n not in new
                      and (NUMBERED_PNG.fullmatch(n) or n == LABELS_CSV))  # fmt: skip
        if not left:
            return
        self.discard()
        more = f" and {len(left) - 1} more file{'s' * (len(left) > 2)}" if len(left) > 1 else ""
        reason = (f"the set a killed process left half written there, finished now, holds "
                  f"{left[0]}{more}, which the new set of {len(new)} files would not replace: "
                  "the two would be mixed; remove them first")  # fmt: skip
        text = f"writing images into {self.folder} failed ({reason}): nothing was written"
        raise ImageSetNotWritten(errno.ENOTEMPTY, text, self.folder, reason, self.earlier)

    def discard(self) -> None:
        """Remove the staging folder, and the folders `open` made if they are empty."""
        shutil.rmtree(self.path, ignore_errors=True)
        _remove_empty(self.created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; one holding anything stays
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_image_sets(folders) -> Iterator[list[Path]]:
    """The staging folders of `folders`, for the body to write each whole set into; renamed
    into place when it ends, removed if it fails (a write into one of them raises
    `ImageSetNotWritten`). A Ctrl-C during the renames is held until they are done, then raised
    as `SetWrittenThenStopped`."""
    staged: list[StagedImageSet] = []
    try:
        for folder in folders:
            staged.append(StagedImageSet.open(folder))
        yield [s.path for s in staged]
    except BaseException as err:
        for s in staged:
            s.discard()
        where = [s for s in staged if isinstance(err, OSError) and _names_inside(err, s.path)]
        if where and not isinstance(err, ImageSetNotWritten):
            raise ImageSetNotWritten.of(err, where[0].folder, where[0].earlier) from err
        raise
    with held_signals() as held:
        try:
            for s in staged:
                s.commit()
        except BaseException:  # what is left staged goes (a committed set's staging is gone)
            for s in staged:
                s.discard()
            raise
    if held:
        where = ", ".join(f"{s.folder}/" for s in staged)
        verb = "hold" if len(staged) > 1 else "holds"
        deliver(held[0], f"stopped once the new set was in place: {where} {verb} all of it",
                SetWrittenThenStopped)  # fmt: skip


@contextlib.contextmanager
def staged_image_set(folder: str | os.PathLike | None) -> Iterator[Path | None]:
    """`staged_image_sets` for one folder, or None (nothing to write) for None."""
    with staged_image_sets([] if folder is None else [folder]) as paths:
        yield paths[0] if paths else None


def _names_inside(err: OSError, folder: Path) -> bool:
    return any(isinstance(f, (str, bytes, os.PathLike)) and Path(os.fsdecode(f)).is_relative_to(
        folder) for f in (err.filename, err.filename2))  # fmt: skip
