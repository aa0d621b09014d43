"""The device loader: values, order, sharding, flips, exact resume, packed == in-memory."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pixeljit.data import ArrayDataset, DeviceLoader, PackedDataset, pack_arrays
from pixeljit.data.loader import ACCELERATOR_PREFETCH

N, C, H, W = 50, 3, 4, 6


@pytest.fixture(scope="module")
def dataset() -> ArrayDataset:
    """N random images; label i for image i, so a batch's labels say which samples it holds."""
    images = np.random.default_rng(0).integers(0, 256, (N, C, H, W), dtype=np.uint8)
    return ArrayDataset(images, np.arange(N), [f"c{i}" for i in range(N)])


def take(loader, steps: int):
    return [next(loader) for _ in range(steps)]


def test_values_are_uint8_scaled_to_unit_range(dataset):
    loader = DeviceLoader(dataset, 10, flip=False, seed=3, prefetch=0)
    x, y = next(loader)
    assert x.dtype == torch.float32 and x.shape == (10, C, H, W) and y.dtype == torch.int64
    expected = torch.from_numpy(dataset.images[y.numpy()]).double() / 127.5 - 1
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)
    edges = ArrayDataset(np.array([0, 255], np.uint8).reshape(2, 1, 1, 1))
    x, _ = next(DeviceLoader(edges, 2, flip=False))
    assert sorted(x.flatten().tolist()) == [-1.0, 1.0]


def test_each_epoch_is_a_permutation_and_the_tail_is_dropped(dataset):
    loader = DeviceLoader(dataset, 16, seed=1)  # 50 = 3 * 16 + 2 dropped
    assert loader.steps_per_epoch == 3
    first = [y.tolist() for _, y in take(loader, 3)]
    assert loader.epoch == 1 and loader.position == 0
    second = [y.tolist() for _, y in take(loader, 3)]
    for epoch in (first, second):
        seen = [i for batch in epoch for i in batch]
        assert len(seen) == 48 and len(set(seen)) == 48  # no sample twice in an epoch
        assert set(seen) <= set(range(N))  # 48 of the 50: only the tail is dropped
        assert seen != sorted(seen)  # shuffled
    assert first != second  # a fresh permutation each epoch


def test_order_depends_only_on_seed_and_epoch(dataset):
    a = take(DeviceLoader(dataset, 8, seed=5, prefetch=2), 9)
    b = take(DeviceLoader(dataset, 8, seed=5, prefetch=0), 9)
    c = take(DeviceLoader(dataset, 8, seed=6), 9)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c, strict=True))


def _loader_threads() -> set[threading.Thread]:
    """The loader threads alive now (a set: another test's loader ending meanwhile is no
    loader started here)."""
    return {t for t in threading.enumerate() if t.name.startswith("pixeljit-loader")}


def test_a_cpu_device_gathers_inline_and_an_accelerator_ahead(dataset):
    """On a CPU the prefetch thread would share the cores with the training step (it slowed the
    demo's steps by a third): by default no thread is started there."""
    before = _loader_threads()
    with DeviceLoader(dataset, 8, seed=5) as loader:
        take(loader, 3)
        assert loader.prefetch == 0 and not _loader_threads() - before
    with DeviceLoader(dataset, 8, seed=5, prefetch=2) as loader:
        take(loader, 3)
        assert len(_loader_threads() - before) == 1  # asked for explicitly: still honoured
    assert DeviceLoader(dataset, 8, device="meta").prefetch == ACCELERATOR_PREFETCH


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_split_the_single_process_batch(dataset, world_size):
    steps = 7  # crosses two epoch boundaries (6 steps per epoch at 8)
    single = take(DeviceLoader(dataset, 8, seed=2), steps)
    ranks = [
        take(DeviceLoader(dataset, 8, seed=2, rank=r, world_size=world_size), steps)
        for r in range(world_size)
    ]
    for step in range(steps):
        x = torch.cat([ranks[r][step][0] for r in range(world_size)])
        y = torch.cat([ranks[r][step][1] for r in range(world_size)])
        assert torch.equal(x, single[step][0]) and torch.equal(y, single[step][1])


def test_flips_are_mirror_images_of_about_half(dataset):
    plain = take(DeviceLoader(dataset, 10, seed=4, flip=False), 25)
    flipped = take(DeviceLoader(dataset, 10, seed=4, flip=True), 25)
    count = 0
    for (xp, yp), (xf, yf) in zip(plain, flipped, strict=True):
        assert torch.equal(yp, yf)  # flipping never changes the order
        same = (xp == xf).flatten(1).all(1)
        mirror = (xp.flip(-1) == xf).flatten(1).all(1)
        assert bool((same | mirror).all())
        count += int((mirror & ~same).sum())
    assert 75 <= count <= 175  # 250 fair coin flips; outside this range has p < 1e-10


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("stop", [2, 3, 8])  # mid-epoch, at the epoch boundary, next epoch
def test_resume_is_bit_identical(dataset, prefetch, stop):
    ref = DeviceLoader(dataset, 16, seed=9, prefetch=prefetch)
    take(ref, stop)
    state = ref.state_dict()
    expected = take(ref, 5)
    resumed = DeviceLoader(dataset, 16, seed=9, prefetch=prefetch)
    take(resumed, 1)  # some other progress, overwritten by the state
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (state["epoch"], state["position"])
    for (xe, ye), (xr, yr) in zip(expected, take(resumed, 5), strict=True):
        assert torch.equal(xe, xr) and torch.equal(ye, yr)
    ref.close()
    resumed.close()


def test_resume_on_more_ranks(dataset):
    ref = DeviceLoader(dataset, 8, seed=1)
    take(ref, 4)
    state = ref.state_dict()
    expected = take(ref, 3)
    halves = []
    for rank in range(2):
        loader = DeviceLoader(dataset, 8, seed=1, rank=rank, world_size=2)
        loader.load_state_dict(state)
        halves.append(take(loader, 3))
    for step in range(3):  # the same images (flips included) and labels, split by rank
        assert torch.equal(torch.cat([h[step][0] for h in halves]), expected[step][0])
        assert torch.equal(torch.cat([h[step][1] for h in halves]), expected[step][1])


def test_bad_state_and_arguments(dataset):
    loader = DeviceLoader(dataset, 8, seed=1)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="seed"):
        DeviceLoader(dataset, 8, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="flip"):
        DeviceLoader(dataset, 8, seed=1, flip=False).load_state_dict(state)
    with pytest.raises(ValueError, match="multiple of world_size"):
        DeviceLoader(dataset, 10, world_size=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DeviceLoader(dataset, 64)
    with pytest.raises(ValueError, match="rank"):
        DeviceLoader(dataset, 8, rank=2, world_size=2)


def test_packed_and_in_memory_sets_load_the_same(dataset, tmp_path):
    pack_arrays(dataset.images, tmp_path / "p", dataset.labels, images_per_shard=16)  # 4 shards
    packed = PackedDataset(tmp_path / "p", verify=True)
    assert len(packed.manifest["shards"]) == 4
    a = take(DeviceLoader(packed, 10, seed=8), 6)
    b = take(DeviceLoader(dataset, 10, seed=8), 6)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_mirrored_rows_are_the_documented_flip_bits(dataset):
    """Position p of epoch e is mirrored iff u_p < 1/2, u = torch.rand(N) from a generator seeded
    by derive_seed(seed, e, stream 1) (the module's documented draw), whatever the batch."""
    from pixeljit.rng import derive_seed

    for epoch in (0, 1):
        gen = torch.Generator().manual_seed(derive_seed(4, epoch, 1))
        u = torch.rand(N, generator=gen)
        assert bool(((u >= 0.35) & (u < 0.5)).any())  # a threshold of 0.35 would differ here
        want = (u < 0.5)[: 5 * 10].view(5, 10)  # 5 batches of 10: positions 0…49
        loader = DeviceLoader(dataset, 10, seed=4, flip=True)
        loader.load_state_dict({**loader.state_dict(), "epoch": epoch, "position": 0})
        for k in range(5):
            x, y = next(loader)
            plain = torch.from_numpy(dataset.images[y.numpy()]).double() / 127.5 - 1
            mirrored = (x.double() - plain.flip(-1)).abs().flatten(1).amax(1) < 1e-6
            assert torch.equal(mirrored, want[k]), (epoch, k)


def test_an_epoch_that_divides_evenly_keeps_its_last_batch():
    """N = 48, G = 16: all three batches of epoch 0 (every sample once) come before epoch 1
    starts, and a saved position 32 resumes into that last batch, not the next epoch."""
    images = np.random.default_rng(1).integers(0, 256, (48, 1, 2, 2), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(48), [f"c{i}" for i in range(48)])
    loader = DeviceLoader(data, 16, seed=3)
    assert loader.steps_per_epoch == 3
    seen = []
    for k in range(3):
        assert (loader.epoch, loader.position) == (0, 16 * k)
        seen += next(loader)[1].tolist()
    assert sorted(seen) == list(range(48))
    assert (loader.epoch, loader.position) == (1, 0)
    third = DeviceLoader(data, 16, seed=3)
    take(third, 2)
    state = third.state_dict()
    assert (state["epoch"], state["position"]) == (0, 32)
    resumed = DeviceLoader(data, 16, seed=3)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (0, 32)
    assert sorted(next(resumed)[1].tolist() + seen[:32]) == list(range(48))


def test_load_state_refuses_another_size_and_positions_out_of_range(dataset):
    """The order depends on N: a state of a 50-sample set is refused by a 48-sample loader
    (unless `other_size_ok`), as are a negative epoch and positions outside [0, N]."""
    state = DeviceLoader(dataset, 8, seed=1).state_dict()
    smaller = ArrayDataset(dataset.images[:48], dataset.labels[:48], dataset.class_names)
    with pytest.raises(ValueError, match="num_samples=50"):
        DeviceLoader(smaller, 8, seed=1).load_state_dict(state)
    DeviceLoader(smaller, 8, seed=1).load_state_dict(state, other_size_ok=True)
    for epoch, position in [(-1, 0), (0, -8), (0, N + 8)]:
        with pytest.raises(ValueError, match="invalid loader state"):
            DeviceLoader(dataset, 8, seed=1).load_state_dict(
                {**state, "epoch": epoch, "position": position}
            )
    edge = DeviceLoader(dataset, 8, seed=1)
    edge.load_state_dict({**state, "epoch": 2, "position": N})  # the end: the next epoch
    assert (edge.epoch, edge.position) == (3, 0)
