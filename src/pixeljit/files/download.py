"""Hashing files and downloading them: one digest helper and one verified downloader.

`download` streams a URL (any urllib URL; tests use file://) into a hidden sibling of the
destination, hashes while streaming, and moves it into place only when the digest matches, so a
failed or corrupt download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from pixeljit.files.atomic import temp_sibling

CHUNK_BYTES = 1 << 20  # bytes read per step when hashing / downloading
DOWNLOAD_TIMEOUT_S = 60.0


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (any hashlib algorithm), read in chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    expected: str,
    algorithm: str = "sha256",
    timeout: float = DOWNLOAD_TIMEOUT_S,
    hint: str = "",
) -> Path:
    """Fetch `url` to `dest` atomically, refusing it unless its `algorithm` digest is `expected`.

    `hint` (how else to get the file) is appended to the connection-error message.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.new(algorithm, usedforsecurity=False)
    tmp = temp_sibling(dest, "part")
    try:
        try:
            with open(tmp, "xb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise RuntimeError(
                f"could not download {url} ({err}); check the connection{hint}"
            ) from err
        got = digest.hexdigest()
        if got != expected.lower():
            raise ValueError(
                f"download of {url} has {algorithm} {got}, expected {expected}: the file is "
                f"corrupt or not the expected one and was discarded; nothing was written{hint}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
