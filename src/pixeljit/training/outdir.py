"""Whether a run folder (`--out`) can be made and written, judged before anything is created or
printed. Refused, each with one line naming the folder and the way on: a file, a path inside a
file, a symbolic link (the folder or one above it) leading nowhere, and a place this process
cannot write in (a virtual or read-only file system such as /proc or /sys, no permission; tried
by writing, since `os.access` trusts the mode bits, which root bypasses)."""

from __future__ import annotations

import os
from pathlib import Path

from pixeljit.files.atomic import write_problem


def check_out_usable(out: str | os.PathLike, write: bool = True) -> None:
    """Refuse a run folder `out` that cannot be made (a file, a path inside a file, a link
    leading nowhere) or, with `write`, not written in. Creates nothing (a probe file in the
    nearest existing folder is removed at once)."""
    out = Path(out)
    try:
        _check(out, write)
    except OSError as err:  # a name too long, a folder above that cannot be searched
        raise ValueError(f"--out {out} cannot be used as a run folder ({err.strerror}): pass "
                         "another --out") from None  # fmt: skip


def _check(out: Path, write: bool) -> None:
    path = out.absolute()
    anchor = path
    for anchor in (path, *path.parents):  # the nearest one that exists (links followed)
        if anchor.is_symlink() and not anchor.exists():
            where = f"--out {out}" if anchor == path else f"--out {out}: {anchor}"
            raise ValueError(f"{where} is a symbolic link to {os.readlink(anchor)}, which does "
                             "not exist: create that folder, or pass another --out")  # fmt: skip
        if anchor.exists():
            break
    if not anchor.is_dir():  # mkdir would say only "File exists" / "Not a directory"
        what = "is a file" if anchor == path else f"is inside {anchor}, a file"
        raise ValueError(f"the run folder {out} (--out) {what}, not a folder: pass a folder for "
                         "the run")  # fmt: skip
    if not write:
        return
    problem = write_problem(anchor)
    if problem:
        raise ValueError(f"--out {out}: cannot write in {anchor} ({problem}): pass an --out in "
                         "a folder you can write to")  # fmt: skip
