"""What torchrun tells each process it starts, read from the environment before any process
group exists and without importing torch (the command line reads it before the verbs load): a
process started without torchrun is rank 0 of 1."""

from __future__ import annotations

import os


def launch_rank() -> int:
    """This process's rank as torchrun announces it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def launch_world_size() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
