"""Temporary sibling names for atomic writes (write the sibling, then os.replace it).

Unlike tempfile.mkstemp / mkdtemp, files and folders created under these names get the usual
umask-derived permissions, so a published set is readable by the same users as any other file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

_TOKEN_CHARS = 8


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden name beside `path` (same folder, hence same file system)."""
    token = uuid.uuid4().hex[:_TOKEN_CHARS]
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{token}")
