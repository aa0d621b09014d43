"""Streaming statistics: single pass = numpy, chunked/merged = single pass, gloo all-reduce."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from pixeljit.metrics import (
    Extracted,
    FeatureExtractor,
    KIDConfig,
    ScoreConfig,
    compute_dataset_stats,
    score_images,
)
from pixeljit.metrics.stats import FeatureBank, FeatureStats, all_gather_rows

DIM = 12


def _data(n: int = 500, offset: float = 1e4, seed: int = 0) -> torch.Tensor:
    """Features with a large common offset: the naive Σxxᵀ − nμμᵀ would lose digits here."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64)
    return torch.randn(n, DIM, generator=gen, dtype=torch.float64) @ mix + offset


def test_single_pass_matches_numpy():
    x = _data()
    stats = FeatureStats(DIM).update(x)
    mu, sigma = stats.mu_sigma()
    np.testing.assert_allclose(mu, x.numpy().mean(0), rtol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.count == len(x)


def test_chunked_and_merged_equal_single_pass():
    x = _data(seed=1)
    single = FeatureStats(DIM).update(x)
    chunked = FeatureStats(DIM)
    for part in torch.split(x, [1, 0, 37, 200, 262]):  # includes an empty and a 1-row chunk
        chunked.update(part)
    a, b = FeatureStats(DIM).update(x[:123]), FeatureStats(DIM).update(x[123:])
    merged = a.merge(b)
    for other in (chunked, merged):
        assert other.count == single.count
        torch.testing.assert_close(other.mean, single.mean, rtol=1e-14, atol=0)
        torch.testing.assert_close(other.covariance(), single.covariance(), rtol=1e-10, atol=1e-10)
    assert FeatureStats(DIM).merge(single).count == single.count  # merging into an empty one


def test_stats_reject_bad_input():
    with pytest.raises(ValueError, match="features must be"):
        FeatureStats(DIM).update(torch.zeros(4, DIM + 1))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(DIM).update(torch.zeros(1, DIM)).covariance()
    for bad in (float("nan"), float("inf")):  # the statistics (and FD) were silently NaN
        feats = torch.zeros(4, DIM)
        feats[2, 1] = bad
        stats = FeatureStats(DIM).update(torch.ones(3, DIM))
        with pytest.raises(ValueError, match="NaN or infinite"):
            stats.update(feats)
        assert stats.count == 3 and bool(torch.isfinite(stats.mean).all())
        with pytest.raises(ValueError, match="NaN or infinite"):
            FeatureBank(capacity=None).add(feats)


def test_bank_keeps_all_in_order_or_a_uniform_reservoir():
    x = torch.arange(40, dtype=torch.float32).view(20, 2)
    bank = FeatureBank()
    for part in x.split(6):
        bank.add(part)
    torch.testing.assert_close(bank.features(), x)
    capacity, trials, hits = 5, 2000, np.zeros(20)
    for seed in range(trials):
        bank = FeatureBank(capacity, seed=seed)
        for part in x.split(7):
            bank.add(part)
        kept = bank.features()[:, 0].long() // 2  # row index of each kept item
        assert kept.unique().numel() == capacity
        hits[kept.numpy()] += 1
    # each item must be kept with probability capacity / N = 0.25 (5 sigma ≈ 0.05)
    np.testing.assert_allclose(hits / trials, capacity / 20, atol=0.05)


def test_kid_and_pr_keep_a_bounded_bank_by_default(monkeypatch):
    """10M generated images must not keep 80 GB of features: the default bank holds the
    FID-standard 50k (every image up to there, a uniform sample beyond)."""
    import inspect

    import pixeljit.metrics.dataset_stats as dataset_stats_module
    import pixeljit.metrics.score as score_module
    from pixeljit.metrics.dataset_stats import compute_dataset_stats
    from pixeljit.metrics.score import ScoreConfig
    from pixeljit.metrics.stats import DEFAULT_BANK_CAPACITY, FeatureBank

    assert DEFAULT_BANK_CAPACITY == 50_000 and ScoreConfig().bank_capacity == 50_000
    default = inspect.signature(compute_dataset_stats).parameters["bank_capacity"].default
    assert default == DEFAULT_BANK_CAPACITY
    capacities = []

    class Recorded(FeatureBank):
        def __init__(self, capacity, *args, **kwargs):
            capacities.append(capacity)
            super().__init__(capacity, *args, **kwargs)

    for module in (score_module, dataset_stats_module):  # the banks scoring really builds
        if hasattr(module, "FeatureBank"):
            monkeypatch.setattr(module, "FeatureBank", Recorded)
    ref = compute_dataset_stats(_images(1), _PooledPixels(), batch_size=32)
    config = ScoreConfig(batch_size=32, kid=KIDConfig(num_subsets=2, subset_size=50))
    score_images(_images(2), _PooledPixels(), ref, ("kid", "pr"), config)
    assert capacities and set(capacities) == {DEFAULT_BANK_CAPACITY}


class _PooledPixels(FeatureExtractor):
    """A tiny deterministic extractor: 4×4 average-pooled pixels and a fixed linear head."""

    name, fd_label, dim, num_classes = "pooled-pixels", "FD-pixels", 16, 5

    def __init__(self) -> None:
        self.head = torch.randn(16, 5, generator=torch.Generator().manual_seed(0)) / 100

    def extract(self, images: torch.Tensor) -> Extracted:
        f = torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)  # (N, 16)
        return Extracted(features=f, logits=f @ self.head)


def _images(seed: int, n: int = 150) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 16, 16), generator=gen, dtype=torch.uint8)


SCORE_CFG = ScoreConfig(batch_size=32, kid=KIDConfig(num_subsets=4, subset_size=60), is_splits=3)


def _score_shards(rank: int | None) -> dict[str, float]:
    """Scores with each rank given its contiguous shard (rank None: everything, one process)."""
    ext, ref_images, images = _PooledPixels(), _images(1), _images(2)
    if rank is not None:
        ref_images = ref_images[:70] if rank == 0 else ref_images[70:]
        images = images[:90] if rank == 0 else images[90:]
    ref = compute_dataset_stats(ref_images, ext, batch_size=32)
    return score_images(images, ext, ref, cfg=SCORE_CFG).as_dict()


def test_precision_recall_compare_equal_numbers_of_real_and_generated_features():
    """k-NN radii shrink as a set grows: 40 samples are judged against 40 of the reference's
    300 features, drawn once with a fixed seed (the same rows for every model), while FD keeps
    the reference's full moments."""
    from pixeljit.metrics import PRConfig, precision_recall
    from pixeljit.metrics.score import matched_real_features

    ext = _PooledPixels()
    ref = compute_dataset_stats(_images(1, n=300), ext, batch_size=64)
    assert ref.features.shape == (300, ext.dim)
    real = torch.from_numpy(ref.features)
    cut = matched_real_features(real, 40)
    assert cut.shape == (40, ext.dim) and (cut == matched_real_features(real, 40)).all()
    rows = {tuple(r) for r in real.tolist()}
    assert all(tuple(r) in rows for r in cut.tolist())  # rows of the reference, not new ones
    assert matched_real_features(real, 300) is real  # no more to draw from: all of them
    images = _images(2, n=40)
    cfg = ScoreConfig(batch_size=64, metrics=("pr",))
    scores = score_images(images, ext, ref, cfg=cfg)
    fake = ext.extract(images).features
    assert (scores.precision, scores.recall) == precision_recall(cut, fake, PRConfig())
    assert (scores.precision, scores.recall) != precision_recall(real, fake, PRConfig())


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = _data(seed=5)
        shard = x[:170] if rank == 0 else x[170:]  # unequal shards
        stats = FeatureStats(DIM)
        for part in shard.split(64):
            stats.update(part)
        stats.all_reduce()
        bank = FeatureBank()
        bank.add(shard.float())
        gathered = bank.all_gather()
        result = {"count": stats.count, "mean": stats.mean, "cov": stats.covariance()}
        result.update(bank=gathered, scores=_score_shards(rank))
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gloo_all_reduce_equals_single_process(tmp_path):
    port = free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    x = _data(seed=5)
    single = FeatureStats(DIM).update(x)
    single_scores = _score_shards(None)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["scores"].keys() == single_scores.keys()
        for key, value in single_scores.items():  # FD, KID, IS, precision, recall, count
            assert got["scores"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        assert got["count"] == len(x)
        torch.testing.assert_close(got["mean"], single.mean, rtol=1e-14, atol=0)
        torch.testing.assert_close(got["cov"], single.covariance(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got["bank"], x.float())  # rank order, unequal sizes


def test_all_gather_rows_is_identity_without_ranks():
    x = torch.randn(3, 4)
    assert all_gather_rows(x) is x


def test_reservoir_is_algorithm_r_item_by_item():
    """The bank equals Vitter's Algorithm R run one item at a time, written out here: the first
    `capacity` items fill the slots, then item i (0-based) draws j ~ U{0, …, i} (inclusive of i)
    from default_rng(seed) and replaces slot j when j < capacity. Chunks of any size, one
    crossing the fill point, give exactly that reservoir."""
    capacity, n, seed = 6, 40, 17
    x = torch.arange(2 * n, dtype=torch.float32).view(n, 2)
    rng = np.random.default_rng(seed)
    slots = list(range(capacity))  # the item index each slot holds
    for i in range(capacity, n):
        j = int(rng.integers(0, i + 1))
        if j < capacity:
            slots[j] = i
    bank = FeatureBank(capacity, seed=seed)
    for part in x.split([4, 5, 1, 13, 17]):
        bank.add(part)
    assert bank.seen == n
    torch.testing.assert_close(bank.features(), x[slots], rtol=0, atol=0)
