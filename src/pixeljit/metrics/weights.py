"""Where extractor weights come from: user paths, the cache, or a sha256-verified download.

The standard FID network is the TensorFlow 2015-12-05 InceptionV3 graph ported to PyTorch by
pytorch-fid (the same file torch-fidelity ships); JiT's numbers were measured with it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from pixeljit.paths import CACHE_ENV, cache_root  # noqa: F401 (CACHE_ENV: the variable to set)

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILENAME
)
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_BYTES = 95_628_359
INCEPTION_ENV = "PIXELJIT_INCEPTION_WEIGHTS"
INCEPTION_OPTION = "--inception-weights"
FILE_MODE = 0o644  # mode of the files we publish (weights, reference statistics)
_CHUNK = 1 << 20  # bytes read per step when hashing / downloading
_TIMEOUT_S = 60.0


def cache_dir() -> Path:
    """pixeljit's download cache (see pixeljit.paths)."""
    return cache_root()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download_file(
    url: str, dest: str | os.PathLike, sha256: str, timeout: float = _TIMEOUT_S
) -> Path:
    """Download `url` to `dest` atomically and verify its sha256 (any urllib URL, file:// too).

    The bytes go to a temporary file beside `dest`, are hashed while streaming, and replace
    `dest` only when the digest matches; on a mismatch nothing is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as src:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256.lower():
            raise ValueError(
                f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}: the file is "
                "corrupt or not the expected one; nothing was written"
            )
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600; published files are world-readable
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def missing_inception_message(looked_at: list[Path]) -> str:
    """How to obtain the FID Inception weights (used when they are not found)."""
    places = ", ".join(str(p) for p in looked_at) or "nowhere"
    return (
        f"FID Inception weights not found (looked at: {places}). Download {INCEPTION_FILENAME} "
        f"({INCEPTION_BYTES / 1e6:.1f} MB, sha256 {INCEPTION_SHA256}) from {INCEPTION_URL} and "
        f"pass its path with {INCEPTION_OPTION} PATH (weights_path=... in Python) or set "
        f"{INCEPTION_ENV}=PATH, or put it at {cache_dir() / INCEPTION_FILENAME}; with internet "
        "access, download=True fetches and verifies it. Offline, use the shipped extractors "
        "(FD-EffNetLite0, the Fashion-MNIST classifier) instead."
    )


def resolve_inception_weights(
    weights_path: str | os.PathLike | None = None, download: bool = False
) -> Path:
    """Path of the FID Inception weights: the argument, ${PIXELJIT_INCEPTION_WEIGHTS}, the cache.

    A path given explicitly (argument or environment) must exist. Otherwise the cached copy is
    used, or downloaded (and sha256-verified) into the cache when `download` is true.
    """
    explicit = weights_path or os.environ.get(INCEPTION_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(missing_inception_message([path]))
        return path
    cached = cache_dir() / INCEPTION_FILENAME
    if cached.is_file():
        return cached
    if download:
        return download_file(INCEPTION_URL, cached, INCEPTION_SHA256)
    raise FileNotFoundError(missing_inception_message([cached]))
