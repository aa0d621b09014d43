"""A folder's set of numbered PNGs and its labels.csv written as one (`pixeljit sample --out DIR/`,
`pixeljit eval --save-images DIR`): into a hidden staging folder inside DIR first, then, once
every file is written, renamed into place.

Hidden names are skipped by every reader (`eval --images`, image-folder data sets, the check for
files pixeljit did not write), and the staging folder lies on DIR's file system, so the renames
need no space. A failure before them (a full disk) or a Ctrl-C leaves DIR exactly as it was (an
earlier set there whole) and removes the staging folder; a Ctrl-C during the renames is held
until they are done. A staging folder left by a killed process is removed by the next set
written into DIR.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from pixeljit.files.atomic import DISK_FULL, sweep_dead_staging, temp_sibling

LABELS_CSV = "labels.csv"  # beside a folder of numbered PNGs: the class of each (torch-free here)

STAGING_NAME, STAGING_TAG = "new-set", "staging"  # DIR/.new-set.staging-<pid>-<hex>
_STAGING = re.compile(rf"\.{STAGING_NAME}\.{STAGING_TAG}-(\d+)-[0-9a-f]+")
# what `save_pngs` writes: 000000.png, 000001.png, …, 999999.png, 1000000.png, …
NUMBERED_PNG = re.compile(r"(\d{6}|[1-9]\d{6,})\.png")
# what a staging folder may hold: the set's files, and the atomic writes' temporaries of them
_STAGED_FILE = re.compile(rf"\.?({NUMBERED_PNG.pattern}|{re.escape(LABELS_CSV)})(\.tmp-.+)?")
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # held while the new set is renamed into place


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


class SetWrittenThenStopped(KeyboardInterrupt):
    """A Ctrl-C (or SIGTERM: `signum`) held while a set was renamed into place, raised once it
    was: the folders hold the whole new set."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def holds_a_set(folder: Path) -> bool:
    """Whether `folder` holds numbered PNGs or a labels.csv (an earlier set's)."""
    with contextlib.suppress(OSError):
        return any(NUMBERED_PNG.fullmatch(n) or n == LABELS_CSV for n in os.listdir(folder))
    return False


def sweep_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in `folder` of processes that are gone (killed while writing a
    set); one of a live process, or holding a file a set never has, is left. Returns them."""
    with contextlib.suppress(OSError):
        return sweep_dead_staging(folder, _STAGING, _STAGED_FILE)
    return []


class StagedImageSet:
    """The staging folder `path` of a set bound for `folder` (`open`, then `commit` or
    `discard`)."""

    def __init__(self, folder: Path, path: Path, earlier: bool, created: list[Path]):
        self.folder, self.path, self.earlier, self.created = folder, path, earlier, created

    @classmethod
    def open(cls, folder: str | os.PathLike) -> StagedImageSet:
        """Make the staging folder (and `folder`, if missing), stale ones swept first."""
        folder = Path(folder)
        created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        earlier = holds_a_set(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sweep_stale_staging(folder)
            path = temp_sibling(folder / STAGING_NAME, STAGING_TAG)
            path.mkdir()
        except OSError as err:
            _remove_empty(created)
            raise ImageSetNotWritten.of(err, folder, earlier) from err
        return cls(folder, path, earlier, created)

    def commit(self) -> None:
        """Rename every staged file into `folder` (labels.csv last), replacing the earlier set's
        files of the same names, then remove the staging folder."""
        names = sorted(n for n in os.listdir(self.path) if _STAGED_FILE.fullmatch(n)
                       and not n.startswith("."))  # fmt: skip
        names.sort(key=lambda n: n == LABELS_CSV)
        for done, name in enumerate(names):
            try:
                os.replace(self.path / name, self.folder / name)
            except OSError as err:
                self.discard()
                text = (f"moving the new set into {self.folder} failed after {done} of "
                        f"{len(names)} files ({err.strerror or err}): it holds a mix of the new "
                        "and the earlier set; write the set again")  # fmt: skip
                raise OSError(err.errno, text) from err
        shutil.rmtree(self.path, ignore_errors=True)

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
    with _held_signals() as held:
        try:
            for s in staged:
                s.commit()
        except BaseException:  # what is left staged goes (a committed set's staging is gone)
            for s in staged:
                s.discard()
            raise
    if held:
        _deliver(held[0], [s.folder for s in staged])


@contextlib.contextmanager
def staged_image_set(folder: str | os.PathLike | None) -> Iterator[Path | None]:
    """`staged_image_sets` for one folder, or None (nothing to write) for None."""
    with staged_image_sets([] if folder is None else [folder]) as paths:
        yield paths[0] if paths else None


def _names_inside(err: OSError, folder: Path) -> bool:
    return any(isinstance(f, (str, bytes, os.PathLike)) and Path(os.fsdecode(f)).is_relative_to(
        folder) for f in (err.filename, err.filename2))  # fmt: skip


@contextlib.contextmanager
def _held_signals():
    """HELD_SIGNALS recorded (in the list yielded), not acted on, while the body runs; outside
    the main thread (where handlers cannot be set) nothing is held."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    hold = lambda signum, frame: received.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, hold) for s in HELD_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        received[:] = [s for s in received if previous[s] != signal.SIG_IGN]


def _deliver(signum: int, folders: list[Path]) -> None:
    """The held signal acted on as it would have been, a Ctrl-C's KeyboardInterrupt saying that
    the new set is in place."""
    handler = signal.getsignal(signum)
    try:
        if callable(handler):
            handler(signum, None)
        else:  # SIG_DFL (SIGTERM under torchrun): end the process as the signal would
            signal.raise_signal(signum)
    except KeyboardInterrupt as err:
        where = ", ".join(f"{f}/" for f in folders)
        verb = "hold" if len(folders) > 1 else "holds"
        raise SetWrittenThenStopped(f"stopped once the new set was in place: {where} {verb} "
                                    "all of it", signum) from err  # fmt: skip
