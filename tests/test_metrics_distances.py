"""FD, KID, IS and precision/recall against analytic answers and independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from pixeljit.metrics.distances import (
    KIDConfig,
    PRConfig,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    knn_radii,
    precision_recall,
    sqrt_psd,
)


def _random_cov(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


def _fd_scipy(mu1, s1, mu2, s2) -> float:
    """The classic FID formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    )


@pytest.mark.parametrize("d", [8, 64])
def test_fd_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, s1 = _random_cov(rng, d, 4 * d)
    mu2, s2 = _random_cov(rng, d, 4 * d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = _fd_scipy(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-10)  # symmetric
    cached = frechet_distance(mu1, s1, mu2, s2, sqrt_sigma2=sqrt_psd(s2))
    assert cached == pytest.approx(ours, rel=1e-12)


def test_fd_diagonal_closed_form_and_identity():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    mu, s = _random_cov(rng, 32, 20)  # rank-deficient (n < d) covariance
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)


def test_fd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def _kid_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (aᵀb/d + 1)³ by explicit loops over pairs."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_equals_brute_force_unbiased_estimator():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((7, 5)) + 0.5
    # one subset holding every sample: the estimate is permutation invariant, so exact
    mean, std = kernel_inception_distance(x, y, KIDConfig(num_subsets=1, subset_size=7))
    assert mean == pytest.approx(_kid_brute_force(x, y), rel=1e-12)
    assert std == 0.0


def _kid_subsets_brute_force(x, y, cfg: KIDConfig, m: int) -> list[float]:
    """Each subset's MMD² by brute force, `m` samples of each set drawn as documented: without
    replacement, from `cfg.seed`, x's then y's."""
    draw = np.random.default_rng(cfg.seed)
    per_subset = []
    for _ in range(cfg.num_subsets):
        xs = x[draw.choice(len(x), m, replace=False)]
        ys = y[draw.choice(len(y), m, replace=False)]
        per_subset.append(_kid_brute_force(xs, ys))
    return per_subset


def test_kid_near_zero_for_same_distribution_positive_for_different():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    cfg = KIDConfig(num_subsets=20, subset_size=300)
    same, same_std = kernel_inception_distance(a, b, cfg)
    shifted, _ = kernel_inception_distance(a, b + 0.5, cfg)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 20 * max(abs(same), same_std)


def test_inception_score_bounds_and_extremes():
    k = 10
    confident = torch.full((100, k), -50.0)
    confident[torch.arange(100), torch.arange(100) % k] = 50.0  # every class equally, confidently
    mean, std = inception_score(confident, splits=1)  # (splits of a fixed random order)
    assert mean == pytest.approx(k, rel=1e-9) and std < 1e-9
    same = torch.zeros(100, k)
    same[:, 3] = 10.0  # every image predicted as the same class
    assert inception_score(same, splits=5)[0] == pytest.approx(1.0, abs=1e-12)
    rand = torch.randn(200, k, generator=torch.Generator().manual_seed(0)) * 3
    value = inception_score(rand, splits=4)[0]
    assert 1.0 < value < k
    probs = torch.softmax(rand.double(), dim=1)
    assert inception_score(probs, splits=4, from_logits=False)[0] == pytest.approx(value, rel=1e-9)
    uniform = torch.full((50, k), 1.0 / k)  # maximal uncertainty
    assert inception_score(uniform, splits=5, from_logits=False)[0] == pytest.approx(1.0)


def test_knn_radii_match_sorted_distances_with_small_blocks():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(23, 6, generator=gen, dtype=torch.float64)
    cfg = PRConfig(k=3, row_batch=7, col_batch=5, dtype=torch.float64)
    expected = torch.cdist(x, x).pow(2).sort(dim=1).values[:, 3]  # column 0 is the point itself
    torch.testing.assert_close(knn_radii(x, cfg), expected, rtol=1e-9, atol=1e-12)


def test_precision_recall_identical_disjoint_and_half():
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(200, 8, generator=gen)
    cfg = PRConfig(k=3, row_batch=64, col_batch=50)
    assert precision_recall(real, real.clone(), cfg) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0, cfg) == (0.0, 0.0)
    half = torch.cat([real[:100], real[:100] + 1000.0])  # half on the manifold, half far away
    precision, recall = precision_recall(real, half, cfg)
    assert precision == 0.5
    assert recall >= 0.5  # the 100 shared points are covered for sure


def test_precision_recall_match_brute_force_balls_with_small_blocks():
    """Each side's share inside the other's k-NN balls, counted from the full distance matrix."""
    gen = torch.Generator().manual_seed(5)
    real = torch.randn(61, 5, generator=gen, dtype=torch.float64)
    fake = 1.3 * torch.randn(47, 5, generator=gen, dtype=torch.float64) + 0.4
    cfg = PRConfig(k=3, row_batch=9, col_batch=7, dtype=torch.float64)

    def share_inside(queries, support):
        radii = torch.cdist(support, support).sort(dim=1).values[:, cfg.k]
        return (torch.cdist(queries, support) <= radii).any(dim=1).double().mean().item()

    precision, recall = precision_recall(real, fake, cfg)
    assert (precision, recall) == (share_inside(fake, real), share_inside(real, fake))
    assert 0 < precision < 1 and 0 < recall < 1  # neither side trivially all or nothing


def test_a_point_on_a_k_nn_radius_counts_as_inside():
    """Kynkäänniemi et al.'s balls are closed (distance ≤ radius): here every point that counts
    lies exactly on a radius. Real radii (k = 1): 1, 1, 2, 3, 4; the two fakes at -1 are at 1
    from 0 (precision 2/5). Fake radii: 0, 0, 10, 10, 10; the real 10 is at 10 from 20
    (recall 1/5)."""
    real = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=torch.float64)
    fake = torch.tensor([[-1.0], [-1.0], [20.0], [30.0], [40.0]], dtype=torch.float64)
    assert precision_recall(real, fake, PRConfig(k=1, dtype=torch.float64)) == (0.4, 0.2)


def test_defaults_are_the_documented_ones():
    """docs/metrics.md: KID over 100 subsets of 1000 with the cubic kernel, IS over 10 splits,
    precision / recall with k = 3 (the defaults of torch-fidelity and Kynkäänniemi et al.)."""
    from pixeljit.metrics.score import ScoreConfig

    kid = KIDConfig()
    assert (kid.num_subsets, kid.subset_size, kid.degree) == (100, 1000, 3)
    assert PRConfig().k == 3
    score = ScoreConfig()
    assert score.is_splits == 10
    assert (score.kid, score.pr) == (kid, PRConfig())


def test_fd_of_a_set_against_itself_is_never_negative():
    """FD is a squared distance: equal moments give round-off of either sign (−1e-10 here for
    some seeds), which must be reported as exactly 0, never below it."""
    values = []
    for seed in range(10):
        mu, s = _random_cov(np.random.default_rng(seed), 16, 100)
        values.append(frechet_distance(mu, s, mu, s))
    assert min(values) >= 0.0 and max(values) < 1e-9 * 16, values
    assert 0.0 in values  # the round-off case occurs among these seeds


@pytest.mark.parametrize(
    "sizes, num_subsets, subset_size, m",
    [((11, 13), 6, 5, 5),
     # len(y) = 6 < subset_size = 8 < len(x) = 11: min(8, 11, 6) = 6 of each (all of y)
     ((11, 6), 3, 8, 6)],
    ids=["subsets", "capped-by-the-smaller-set"],
)  # fmt: skip
def test_kid_is_the_mean_and_std_over_subsets_drawn_from_the_seed(
    sizes, num_subsets, subset_size, m
):
    """Each subset's unbiased MMD² by brute force, the subsets drawn as documented (without
    replacement, from `seed`, x's then y's, each min(subset_size, len(x), len(y)) samples): the
    mean and the (population) std of those."""
    rng = np.random.default_rng(sizes[1])
    x, y = rng.standard_normal((sizes[0], 4)), 0.7 * rng.standard_normal((sizes[1], 4)) + 0.3
    cfg = KIDConfig(num_subsets=num_subsets, subset_size=subset_size, seed=123)
    per_subset = _kid_subsets_brute_force(x, y, cfg, m)
    mean, std = kernel_inception_distance(x, y, cfg)
    assert mean == pytest.approx(np.mean(per_subset), rel=1e-10)
    assert std == pytest.approx(np.std(per_subset), rel=1e-10) and std > 0


def test_inception_score_mean_and_population_std_over_the_splits():
    """IS of each of the `splits` chunks of the documented order (`inception_split_order`) by
    hand, exp(mean_x KL(p(y|x) ‖ p̄(y))) with p̄ the chunk's mean prediction; the result is their
    mean and population std (ddof = 0, as the original code's np.std)."""
    from pixeljit.metrics.distances import inception_split_order

    logits = np.random.default_rng(3).standard_normal((30, 5)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    per_split = []
    for chunk in np.array_split(p[inception_split_order(np.log(p))], 3):
        kl = (chunk * (np.log(chunk) - np.log(chunk.mean(0)))).sum(1)
        per_split.append(np.exp(kl.mean()))
    mean, std = inception_score(torch.from_numpy(logits), splits=3)
    assert mean == pytest.approx(np.mean(per_split), rel=1e-12)
    assert std == pytest.approx(np.std(per_split), rel=1e-10)
    assert abs(std - np.std(per_split, ddof=1)) > 1e-3 * std  # the two conventions differ here
