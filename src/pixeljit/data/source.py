"""What every source hands to the packer: metadata plus a stream of uint8 batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

SKIP_BAD_HINT = (
    "to skip unreadable images (and list them), pack the folder with `pixeljit prepare SRC "
    "--skip-bad --size S --out DIR` and use DIR (Python: skip_bad=True)"
)


BATCH_BYTES = 256 << 20  # decoded images a source holds at once (np.stack copies them once)


def batch_images(most: int, channels: int, size: int) -> int:
    """Images per batch a source yields: `most`, fewer where those would pass BATCH_BYTES (at
    least one): 1024 Fashion-MNIST images at 4096 px were 17 GB, and the packer was killed."""
    return max(1, min(most, BATCH_BYTES // (channels * size * size)))


@dataclass(frozen=True)
class BadImage:
    """An input that could not be decoded: where it is and why."""

    path: str
    reason: str


class BadImageError(ValueError):
    """Raised for a corrupt or unreadable image when skipping was not asked for."""

    def __init__(self, bad: BadImage):
        super().__init__(f"cannot read image {bad.path}: {bad.reason}; {SKIP_BAD_HINT}")
        self.bad = bad


@dataclass
class SourceStream:
    """A source ready to pack.

    `batches` yields (images (n, C, S, S) uint8, labels (n,) int64); `skipped` fills up while it
    is consumed (only under skip_bad). Unconditional sources have one class and label 0.
    """

    class_names: list[str]
    conditional: bool
    description: dict
    batches: Iterator[tuple[np.ndarray, np.ndarray]]
    total: int | None = None  # items the stream will try (for progress bars), if known
    skipped: list[BadImage] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # other files, hidden entries: left out
