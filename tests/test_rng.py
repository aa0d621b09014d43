"""Seeds derived from tuples of keys: distinct tuples give distinct seeds (the same-length
tuples one call site makes, keys of 2³² and more included), and the seeds keys below 2³² always
gave are kept (a run's noise does not change with an upgrade)."""

from __future__ import annotations

import itertools

import pytest
import torch

from pixeljit.diffusion.noise import noise_from_seeds, sample_seeds
from pixeljit.rng import derive_seed

WORD = 1 << 32


def test_seeds_of_small_keys_are_the_ones_earlier_versions_derived():
    # values numpy's SeedSequence gave for these tuples before wide keys were handled
    assert derive_seed(0, 1) == 7805851153417077868
    assert derive_seed(12345, 3, 0x70786A74) == 2954779933949711847
    assert derive_seed(7, 5) == 4306155241153547170


def test_a_key_of_two_words_does_not_spell_two_small_keys():
    # SeedSequence reads 5·2³² + 7 as the words (7, 5) and pads (7, 5) with a zero word
    assert derive_seed(5 * WORD + 7, 0) != derive_seed(7, 5)
    seeds = [0, 1, 7, WORD - 1, WORD, WORD + 1, 5 * WORD + 7, 7 * WORD, (1 << 63) - 1]
    pairs = list(itertools.product(seeds, range(8)))
    derived = [derive_seed(seed, index) for seed, index in pairs]
    assert len(set(derived)) == len(pairs)
    quads = list(itertools.product(seeds, range(3), range(2), [0x70786A74]))
    assert len({derive_seed(*keys) for keys in quads}) == len(quads)


def test_sampling_noise_of_seed_two_to_the_32_is_not_seed_0s_second_image():
    wide = noise_from_seeds(sample_seeds(WORD, 1), (1, 4, 4))
    second = noise_from_seeds(sample_seeds(0, 1, start=1), (1, 4, 4))
    assert not torch.equal(wide, second)


@pytest.mark.parametrize("key", [-1, 1 << 64])
def test_a_key_outside_two_words_is_refused(key):
    with pytest.raises(ValueError, match=r"a seed key must lie in \[0, 2\^64\)"):
        derive_seed(0, key)
