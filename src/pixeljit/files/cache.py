"""Where pixeljit keeps what it downloads or derives: one cache root for every module."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PIXELJIT_CACHE"


def cache_root() -> Path:
    """`$PIXELJIT_CACHE`, else ($XDG_CACHE_HOME or ~/.cache)/pixeljit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pixeljit"
