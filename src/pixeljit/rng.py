"""Deterministic seeds: one well-mixed 63-bit torch generator seed from a tuple of integers.

Used for the data order (seed, epoch, stream), per-step noise (seed, step, chunk, tag) and
per-sample sampling noise (seed, index). numpy's SeedSequence hashes the tuple, so nearby keys do
not collide, and the result is the same on every platform.

SeedSequence reads a key of 2³² or more as several 32-bit words and pads a short list with zero
words, so `(b + a·2³², 0)` and `(b, a)` would hash alike (seed 2³² gave image 1 of seed 0). A
tuple holding such a key is therefore written two words a key, with a closing mark, which no
tuple of small keys of the same length can spell; tuples of keys below 2³² hash as they always
did (every earlier seed gives the same noise).
"""

from __future__ import annotations

import numpy as np

SEED_BITS = 63  # torch.Generator.manual_seed takes a non-negative int64
WORD_BITS = 32  # SeedSequence's word
KEY_BITS = 64  # a key is at most two words
WIDE_MARK = 0x57494445  # 'WIDE': ends a tuple written two words a key


def _words(keys: tuple[int, ...]) -> list[int]:
    for key in keys:
        if not 0 <= key < 1 << KEY_BITS:
            raise ValueError(f"a seed key must lie in [0, 2^{KEY_BITS}), got {key}")
    if all(key < 1 << WORD_BITS for key in keys):
        return list(keys)
    low = (1 << WORD_BITS) - 1
    return [w for key in keys for w in (key & low, key >> WORD_BITS)] + [WIDE_MARK]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from the integers `keys` (order matters; each in [0, 2⁶⁴))."""
    hi, lo = np.random.SeedSequence(_words(keys)).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << SEED_BITS) - 1)
