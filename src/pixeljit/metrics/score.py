"""Scoring entry points for the CLI: images + extractor + data-set statistics → FD / KID / IS / PR.

One pass over the images feeds the streaming moments (FD), the feature bank (KID, PR) and the
logits (IS). Under torch.distributed each rank passes its shard of images and every rank gets
the scores of the union.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .dataset_stats import DatasetStats
from .distances import (
    KIDConfig,
    PRConfig,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from .extractor import FeatureExtractor
from .image_sources import DEFAULT_BATCH, ImageSource, iter_batches
from .stats import DEFAULT_BANK_CAPACITY, FeatureBank, FeatureStats, all_gather_rows

METRICS = ("fd", "kid", "is", "pr")
PR_REAL_SEED = 0  # draws the real features that precision / recall compare against


@dataclass
class ScoreConfig:
    """What to compute and how. `bank_capacity` bounds the generated features kept for KID/PR
    (per rank, a uniform reservoir; None keeps all: N × dim float32 on the host). The default
    keeps 50k (400 MB of Inception features): up to the FID-standard 50k images KID/PR see every
    image, beyond it a uniform sample, so a 10M-image run cannot hold 80 GB of features.
    """

    metrics: tuple[str, ...] = METRICS
    batch_size: int = DEFAULT_BATCH
    kid: KIDConfig = field(default_factory=KIDConfig)
    pr: PRConfig = field(default_factory=PRConfig)
    is_splits: int = 10
    bank_capacity: int | None = DEFAULT_BANK_CAPACITY
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")

    def fewest_images(self, metric: str) -> tuple[int, str]:
        """The fewest images `metric` can be computed from, and why: a covariance (FD) and the
        unbiased MMD (KID) need 2, the k-NN radii of precision / recall k + 1, IS one per
        split."""
        return {"fd": (2, "a covariance"), "kid": (2, "the unbiased MMD"),
                "pr": (self.pr.k + 1, "the k-NN radii"),
                "is": (self.is_splits, f"its {self.is_splits} splits")}[metric]  # fmt: skip

    def check_count(self, metrics, count: int, fix: str) -> None:
        """Refuse `count` images for a metric that needs more; `fix` ({metric} filled in) says
        what to do."""
        for metric in metrics:
            least, why = self.fewest_images(metric)
            if count < least:
                raise ValueError(f"{metric} needs at least {least} images (for {why}), got "
                                 f"{count}: {fix.format(metric=metric, least=least)}")  # fmt: skip


@dataclass
class Scores:
    """Results; a metric that was not requested stays None."""

    extractor: str
    fd_label: str
    count: int
    fd: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    inception_score: float | None = None
    inception_score_std: float | None = None
    precision: float | None = None
    recall: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Labelled values, e.g. {"FID": …} for Inception or {"FD-EffNetLite0": …} otherwise."""
        is_label = "IS" if self.fd_label == "FID" else self.fd_label.replace("FD-", "IS-", 1)
        named = {
            self.fd_label: self.fd,
            "KID": self.kid,
            "KID_std": self.kid_std,
            is_label: self.inception_score,
            f"{is_label}_std": self.inception_score_std,
            "precision": self.precision,
            "recall": self.recall,
        }
        out = {k: v for k, v in named.items() if v is not None}
        out["count"] = float(self.count)
        return out


def _dataset_features(ref: DatasetStats, what: str) -> torch.Tensor:
    if ref.features is None:
        raise ValueError(
            f"{what} needs the data set's features, but its statistics hold only mu/sigma "
            "(as ADM / JiT .npz files do): make a reference from the data set's images with "
            "`pixeljit eval --make-ref DATASET --out STATS.npz` (pixeljit.compute_dataset_stats "
            "with keep_features=True), or leave this metric out of --metrics"
        )
    return torch.from_numpy(ref.features)


def matched_real_features(real: torch.Tensor, num: int) -> torch.Tensor:
    """`num` of the reference's feature rows (N, d), drawn with PR_REAL_SEED in their stored
    order (all when there are no more). Precision and recall compare equal numbers of real and
    generated features, as Kynkäänniemi et al. do: a set's k-NN radii shrink as it grows, so 500
    samples against 60,000 training images would judge the two sides by different balls (and
    spend minutes on the radii of the larger set)."""
    if len(real) <= num:
        return real
    pick = np.random.default_rng(PR_REAL_SEED).choice(len(real), size=num, replace=False)
    return real[torch.from_numpy(np.sort(pick))]


def score_images(
    images: ImageSource,
    extractor: FeatureExtractor,
    ref: DatasetStats | None,
    metrics: tuple[str, ...] | None = None,
    cfg: ScoreConfig | None = None,
) -> Scores:
    """Score uint8 images (N, C, H, W) — a tensor, batches, a folder or an `.npz` — against `ref`.

    `metrics` (subset of "fd", "kid", "is", "pr") overrides cfg.metrics. FD/KID/PR need `ref`
    made with the same extractor; IS needs an extractor with logits.
    """
    cfg = cfg or ScoreConfig()
    wanted = tuple(metrics) if metrics is not None else cfg.metrics
    ScoreConfig(metrics=wanted)  # validates the names
    needs_ref = {"fd", "kid", "pr"} & set(wanted)
    if needs_ref:
        if ref is None:
            raise ValueError(f"metrics {sorted(needs_ref)} need data-set statistics")
        ref.check_extractor(extractor)
    if "is" in wanted and extractor.num_classes == 0:
        raise ValueError(f"IS needs class logits; extractor {extractor.name!r} has none")
    stats = FeatureStats(extractor.dim, device=extractor.device)
    bank = FeatureBank(cfg.bank_capacity, cfg.seed) if {"kid", "pr"} & set(wanted) else None
    logits: list[torch.Tensor] = []
    for batch in iter_batches(images, cfg.batch_size):
        out = extractor.extract(batch)
        stats.update(out.features)
        if bank is not None:
            bank.add(out.features)
        if "is" in wanted:
            logits.append(out.logits.cpu())
    stats.all_reduce()
    cfg.check_count(wanted, stats.count, "score more images or leave {metric} out")
    scores = Scores(extractor.name, extractor.fd_label, stats.count)
    if "fd" in wanted:
        mu, sigma = stats.mu_sigma()
        scores.fd = frechet_distance(mu, sigma, ref.mu, ref.sigma, ref.sqrt_sigma())
    if bank is not None:
        fake = bank.all_gather(extractor.device)  # KID / PR run where the extractor runs
        if "kid" in wanted:
            real = _dataset_features(ref, "KID").to(extractor.device)
            scores.kid, scores.kid_std = kernel_inception_distance(fake, real, cfg.kid)
        if "pr" in wanted:
            real = matched_real_features(_dataset_features(ref, "precision/recall"), len(fake))
            real = real.to(extractor.device)
            scores.precision, scores.recall = precision_recall(real, fake, cfg.pr)
    if "is" in wanted:
        all_logits = all_gather_rows(torch.cat(logits).to(extractor.device)).cpu()
        scores.inception_score, scores.inception_score_std = inception_score(
            all_logits, cfg.is_splits
        )
    return scores


def class_accuracy(
    images: ImageSource,
    labels: torch.Tensor,
    extractor: FeatureExtractor,
    batch_size: int = DEFAULT_BATCH,
) -> float:
    """Fraction of images the extractor's classifier assigns to their intended label (N,).

    For class-conditional samples scored by a classifier of the same label space (e.g. the
    Fashion-MNIST classifier for Fashion-MNIST samples).
    """
    if extractor.num_classes == 0:
        raise ValueError(f"extractor {extractor.name!r} has no classifier head")
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    hits, seen = 0, 0
    for batch in iter_batches(images, batch_size):
        pred = extractor.logits(batch).argmax(dim=1).cpu()  # (n,)
        if seen + len(pred) > len(labels):
            raise ValueError(f"more images than labels ({len(labels)})")
        hits += int((pred == labels[seen : seen + len(pred)]).sum())
        seen += len(pred)
    if seen != len(labels) or seen == 0:
        raise ValueError(f"got {seen} images for {len(labels)} labels")
    return hits / seen
