"""Atomic writes: write a hidden sibling in the same folder, then `os.replace` it into place.

A crash never leaves a half-written file under the real name. Unlike tempfile.mkstemp, the
sibling gets the usual umask-derived permissions, so published files are readable as any other.
Durable by default: the sibling's data reach the disk before the rename, and the rename before
the call returns, so a power cut leaves the old file or the new one (file systems other than
ext4 may otherwise keep the new name with empty contents, the old file already gone).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_TOKEN_CHARS = 8
# a write that failed for want of room: a full disk or quota, which freeing space cures …
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
# … and a file grown past what the file system (or `ulimit -f`) allows
DISK_FULL = NO_SPACE | {errno.EFBIG}


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden name beside `path` (same folder, hence same file system)."""
    token = uuid.uuid4().hex[:_TOKEN_CHARS]
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{token}")


def write_problem(folder: Path) -> str | None:
    """Why this process cannot create a file in `folder` (the OS's reason), None when it can.
    Tried by writing a hidden probe, removed at once: `os.access` trusts the mode bits, which
    root bypasses and which /proc, /sys or a read-only file system do not reflect."""
    probe = temp_sibling(folder / "write-probe")  # a name the temporaries' sweeps remove if left
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        return err.strerror or str(err)
    return None


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (the writer of a temporary named with its pid)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries a killed earlier write of `path` left beside it
    (`.NAME.tmp-PID-TOKEN` files whose process is gone); returns what was removed. Only that
    exact pattern for that exact name is touched: nothing else in the folder."""
    prefix = f".{path.name}.tmp-"
    removed = []
    try:
        siblings = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:  # no folder yet, or unreadable: nothing of ours to sweep
        return removed
    for sibling in siblings:
        pid, _, token = sibling.name[len(prefix) :].partition("-")
        if not (pid.isdigit() and len(token) == _TOKEN_CHARS) or not sibling.is_file():
            continue
        if not process_alive(int(pid)):
            sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


def _pid_gone(found: re.Match) -> bool:
    return not process_alive(int(found.group(1)))


def sweep_dead_staging(
    parent: Path,
    folder_name: re.Pattern,
    staged: re.Pattern,
    gone: Callable[[re.Match], bool] = _pid_gone,
) -> list[Path]:
    """Remove the staging folders in `parent` whose whole name `folder_name` matches (its group
    1: the PID of the process that made it) once that process is `gone` (by default: no process
    of that PID runs here), when they hold only files whose whole names `staged` matches (what
    the writer stages); a live process's, a link, or one holding anything else is left. Returns
    what was removed."""
    removed = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:  # no folder yet, or unreadable: nothing of ours to sweep
        return removed
    for path in entries:
        found = folder_name.fullmatch(path.name)
        if found is None or path.is_symlink() or not path.is_dir():
            continue
        if not gone(found):
            continue
        if all(f.is_file() and staged.fullmatch(f.name) for f in path.iterdir()):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def sync_file(path: Path) -> None:
    """Flush `path`'s data (a file) or its entries (a folder) to the disk. Where the OS cannot
    sync a folder this way (Windows), only files are synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except IsADirectoryError:  # Windows opens no folder: its renames are metadata-journalled
        return
    try:
        os.fsync(fd)
    except OSError as err:
        # a folder on a file system that cannot sync one: the file itself was synced
        if not (path.is_dir() and err.errno in (errno.EINVAL, errno.EBADF, errno.EACCES)):
            raise
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], object], durable: bool = True
) -> Path:
    """Call write(temporary path), then move it to `path` (parents created). Temporaries of an
    earlier, killed write of the same `path` are removed first. `durable`: the data are synced
    before the rename and the folder after it (a power cut leaves the old file or the new one);
    False for the many files of a set whose commit is made durable as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        if durable:
            sync_file(tmp)
        os.replace(tmp, path)
        if durable:
            sync_file(path.parent)
    except OSError as err:  # name the file the user asked for, not the hidden temporary one
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_stream(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], durable: bool = True
) -> Path:
    """Call write(open binary file) on a temporary sibling of `path`, then move it into place."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return atomic_write(path, to_file, durable)
