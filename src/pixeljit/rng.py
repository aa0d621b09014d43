"""Deterministic seeds: one well-mixed 63-bit torch generator seed from a tuple of integers.

Used for the data order (seed, epoch, stream), per-step noise (seed, step, chunk, tag) and
per-sample sampling noise (seed, index). numpy's SeedSequence hashes the tuple, so nearby keys do
not collide, and the result is the same on every platform.
"""

from __future__ import annotations

import numpy as np

SEED_BITS = 63  # torch.Generator.manual_seed takes a non-negative int64


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from the integers `keys` (order matters)."""
    hi, lo = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << SEED_BITS) - 1)
