"""Where extractor weights come from: user paths, the cache, or a sha256-verified download.

The standard FID network is the TensorFlow 2015-12-05 InceptionV3 graph ported to PyTorch by
pytorch-fid (the same file torch-fidelity ships); JiT's numbers were measured with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pixeljit.files.cache import CACHE_ENV, cache_root  # noqa: F401 (CACHE_ENV: the variable to set)
from pixeljit.files.download import download as download_file

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILENAME
)
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_BYTES = 95_628_359
INCEPTION_ENV = "PIXELJIT_INCEPTION_WEIGHTS"
INCEPTION_OPTION = "--inception-weights"


def cache_dir() -> Path:
    """pixeljit's download cache (see pixeljit.files.cache)."""
    return cache_root()


def missing_inception_message(looked_at: list[Path]) -> str:
    """How to obtain the FID Inception weights (used when they are not found)."""
    places = ", ".join(str(p) for p in looked_at) or "nowhere"
    return (
        f"FID Inception weights not found (looked at: {places}). Download {INCEPTION_FILENAME} "
        f"({INCEPTION_BYTES / 1e6:.1f} MB, sha256 {INCEPTION_SHA256}) from {INCEPTION_URL} and "
        f"pass its path with {INCEPTION_OPTION} PATH, or set {INCEPTION_ENV}=PATH, or put it at "
        f"{cache_dir() / INCEPTION_FILENAME} (from Python with internet access, "
        "resolve_inception_weights fetches and verifies it when asked to download). Offline, "
        "use the shipped extractors (FD-EffNetLite0, the Fashion-MNIST classifier) instead."
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
        if path.is_dir():
            given = "weights_path" if weights_path else INCEPTION_ENV
            raise IsADirectoryError(f"FID Inception weights {path} ({given}) is a folder: pass "
                                    f"the weights file itself ({INCEPTION_FILENAME})")  # fmt: skip
        if not path.is_file():
            raise FileNotFoundError(missing_inception_message([path]))
        return path
    cached = cache_dir() / INCEPTION_FILENAME
    if cached.is_file():
        return cached
    if download:
        return download_file(INCEPTION_URL, cached, INCEPTION_SHA256)
    raise FileNotFoundError(missing_inception_message([cached]))
