"""Distances between feature sets: Fréchet distance, KID, Inception Score, precision/recall.

Everything here works on plain features/logits (any extractor). FD and KID are computed in
float64; precision/recall distances in the dtype of a config field (float32 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
FD_ROUNDOFF = 1e-9  # FD below 0 by at most this × (‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂) is round-off: 0


def _as_f64(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(x) if isinstance(x, np.ndarray) else x.detach()
    return t.to(dtype=torch.float64, device="cpu")


def _above_noise(evals: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those under the round-off floor d·ε·λ_max set to 0.

    A zero eigenvalue comes out of LAPACK as ±ε·λ_max; its square root would add √ε·λ_max^½
    of noise per null direction (rank-deficient covariances: fewer samples than dimensions).
    """
    floor = max(evals.max(initial=0.0), 0.0) * len(evals) * np.finfo(np.float64).eps
    return np.where(evals > floor, evals, 0.0)


def sqrt_psd(sigma: ArrayLike) -> np.ndarray:
    """Symmetric square root (float64) of a symmetric PSD matrix via eigh (round-off zeroed)."""
    s = _as_f64(sigma).numpy()  # numpy's LAPACK: faster than torch's on CPU here
    evals, evecs = np.linalg.eigh((s + s.T) / 2)
    return (evecs * np.sqrt(_above_noise(evals))) @ evecs.T


def trace_sqrt_product(
    sigma1: ArrayLike, sigma2: ArrayLike, sqrt_sigma2: np.ndarray | None = None
) -> float:
    """tr √(Σ₁Σ₂) for symmetric PSD Σ₁, Σ₂, in float64.

    Σ₁Σ₂ has the eigenvalues of the symmetric PSD matrix Σ₂^½ Σ₁ Σ₂^½, so the trace is the sum of
    their square roots: one symmetric eigenvalue solve, no general (non-symmetric) sqrtm.
    Eigenvalues under the round-off floor count as 0, so identical rank-deficient covariances
    give FD ≈ 0 to ε·tr Σ. `sqrt_sigma2`, if given, is a precomputed `sqrt_psd(sigma2)`
    (data-set statistics cache theirs; then each FD costs two products and one eigvalsh).
    """
    root2 = sqrt_psd(sigma2) if sqrt_sigma2 is None else sqrt_sigma2
    middle = root2 @ _as_f64(sigma1).numpy() @ root2
    evals = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(_above_noise(evals)).sum())


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    sqrt_sigma2: np.ndarray | None = None,
) -> float:
    """Fréchet distance ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂) between two Gaussians (float64),
    ≥ 0 (a round-off value just below 0 is reported as 0).

    `sqrt_sigma2` optionally passes a cached `sqrt_psd(sigma2)` (saves one eigh per call).
    """
    m1, m2, s1, s2 = (_as_f64(a) for a in (mu1, mu2, sigma1, sigma2))
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must be equal-length vectors, got {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {s1.shape} and {s2.shape}")
    diff = m1 - m2
    total = float(diff @ diff + s1.trace() + s2.trace())
    value = total - 2 * trace_sqrt_product(s1, s2, sqrt_sigma2)
    # FD is a squared distance (the squared 2-Wasserstein distance), never negative: a value just
    # below 0 is the round-off of equal moments (a set against itself gave -4.5e-12), so it is 0
    if -FD_ROUNDOFF * total <= value < 0:
        value = 0.0
    return value


@dataclass
class KIDConfig:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with k(x,y)=(xᵀy/d+1)³.

    Defaults follow torch-fidelity / the original code: 100 subsets of 1000 samples each.
    """

    num_subsets: int = 100
    subset_size: int = 1000
    degree: int = 3
    coef0: float = 1.0
    gamma: float | None = None  # None = 1 / dim
    seed: int = 0


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef0: float
) -> torch.Tensor:
    """(γ xᵀy + c)^degree for rows of x (m, d) and y (n, d) -> (m, n)."""
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> float:
    """Unbiased MMD² from kernel matrices: off-diagonal means of K_XX, K_YY minus 2·mean K_XY."""
    m, n = k_xx.shape[0], k_yy.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * k_xy.mean())


def kid_subset_size(n_x: int, n_y: int, cfg: KIDConfig | None = None) -> int:
    """The samples per subset KID draws from sets of `n_x` and `n_y` features: cfg.subset_size,
    or fewer when a set is smaller (all of the smaller set)."""
    cfg = cfg or KIDConfig()
    return min(cfg.subset_size, n_x, n_y)


def kernel_inception_distance(
    feats1: ArrayLike, feats2: ArrayLike, cfg: KIDConfig | None = None
) -> tuple[float, float]:
    """KID mean and standard deviation over random subsets.

    Subsets of `kid_subset_size` samples (cfg.subset_size, or all of the smaller set when it is
    smaller) are drawn without replacement (seeded) and evaluated in float64 on the device of
    `feats1`; the full feature sets stay in their own dtype (no float64 copy of 50k × 2048).
    When both sets have that many samples exactly, every subset is the whole of both sets: the
    std is then round-off (about 1e-16), not a spread.
    """
    cfg = cfg or KIDConfig()
    x = torch.as_tensor(feats1)
    y = torch.as_tensor(feats2).to(x.device)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (N, d) with equal d, got {x.shape} and {y.shape}")
    gamma = cfg.gamma if cfg.gamma is not None else 1.0 / x.shape[1]
    m = kid_subset_size(x.shape[0], y.shape[0], cfg)
    rng = np.random.default_rng(cfg.seed)
    values = []
    for _ in range(cfg.num_subsets):
        xs = x[torch.from_numpy(rng.choice(x.shape[0], m, replace=False)).to(x.device)].double()
        ys = y[torch.from_numpy(rng.choice(y.shape[0], m, replace=False)).to(y.device)].double()
        k = lambda a, b: polynomial_kernel(a, b, cfg.degree, gamma, cfg.coef0)
        values.append(mmd2_unbiased(k(xs, xs), k(ys, ys), k(xs, ys)))
    arr = np.asarray(values)
    return float(arr.mean()), float(arr.std())


IS_SHUFFLE_SEED = 2020  # the seed torch-fidelity shuffles the images with before its IS splits


def canonical_order(z: np.ndarray) -> np.ndarray:
    """Row indices of `z` (N, K) sorted lexicographically by value (first column, then the
    second, …): the same rows in any order give the same sequence of rows."""
    if z.shape[1] == 0:
        return np.arange(len(z))
    fields = np.dtype([(f"c{i}", z.dtype) for i in range(z.shape[1])])
    return np.argsort(np.ascontiguousarray(z).view(fields).ravel(), kind="stable")


def inception_split_order(log_p: ArrayLike, seed: int = IS_SHUFFLE_SEED) -> np.ndarray:
    """The order in which `inception_score` takes the images before cutting them into splits,
    from their log-probabilities `log_p` (N, K): sorted by value (`canonical_order`), then
    permuted by np.random.RandomState(seed).permutation(N). The splits are thus random, fixed by
    the seed, and the same for the same images in any order (class blocks, as `pixeljit sample`
    writes an .npz, or the ranks' shares gathered under torchrun), given as logits or as
    probabilities."""
    rows = _as_f64(log_p).numpy()
    return canonical_order(rows)[np.random.RandomState(seed).permutation(len(rows))]


def inception_score(
    logits: ArrayLike, splits: int = 10, from_logits: bool = True, seed: int = IS_SHUFFLE_SEED
) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) ‖ p(y))), mean and population std over `splits` chunks.

    `logits` (N, K): class logits (softmax applied here) or probabilities if from_logits=False.
    The rows' log-probabilities are first put in `inception_split_order` (sorted, then shuffled
    with `seed`), so the score does not depend on the rows' order; chunk i holds rows
    [i·N // splits, (i+1)·N // splits) of that order, as torch-fidelity cuts them. Bounds:
    1 ≤ IS ≤ K. The standard FID-Inception protocol feeds the 1008-way logits without the fc
    bias ("logits_unbiased"), as the original TF code did.
    """
    z = _as_f64(logits)
    if z.ndim != 2 or z.shape[0] < splits:
        raise ValueError(f"need (N, K) logits with N ≥ splits={splits}, got {tuple(z.shape)}")
    if from_logits:
        log_p = torch.log_softmax(z, dim=1)
    else:
        if (z < 0).any() or not torch.allclose(z.sum(1), torch.ones_like(z[:, 0]), atol=1e-6):
            raise ValueError("probabilities must be non-negative rows summing to 1")
        log_p = z.log()
    log_p = log_p[torch.from_numpy(inception_split_order(log_p, seed))]
    n = log_p.shape[0]
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits : (i + 1) * n // splits]  # (n_i, K)
        p = chunk.exp()
        log_py = torch.logsumexp(chunk, dim=0) - np.log(chunk.shape[0])  # log of the mean p(y)
        kl = torch.where(p > 0, p * (chunk - log_py), torch.zeros_like(p)).sum(1)  # (n_i,)
        scores.append(float(kl.mean().exp()))
    arr = np.asarray(scores)
    return float(arr.mean()), float(arr.std())


@dataclass
class PRConfig:
    """k-NN manifold precision/recall (Kynkäänniemi et al. 2019).

    A sample lies on a set's manifold when it is inside the ball around some member of the set
    whose radius is that member's distance to its k-th nearest neighbour within the set.
    Memory: one row_batch × col_batch distance block at a time.
    """

    k: int = 3
    row_batch: int = 2048
    col_batch: int = 8192
    dtype: torch.dtype = torch.float32


def _rank_block(rows: torch.Tensor, cols: torch.Tensor, cols_offset: torch.Tensor) -> torch.Tensor:
    """cols_offset_j − 2 rows_i · cols_j (r, c) in one GEMM. With cols_offset = ‖cols_j‖² this is
    the squared distance less ‖rows_i‖², a per-row constant: it orders each row's neighbours
    without the two passes over the block that adding it (and clipping at 0) would cost."""
    return torch.addmm(cols_offset.unsqueeze(0), rows, cols.T, alpha=-2)


def knn_radii(feats: torch.Tensor, cfg: PRConfig) -> torch.Tensor:
    """Squared distance (N,) of every row to its k-th nearest other row (self excluded)."""
    if feats.shape[0] <= cfg.k:
        raise ValueError(f"k-NN radii need more than k={cfg.k} samples, got {feats.shape[0]}")
    norms = (feats * feats).sum(1)  # (N,) squared norms
    out = []
    for rows, rows_sq in zip(
        torch.split(feats, cfg.row_batch), torch.split(norms, cfg.row_batch), strict=True
    ):
        best = None  # (r, k+1) smallest shifted distances so far, self included
        for cols, cols_sq in zip(
            torch.split(feats, cfg.col_batch), torch.split(norms, cfg.col_batch), strict=True
        ):
            block = _rank_block(rows, cols, cols_sq)
            if best is not None:
                block = torch.cat([best, block], dim=1)
            best = torch.topk(block, cfg.k + 1, dim=1, largest=False).values
        out.append((best[:, cfg.k] + rows_sq).clamp_min(0))  # index 0 is the point itself
    return torch.cat(out)


def _coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, cfg: PRConfig):
    """Fraction of query rows inside at least one ball (support_j, radius_j):
    ‖q‖² + ‖s_j‖² − 2 q·s_j ≤ radius_j, tested as (‖s_j‖² − radius_j) − 2 q·s_j ≤ −‖q‖²."""
    query_sq = (queries * queries).sum(1)
    offset = (support * support).sum(1) - radii  # (M,)
    inside = []
    for rows, rows_sq in zip(
        torch.split(queries, cfg.row_batch), torch.split(query_sq, cfg.row_batch), strict=True
    ):
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
        for cols, cols_offset in zip(
            torch.split(support, cfg.col_batch), torch.split(offset, cfg.col_batch), strict=True
        ):
            hit |= (_rank_block(rows, cols, cols_offset) <= -rows_sq.unsqueeze(1)).any(dim=1)
        inside.append(hit)
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: ArrayLike, fake: ArrayLike, cfg: PRConfig | None = None
) -> tuple[float, float]:
    """(precision, recall): fake samples on the real manifold, real samples on the fake one.

    Computed on the device of `real` (pass CUDA tensors to use a GPU), in cfg.dtype.
    """
    cfg = cfg or PRConfig()
    r = torch.as_tensor(real).to(cfg.dtype)
    f = torch.as_tensor(fake).to(device=r.device, dtype=cfg.dtype)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"features must be (N, d) with equal d, got {r.shape} and {f.shape}")
    precision = _coverage(f, r, knn_radii(r, cfg), cfg)
    recall = _coverage(r, f, knn_radii(f, cfg), cfg)
    return precision, recall
