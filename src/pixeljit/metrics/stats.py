"""Streaming feature statistics, mergeable across chunks and ranks.

`FeatureStats` keeps the count, mean and the centred sum of outer products M2 = Σ (x−μ)(x−μ)ᵀ in
float64, updated batch by batch with Chan et al.'s parallel merge (stable where the naive
Σxxᵀ − nμμᵀ loses digits). Memory: dim + dim² float64 values (32 MiB for Inception's 2048).

`FeatureBank` keeps the features themselves — all of them, or a uniform reservoir sample of a
bounded size — for the metrics that need samples rather than moments (KID, precision/recall).
Memory: capacity × dim float32 values on the host (400 MB for 50k Inception features).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def distributed_active() -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_finite(feats: torch.Tensor) -> None:
    """Refuse NaN or infinite features (one check per batch): every statistic would be NaN."""
    if not bool(torch.isfinite(feats).all()):
        raise ValueError(
            "features hold NaN or infinite values: the images they were taken from are not "
            "finite (a diverged model, or NaN in an images file); the scores would be NaN"
        )


class FeatureStats:
    """Count, mean and covariance of a stream of feature batches, in float64."""

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        if dim <= 0:
            raise ValueError(f"feature dim must be positive, got {dim}")
        self.dim = dim
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)  # (dim,)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)  # (dim, dim)

    def _check(self, feats: torch.Tensor) -> None:
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {tuple(feats.shape)}")

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al. merge of a partial (n_b, mean_b, M2_b) into this one."""
        if n_b == 0:
            return
        n_a, n = self.count, self.count + n_b
        mean_b, m2_b = mean_b.to(self.mean.device), m2_b.to(self.m2.device)
        delta = mean_b - self.mean  # (dim,)
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def update(self, feats: torch.Tensor) -> FeatureStats:
        """Fold a batch of features (N, dim) in; returns self."""
        self._check(feats)
        if feats.shape[0] == 0:
            return self
        x = feats.detach().to(device=self.mean.device, dtype=torch.float64)  # (N, dim)
        check_finite(x)
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        self._combine(x.shape[0], mean_b, xc.T @ xc)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another accumulator (e.g. another chunk or rank) into this one; returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dim {other.dim} into dim {self.dim}")
        self._combine(other.count, other.mean, other.m2)
        return self

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> FeatureStats:
        """Replace the local statistics by those of all ranks together (no-op without ranks).

        Two all-reduces of sums: first count and Σx give the global mean μ; then each rank
        re-centres its M2 on μ (M2 + n_r (μ_r − μ)(μ_r − μ)ᵀ) and the sum of those is the global M2.
        Tensors live on this accumulator's device (CUDA for NCCL, CPU for gloo).
        """
        if not distributed_active():
            return self
        n_local = torch.tensor([float(self.count)], dtype=torch.float64, device=self.mean.device)
        total = self.mean * self.count
        dist.all_reduce(n_local, group=group)
        dist.all_reduce(total, group=group)
        n = int(round(n_local.item()))
        mean = total / max(n, 1)
        delta = self.mean - mean
        m2 = self.m2 + torch.outer(delta, delta) * self.count
        dist.all_reduce(m2, group=group)
        self.count, self.mean, self.m2 = n, mean, m2
        return self

    def covariance(self) -> torch.Tensor:
        """Unbiased covariance (dim, dim) float64 (ddof = 1, as numpy.cov in the FID code)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return self.m2 / (self.count - 1)

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (dim,), sigma (dim, dim)) as float64 numpy arrays, the `.npz` convention."""
        return self.mean.cpu().numpy(), self.covariance().cpu().numpy()


DEFAULT_BANK_CAPACITY = 50_000  # generated / real features kept for KID and PR, per rank


class FeatureBank:
    """Features kept for sample-based metrics: all of them, or a uniform reservoir sample.

    With `capacity=None` every feature is kept (exact KID / precision-recall); with a capacity the
    bank holds a uniform random subset of that size (Vitter's algorithm R, seeded). Under
    torch.distributed each rank keeps its own bank and `all_gather` concatenates them (so the
    capacity is per rank).
    """

    def __init__(
        self, capacity: int | None = None, seed: int = 0, device: torch.device | str = "cpu"
    ) -> None:
        if capacity is not None and capacity <= 0:
            raise ValueError(f"bank capacity must be positive or None, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device)
        self.seen = 0
        self._chunks: list[torch.Tensor] = []  # used while below capacity / without capacity
        self._reservoir: torch.Tensor | None = None  # (capacity, dim) once full
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        if self._reservoir is not None:
            return self._reservoir.shape[0]
        return sum(c.shape[0] for c in self._chunks)

    def add(self, feats: torch.Tensor) -> FeatureBank:
        """Add a batch (N, dim); returns self."""
        if feats.ndim != 2:
            raise ValueError(f"features must be (N, dim), got {tuple(feats.shape)}")
        x = feats.detach().to(device=self.device, dtype=torch.float32)
        check_finite(x)
        if self.capacity is None:
            self._chunks.append(x)
            self.seen += x.shape[0]
            return self
        if self._reservoir is None:
            room = self.capacity - self.seen
            self._chunks.append(x[:room])
            self.seen += min(room, x.shape[0])
            x = x[room:]
            if self.seen == self.capacity:
                self._reservoir = torch.cat(self._chunks)
                self._chunks = []
        if x.shape[0] and self._reservoir is not None:
            self._replace(x)
        return self

    def _replace(self, x: torch.Tensor) -> None:
        """Algorithm R: item number i (0-based) takes slot j ~ U{0..i} when j < capacity."""
        index = np.arange(self.seen, self.seen + x.shape[0])
        slots = self._rng.integers(0, index + 1)  # one draw per item, inclusive of i
        self.seen += x.shape[0]
        take = np.nonzero(slots < self.capacity)[0]
        if take.size == 0:
            return
        # sequential semantics: when two items hit the same slot the later one wins
        last = {int(slots[i]): int(i) for i in take}
        dst = torch.tensor(list(last.keys()), dtype=torch.long, device=self.device)
        src = torch.tensor(list(last.values()), dtype=torch.long, device=self.device)
        self._reservoir[dst] = x[src]

    def features(self) -> torch.Tensor:
        """The kept features (M, dim) float32 (rank-local)."""
        if self._reservoir is not None:
            return self._reservoir
        if not self._chunks:
            raise ValueError("the feature bank is empty: no features were added")
        return torch.cat(self._chunks)

    def all_gather(
        self, device: torch.device | str | None = None, group: dist.ProcessGroup | None = None
    ) -> torch.Tensor:
        """Features of all ranks concatenated in rank order (the local ones without ranks).

        `device` is where the exchange happens and the result lives (CUDA for NCCL). A rank that
        added no features (its share of the images was empty: fewer images than ranks) gives
        none, at the width of the others'; only all ranks together empty is refused."""
        if self._reservoir is None and not self._chunks and distributed_active():
            local = torch.empty((0, 0), dtype=torch.float32, device=device or self.device)
            gathered = all_gather_rows(local, group=group)
            if gathered.shape[0] == 0:
                raise ValueError("the feature bank is empty: no features were added on any rank")
            return gathered
        return all_gather_rows(self.features().to(device or self.device), group=group)


def all_gather_rows(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate (N_r, ...) tensors of all ranks in rank order; N_r may differ between ranks,
    and a rank with no rows (N_r = 0) may not know the others' row shape: its (0, 0, …) takes
    theirs. Every rank's tensor has the same number of dimensions.

    Gathered on `x.device` (CUDA for NCCL); rows are padded to the largest N_r and trimmed.
    """
    if not distributed_active():
        return x
    world = dist.get_world_size(group)
    shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)  # (N_r, ...)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    counts = [int(s[0].item()) for s in shapes]
    rows = [tuple(int(v) for v in s[1:].tolist()) for s, c in zip(shapes, counts, strict=True)
            if c > 0] or [tuple(x.shape[1:])]  # fmt: skip
    if len(set(rows)) > 1:
        raise ValueError(f"the ranks' rows differ in shape ({sorted(set(rows))}): they cannot "
                         "be gathered into one tensor")  # fmt: skip
    padded = x.new_zeros((max(counts), *rows[0]))
    if x.shape[0]:
        padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
