"""A source's fingerprint: what a cached pack of it was made from, cheap to recompute.

The fingerprint hashes, for every input file, its name, size, modification time and inode
change time (nanoseconds), plus whatever else decides the packed content (classes, labels).
Editing, replacing, adding, removing or renaming a file changes it, so `open_dataset` re-packs
instead of reusing a stale cache entry; reading the files' contents is not needed. A name that
is not valid UTF-8 (Python holds its bytes as surrogate escapes) is hashed as its bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

BROKEN_LINK = (errno.ENOENT, errno.ELOOP)  # a link to nothing, a link to itself
FINGERPRINT_KEY = "fingerprint"  # where it lives in a manifest's "source" description


def files_fingerprint(files: Iterable[tuple[str, Path]], extra: object = None) -> str:
    """sha256 over (name, size, mtime, ctime) of each (name, path) and a JSON-able `extra`."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for name, path in files:
        try:
            st = os.stat(path)
        except OSError as err:  # a dangling link, or one to itself: decoding reports it (or
            if err.errno not in BROKEN_LINK:  # --skip-bad skips it)
                raise
            st = os.lstat(path)
            name = f"{name}\0dangling-link"
        record = f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n"
        digest.update(record.encode("utf-8", "surrogateescape"))  # a name's bytes (os.fsencode)
    return digest.hexdigest()


def paths_fingerprint(paths: Iterable[Path], extra: object = None) -> str:
    """`files_fingerprint` of files named by their resolved paths (sources outside a folder)."""
    return files_fingerprint(((str(Path(p).resolve()), Path(p)) for p in paths), extra)
