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
left before that (nothing moved) is removed by the next set written into DIR, if that process
ran on the same machine (`staged_commit.writer_gone`: another machine's PID means nothing here).

Several processes may write one set together (torchrun's ranks, each making its share of the
images: `shared_image_set`): the leader (rank 0) opens one staging folder, every process writes
its files into it, and once all have, the leader alone moves the whole set in, under the same
journal; every process learns the outcome, so all end alike.
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
from typing import Any, Protocol

from pixeljit.files import staged_commit
from pixeljit.files.atomic import DISK_FULL
from pixeljit.files.staged_commit import MoveFailed, WrittenThenStopped, deliver, held_signals

LABELS_CSV = "labels.csv"  # beside a folder of numbered PNGs: the class of each (torch-free here)

# DIR/.new-set.staging-<pid>-<hex>@<machine> (older pixeljit: without @<machine>)
STAGING_NAME, STAGING_TAG = "new-set", "staging"
_MACHINE = staged_commit.MACHINE_GROUP
_STAGING = re.compile(rf"\.{STAGING_NAME}\.{STAGING_TAG}-(\d+)-[0-9a-f]+{_MACHINE}")
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
        pid, host = staged_commit.writer(_STAGING.fullmatch(live[0].name))
        who = f"process {pid}" + (f" of machine {host}" if host else "")
        gone = f" (or was killed: then run its command again on {host})" if host else ""
        warnings.warn(f"{folder}: {who} is moving a new image set into it right now{gone} "
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
            path = staged_commit.staging_path(folder / STAGING_NAME, STAGING_TAG)
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


class SetTeam(Protocol):
    """The processes writing one set together (torchrun's ranks; `evaluation_ranks`), each
    calling the same methods in the same order. `leader`: the one that opens and commits."""

    leader: bool

    def share(self, value: Any) -> Any:
        """The leader's `value`, on every process (the others pass None)."""

    def wait_all(self) -> None:
        """Return once every process has called it."""


@contextlib.contextmanager
def shared_image_set(folder: str | os.PathLike, team: SetTeam) -> Iterator[Path]:
    """`staged_image_set` of `folder` for the processes of `team` together: one staging folder
    (the leader's), which each process's body writes its files into; once every body is done
    the leader moves the whole set in (`StagedImageSet.commit`: one journaled commit) and every
    process learns whether it did, so all end alike: the new set whole, or the earlier one as
    it was. A body that fails (or a process stopped before the commit) moves nothing: the others
    wait for it until the launcher (torchrun) stops them; the staging folder left goes with
    the next set written here, as a killed writer's."""
    folder = Path(folder)
    staged = None
    if team.leader:
        try:
            staged = StagedImageSet.open(folder)
        except BaseException:
            team.share(None)  # the others learn it failed, then stop
            raise
    opened = team.share((str(staged.path), staged.earlier) if staged else None)
    if opened is None:
        raise RuntimeError(f"rank 0 could not start the image set in {folder} (rank 0's error "
                           "says why): nothing was written")  # fmt: skip
    path, earlier = Path(opened[0]), opened[1]
    if not path.is_dir():  # another machine's rank 0 made it, on a disk this one does not see
        raise ImageSetNotWritten.of(FileNotFoundError(
            errno.ENOENT, f"{path} is not here: every process writing the set must see the "
            "same folder, on a file system they share"), folder, earlier)  # fmt: skip
    try:
        yield path
    except BaseException as err:
        if staged is not None:
            staged.discard()
        if isinstance(err, OSError) and not isinstance(err, ImageSetNotWritten):
            if _names_inside(err, path):
                raise ImageSetNotWritten.of(err, folder, earlier) from err
        raise
    try:
        team.wait_all()  # every process's files are in `path`
    except BaseException:  # another process failed, or was stopped: nothing is moved
        if staged is not None:
            staged.discard()
        raise
    if staged is None:
        if not team.share(None):
            raise RuntimeError(f"rank 0 could not move the new image set into {folder} (rank 0's "
                               "error says why and what the folder holds)")  # fmt: skip
        return
    error = None
    with held_signals() as held:
        try:
            staged.commit()
        except BaseException as err:
            staged.discard()
            error = err
    with contextlib.suppress(Exception):  # the others gone (stopped too): nothing to tell
        team.share(error is None)
    if error is not None:
        raise error
    if held:
        deliver(held[0], f"stopped once the new set was in place: {folder}/ holds all of it",
                SetWrittenThenStopped)  # fmt: skip


def _names_inside(err: OSError, folder: Path) -> bool:
    return any(isinstance(f, (str, bytes, os.PathLike)) and Path(os.fsdecode(f)).is_relative_to(
        folder) for f in (err.filename, err.filename2))  # fmt: skip
