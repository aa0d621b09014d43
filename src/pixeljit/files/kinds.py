"""What kind of file a path is, for the readers that must never open a pipe, socket or device
(opening a named pipe waits for a writer, forever): checkpoints and image folders."""

from __future__ import annotations

import os
import stat

# what a path that is neither a regular file nor a folder is (opening a FIFO waits for a writer)
SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What `path` is when it exists (a link followed) and is neither a regular file nor a
    folder: 'a named pipe (FIFO)', 'a socket', …; None otherwise (missing ones included)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    other = f"another kind of file ({stat.filemode(mode)})"
    return next((kind for test, kind in SPECIAL_FILES if test(mode)), other)
